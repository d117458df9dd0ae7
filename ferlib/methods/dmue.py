"""DMUE: latent distribution mining and pairwise uncertainty estimation.

She, Hu, Shi, Wang, Shen, Mei, "Dive into Ambiguity: Latent Distribution Mining and Pairwise Uncertainty Estimation
for Facial Expression Recognition", CVPR 2021. Official code ``JDAI-CV/FaceX-Zoo`` at 16b793a, folder
``addition_module/DMUE`` (``train.py``, ``models/make_model.py``, ``models/resnet_multibranch.py``, ``losses/``,
``utils/ramp.py``, ``datasets/sampler.py``), whose effective behaviour we reproduce. Notes: ``docs/methods/dmue.md``;
the equations live in :mod:`ferlib.methods.dmue_parts`.

The model is the plain :class:`ferlib.backbones.FERModel`: its stem + layer1-3 are DMUE's shared trunk, its layer4 +
GAP + dropout + head the target branch, which is all that inference runs (the code's ``convert_weights.py`` keeps
the target branch alone). The method owns what trains only:

* K auxiliary branches (copies of layer4, each with a bias-free classifier over the K - 1 other classes); branch c
  trains on the batch's samples not labelled c and, on the samples labelled c, mines their latent distribution
  (softmax sharpened with T = 1.2, 0 at class c), which the target branch's non-label probabilities regress to;
* SP-KD: the row-normalised Gram of each branch's outputs matches the sub-block of the target branch's Gram;
* the pairwise uncertainty MLP: s_i from the sample's normalised mean cosine similarity to each class in the batch
  and its one-hot label; the target CE is on s_i z_i;
* the ramps: r_up on the target terms, r_down on the auxiliary CE.

    L = r_up(e) [CE(s * z, y) + w L_soft + gamma L_sp] + r_down(e) (1/K) sum_c CE(aux_c)

and the code's class-balanced sampler through the engine's ``epoch_order`` hook.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import require_parts
from ..options import NON_NEGATIVE, POSITIVE, UNIT_OPEN, check_ranges, ranged
from .base import Method, Readout, register_method
from .dmue_parts import (
    RESNET_PARTS, AuxiliaryBranches, UncertaintyMLP, batch_standardise, branch_subset, class_balanced_order,
    cosine_similarity_matrix, latent_soft_label, ramp_down, ramp_up, resnet_trunk, soft_loss, spkd_term,
    uncertainty_input,
)

__all__ = ["DMUE", "DMUEConfig"]

AUX_GRAMS = ("logits", "features")
#: Batch statistics (the branches' BatchNorm, the neck) need two samples: smaller subsets are left out.
_MIN_SUBSET = 2


def _full(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when autocast gave it a half type (float64 stays: the tests run the step in float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _float32(device: torch.device):
    """A region computed in float32 even inside the engine's bfloat16 autocast (losses, similarities, Grams)."""
    return torch.autocast(device.type, enabled=False)


@dataclass(frozen=True)
class DMUEConfig:
    """DMUE hyperparameters: the official code's values (``config.py`` at 16b793a), its names where it has one.

    T : float > 0
        Sharpening temperature of the mined latent distribution (code ``config.py:27``: 1.2).
    w : float >= 0
        Weight of the latent-distribution (soft) loss (code ``config.py:27``: 0.5).
    gamma : float >= 0
        Weight of SP-KD (code ``config.py:28``: 1000, for its face-pretrained start). From a random start this
        weight collapses training once the ramp reaches it (its gradient is ~12x the CE's on the trunk;
        ``docs/methods/dmue.md``, "From scratch"): use ``use_spkd=False`` or a smaller gamma there.
    ramp_a : float > 0
        Epoch a of the ramps r_up / r_down (0-based epochs, ``train.py:80``). Code ``config.py:29``: 6, with the
        comment "affectnet 4/6; ferplus 10/12/14; raf 9/10" (for its 36 epochs).
    aux_dropout : float in [0, 1)
        Dropout of the auxiliary branches before their neck (code ``models/make_model.py:94``: 0.5, the same
        module as the target branch's). The target branch uses the model's own dropout
        (``BackboneConfig.drop_rate``, default 0; the code's 0.5 is set there).
    aux_gram : ``"logits"`` | ``"features"``
        What the auxiliary side of SP-KD is the Gram of. ``"logits"`` (default): the code, which builds it from the
        branch's classifier outputs (``models/make_model.py:122, 141``: ``x_list`` is overwritten by the logits
        before the Gram). ``"features"``: the branch's neck output, the pre-classifier features the target side
        uses (a departure, the reading of the paper's SP-KD between features).
    main_gram_neck : bool
        Standardise the target branch's (dropped-out) features over the batch before its Gram, as the code's neck
        does (``models/make_model.py:133, 142``; default True). DEPARTURE everywhere else: the target branch's
        logits have no neck, because inference is the plain model (backbone + dropout + head with bias); the code
        classifies the neck's output with a bias-free Linear (``:113-114, 133, 150``).
    train_uncertainty_mlp : bool
        False (default): the pairwise-uncertainty MLP keeps its initial weights, as in the code, whose optimiser
        holds only the backbone and the classifiers (``train.py:55-57``; ``project_w`` is built beside them,
        ``models/make_model.py:97-100``). Gradients still reach the features through the similarities. True:
        the MLP trains with the model (the paper's description of a learnt module; a departure from the code).
    min_per_class : int >= 0
        Skip a batch in which a class of the train split has fewer samples (code ``check_batch`` with 2,
        ``train.py:89-91, 188-193``). Default 0 (train on every batch): the registry's contract requires every
        batch to train, and under the class-balanced sampler such batches are rare (about 0.6% at the code's batch
        72 with 8 classes, 1.6% at 64). With 2 a short batch is skipped exactly: no forward, no read-out, a zero
        loss that reaches no parameter, so Adam leaves weights and moments untouched (the per-iteration lr
        schedule still counts the step). Classes without a train sample are ignored. With 0, the code's
        guards for short batches are replaced: a branch subset or a class of fewer than 2 samples is left out
        of the terms that need batch statistics (see :func:`~ferlib.methods.dmue_parts.class_similarity_stats`).
    class_balance : bool
        The code's class-balanced sampler (``datasets/sampler.py``; default True): N draws with replacement,
        weights 1 / n_class. False: one random permutation per epoch, as every other method.
    use_latent, use_spkd, use_uncertainty : bool
        Ablations: each off removes its term (the soft loss, SP-KD, the uncertainty scaling of the target
        logits); with neither ``use_latent`` nor ``use_spkd`` the auxiliary branches are not built and their CE is
        not trained (the plain target branch with the uncertainty scaling).
    """

    T: float = ranged(1.2, POSITIVE)
    w: float = ranged(0.5, NON_NEGATIVE)
    gamma: float = ranged(1000.0, NON_NEGATIVE)
    ramp_a: float = ranged(6.0, POSITIVE)
    aux_dropout: float = ranged(0.5, UNIT_OPEN)
    aux_gram: str = "logits"
    main_gram_neck: bool = True
    train_uncertainty_mlp: bool = False
    min_per_class: int = ranged(0, NON_NEGATIVE)
    class_balance: bool = True
    use_latent: bool = True
    use_spkd: bool = True
    use_uncertainty: bool = True

    def __post_init__(self) -> None:
        if self.aux_gram not in AUX_GRAMS:
            raise ValueError(f"DMUEConfig.aux_gram must be one of {AUX_GRAMS}, got {self.aux_gram!r}")
        check_ranges(self)

    @property
    def aux_branches(self) -> bool:
        """Whether the auxiliary branches exist (they feed the soft loss and SP-KD)."""
        return self.use_latent or self.use_spkd


@register_method
class DMUE(Method):
    """DMUE (CVPR 2021): auxiliary branches mining latent distributions, SP-KD, pairwise uncertainty, around a
    plain FERModel (inference: the target branch alone, ``ce``'s parameter count).

    Read-outs (rows never drawn by the class-balanced sampler are noted in ``visits``):

    * ``score`` = 1 - s_i, s_i the pairwise-uncertainty confidence of the sample's latest visit (low s = the
      target logits flattened). NOT a label-noise detector: with the code's frozen MLP (the default) s is a fixed,
      randomly initialised function of the similarity profile and the label, whose direction depends on the
      initialisation (AUROC 0.44 and 0.47 for flipped labels in the committed cpu_full cells; docs/methods/dmue.md,
      "Read-outs"). Without the uncertainty module (``no_pairwise_uncertainty``): the latest cross-entropy. A
      sample never drawn gets the mean score of the drawn ones.
    * ``target`` (N, K): the latest mined latent distribution of each sample (auxiliary branch y_i's sharpened
      prediction over the other classes, 0 at the given label; uniform over the other classes until mined).
    * ``confidence`` (N,) s_i (NaN: never scored); ``latent_peak`` (N,) the largest latent probability (a peaked
      latent distribution = the branch that never saw the given class is sure of another one); ``visits`` (N,).
    """

    name = "dmue"
    Config = DMUEConfig
    ablations = {
        "no_pairwise_uncertainty": {"use_uncertainty": False},
        "no_latent": {"use_latent": False},
        "no_spkd": {"use_spkd": False},
        "no_aux_branches": {"use_latent": False, "use_spkd": False},
    }
    model_parts = ("backbone", "dropout", "head")  # the trunk feeds every branch; layer4 is replicated

    def __init__(self, config: DMUEConfig, *, num_classes: int, num_train: int, feature_dim: int) -> None:
        super().__init__(config, num_classes=num_classes, num_train=num_train, feature_dim=feature_dim)
        if num_classes < 2:
            raise ValueError(f"dmue needs at least 2 classes, got {num_classes}")
        self.mlp = UncertaintyMLP(num_classes) if config.use_uncertainty else None
        if self.mlp is not None and not config.train_uncertainty_mlp:
            self.mlp.requires_grad_(False)
        self.branches: AuxiliaryBranches | None = None   # built in bind (copies of the model's layer4)
        self.register_buffer("given", torch.zeros(num_train, dtype=torch.long))
        self.register_buffer("confidence", torch.full((num_train,), float("nan")))
        self.register_buffer("latent", torch.zeros(num_train, num_classes))
        self.register_buffer("present", torch.ones(num_classes, dtype=torch.bool))

    # ----------------------------------------------------------------- setup
    def bind(self, model: nn.Module, train, config) -> None:
        """Check the backbone, keep the given labels, build the auxiliary branches from the model's layer4."""
        require_parts(model.backbone, RESNET_PARTS, "dmue replicates the last stage of a timm ResNet-family backbone")
        device = next(model.parameters()).device
        labels = torch.as_tensor(np.asarray(train.labels), dtype=torch.long)
        self.given.copy_(labels)
        k = self.num_classes
        self.latent.copy_((1.0 - F.one_hot(labels, k).float()) / (k - 1))   # uniform over the other classes
        self.present.copy_(torch.bincount(labels, minlength=k)[:k] > 0)
        if self.config.aux_branches:
            self.branches = AuxiliaryBranches(model.backbone, self.feature_dim, k, self.config.aux_dropout)
        self.to(device)

    def epoch_order(self, labels, gen):
        return class_balanced_order(labels, gen) if self.config.class_balance else None

    # ----------------------------------------------------------------- training
    def ramps(self) -> tuple[float, float]:
        """(r_up, r_down) of the current (0-based) epoch."""
        return ramp_up(self.epoch, self.config.ramp_a), ramp_down(self.epoch, self.config.ramp_a)

    def skips(self, label: torch.Tensor) -> bool:
        """Whether ``min_per_class`` skips this batch (code ``check_batch``, ``train.py:188-193``)."""
        if self.config.min_per_class <= 0:
            return False
        counts = torch.bincount(label, minlength=self.num_classes)[:self.num_classes]
        return bool((counts[self.present] < self.config.min_per_class).any())

    def training_step(self, model, batch):
        cfg = self.config
        x, index, label = batch["image"], batch["index"], batch["label"]
        r_up, r_down = self.ramps()
        if self.skips(label):
            zero = torch.zeros((), device=x.device)
            return {"loss": torch.zeros((), device=x.device, requires_grad=True),
                    **{k: zero for k in self._term_names()}, "skipped": torch.ones((), device=x.device)}
        backbone = model.backbone
        trunk = resnet_trunk(backbone, x)
        f = backbone.forward_head(backbone.layer4(trunk))     # == model.embed(x)
        dropped = model.dropout(f)
        logits = model.head(dropped)                          # == model(x): the plain model
        self.record(index, logits, label)
        device = x.device
        terms: dict[str, torch.Tensor] = {}
        with _float32(device):
            z = _full(logits)
            if self.mlp is not None:
                s = self.mlp(uncertainty_input(cosine_similarity_matrix(_full(f)), label, self.num_classes))
                terms["ce"] = F.cross_entropy(z * s[:, None], label)
                self.confidence[index] = s.detach().to(self.confidence.dtype)
            else:
                s = None
                terms["ce"] = F.cross_entropy(z, label)
        if self.branches is not None:
            terms.update(self._branch_terms(trunk, dropped, z, index, label))
        weights = {"ce": r_up, "soft": r_up * cfg.w, "spkd": r_up * cfg.gamma, "aux": r_down}
        loss = sum(weights[k] * v for k, v in terms.items())
        out = {"loss": loss, **{k: v.detach() for k, v in terms.items()}}
        out["confidence"] = s.detach().mean() if s is not None else torch.ones((), device=device)
        out["skipped"] = torch.zeros((), device=device)
        return out

    def _term_names(self) -> list[str]:
        names = ["ce", "confidence"]
        if self.branches is not None:
            names.append("aux")
        return names + (["soft"] if self.config.use_latent else []) + (["spkd"] if self.config.use_spkd else [])

    def _branch_terms(self, trunk, dropped, z, index, label) -> dict[str, torch.Tensor]:
        """The auxiliary CE (mean over the K branches), SP-KD (idem) and the soft loss on the mined latent
        distributions; updates the per-sample latent distributions."""
        cfg, k, device = self.config, self.num_classes, z.device
        aux_terms, sp_terms = [], []
        main = None
        if cfg.use_spkd:
            with _float32(device):
                main = batch_standardise(_full(dropped)) if cfg.main_gram_neck else _full(dropped)
        soft = torch.zeros_like(z)
        mined = torch.zeros(len(z), dtype=torch.bool, device=device)
        for c in range(k):
            rows, y_c = branch_subset(label, c)
            if len(rows) >= _MIN_SUBSET:
                feats = self.branches.features(c, trunk[rows])
                with _float32(device):
                    aux_logits, neck = self.branches.logits(c, _full(feats))
                    aux_terms.append(F.cross_entropy(aux_logits, y_c))
                    if main is not None:
                        sp_terms.append(spkd_term(aux_logits if cfg.aux_gram == "logits" else neck, main, rows))
            if cfg.use_latent:
                own = (label == c).nonzero()[:, 0]
                if len(own) >= _MIN_SUBSET:
                    with torch.no_grad():
                        feats = self.branches.features(c, trunk[own])
                        with _float32(device):
                            soft[own] = latent_soft_label(self.branches.logits(c, _full(feats), mining=True)[0], c,
                                                          cfg.T)
                    mined[own] = True
        zero = z.sum() * 0.0
        terms = {"aux": sum(aux_terms, zero) / k}
        if cfg.use_spkd:
            terms["spkd"] = sum(sp_terms, zero) / k
        if cfg.use_latent:
            with _float32(device):
                terms["soft"] = soft_loss(z[mined], label[mined], soft[mined]) if mined.any() else zero
        with torch.no_grad():
            self.latent[index[mined]] = soft[mined].to(self.latent.dtype)
        return terms

    # ----------------------------------------------------------------- read-outs
    def readout(self) -> Readout:
        """``score`` = 1 - s (latest; from the frozen random MLP by default: not a label-noise detector),
        ``target`` = the mined latent distributions; see the class docstring."""
        base = super().readout()
        visits = self.visits.cpu().numpy()
        if self.mlp is not None:
            score = 1.0 - self.confidence.cpu().numpy()
        else:
            score = np.where(visits > 0, base.loss, np.nan)
        drawn = np.isfinite(score)
        score = np.where(drawn, score, np.nanmean(score) if drawn.any() else 0.0)
        latent = self.latent.cpu().numpy()
        extra = {"confidence": self.confidence.cpu().numpy(), "latent_peak": latent.max(1),
                 "visits": visits.astype(np.float64)}
        return dataclasses.replace(base, score=score.astype(np.float32), target=latent, extra=extra)
