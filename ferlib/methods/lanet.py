"""LA-Net: landmark-aware learning under label noise.

Wu & Cui, "LA-Net: Landmark-Aware Learning for Reliable Facial Expression Recognition under Label Noise",
ICCV 2023. Official code ``hw-tony/LA-Net`` (commit 74bb121). Notes: ``docs/methods/lanet.md``. The equations
live in :mod:`ferlib.methods.lanet_parts`.

The model is the plain :class:`ferlib.backbones.FERModel`: its stem + layer1 are LA-Net's shared stem, its
layer2-4 + GAP + head the expression branch (feature u). The method owns everything used in training only:

* a landmark branch (copies of layer2-4 + FPN + heatmap head; feature v = GAP of the finest FPN map),
  supervised with Adaptive Wing on Gaussian heatmaps of landmarks that follow the augmentation;
* label distribution estimation (LDE): in each batch, learned-weight aggregation of the predictions of the
  K nearest neighbours in u- and v-space, temporally ensembled in a per-sample bank H; loss KL(t || p);
* the expression-landmark (EL) contrastive loss against a momentum encoder and two key queues;
* the code's progressively balanced sampler (instance -> class balanced over the epochs), through the
  engine's ``epoch_order`` hook.

Loss: L = CE(z, y) + lam_lm L_lm + lam_kl L_kl + lam_cl L_el. Inference is the plain FERModel.

Differences from the official code, all single-device consequences or documented choices:

* the global batch: the LDE graph uses the whole batch (the code's gathered 2x64 global batch) unless
  ``graph_batch`` splits it; contrastive positives use ``positive_batch`` chunks (the code: 64 per GPU).
  Under ``torchrun`` (:mod:`ferlib.distributed`) u, v, z, the indices and the keys are gathered over the
  processes as the code gathers them over its GPUs, so W processes compute what one does; the gather returns
  gradients to every process's rows (the code's only to the local slice), as on one device.
  Shuffle-BN is not needed: the code converts the key encoder to SyncBatchNorm, so its statistics are over the
  global batch, which is what one device computes (and SyncBatchNorm under torchrun on CUDA).
* the momentum update runs in ``after_step`` (after the optimiser step) instead of at the start of the next
  forward: the key encoder then sees the same parameters.
* weight decay: the code uses none (``train.py:114``, ``weight_decay=0``), which the paper recipe
  (``--recipe paper``, :mod:`ferlib.recipes`) reproduces; the shared recipe applies the run's weight decay to
  every method alike (model, landmark branch, edge scorers and projection heads).
"""
from __future__ import annotations

import dataclasses
import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import require_parts
from ..distributed import gather
from ..options import AT_LEAST_1, NON_NEGATIVE, POSITIVE, PROBABILITY, Interval, check_ranges, ranged
from .base import Method, Readout, register_method
from .lanet_parts import (
    REFERENCE_HEATMAP_SIZE, EdgeScorer, KeyQueue, LandmarkBranch, aggregate_neighbours, awing_loss, chunk_ids,
    entropy, expression_features, heatmap_weights, kl_per_sample, knn_mask, landmark_heatmaps, lde_target,
    momentum_update, progressive_balanced_order, projection_head, pseudo_labels, resnet_stem, supcon_loss,
    transform_landmarks,
)

__all__ = ["LANet", "LANetConfig", "load_landmarks", "parse_flip_permutation"]

_RESNET_PARTS = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4", "feature_info")


def _float32(device: torch.device):
    """A region computed in float32 even inside the engine's bfloat16 autocast (similarities, aggregation)."""
    return torch.autocast(device.type, enabled=False)


@dataclass(frozen=True)
class LANetConfig:
    """LA-Net hyperparameters: the official code's defaults (``train.py`` argparser), its flag names where it has one.

    landmarks : str
        Where landmarks of the train split come from: a :mod:`ferlib.landmarks` backend name (``"dlib"``,
        computed in ``bind``) or the path of an ``.npy`` array (N, P, 2) of ``(x, y)`` fractions in [0, 1],
        rows aligned with the train split, NaN rows for failed detections. The code loads 19 HRNet-AFLW points.
    K : int >= 1
        Neighbours per sample in each space. Code: 8.
    dis_momentum : float in [0, 1]
        m of the history bank, t = m H + (1 - m) q. Code: 0.9.
    confidence : float in [0, 1]
        Pseudo-label threshold on max t. Code: 0.7 (0.5 before commit 74bb121).
    con_T : float > 0
        Contrastive temperature. Code: 0.1.
    banksize : int >= 1
        Length M of each key queue. Code: 8192 (the code requires a multiple of the batch; we wrap around).
    moco_momentum : float in [0, 1]
        Momentum of the key encoder. Code: 0.999.
    lam_lm, lam_kl, lam_cl : float >= 0
        Weights of the landmark, KL and contrastive losses (CE has weight 1). Code: 1, 1, 0.1.
    sigma : float > 0
        Gaussian sigma of the heatmaps at the reference 56 x 56 map (224 px input). DEPARTURE: on other map
        sizes S the sigma is ``sigma * S / 56``, so the blob keeps its size relative to the face (0.32 px at
        48 px input, 12 x 12 maps); the code only runs at 224 px.
    awing_alpha, awing_omega, awing_epsilon, awing_theta : float, alpha > 1, the others > 0
        Adaptive Wing parameters. Code: 2.1, 14, 1, 0.5. The exponent alpha - y must stay positive for heatmap
        values y in [0, 1] (:func:`~ferlib.methods.lanet_parts.awing_loss`), hence alpha > 1.
    foreground_weight, foreground_threshold : float >= 0, in [0, 1]
        Weight where the 3x3-dilated heatmap (values in [0, 1]) exceeds the threshold (1 elsewhere). Code: 10,
        0.2.
    round_centres : bool
        Round Gaussian centres to the heatmap grid, as the code. False gives sub-pixel centres.
    flip_permutation : str
        ``""`` (code: left/right indices not swapped under a flip), ``"68"`` (the iBUG-68 mirror map of
        :mod:`ferlib.landmarks.layout`) or comma-separated indices, a permutation of range(P).
    graph_batch : int >= 2 or None
        Build the kNN graph within chunks of this many consecutive batch samples; None = the whole batch
        (the code's global batch of 128 = 2 GPUs x 64; run with batch_size 128 to match).
    positive_batch : int >= 2 or None
        In-batch contrastive positives within chunks of this many samples; None = the whole batch. 64 with
        batch_size 128 emulates the code's per-GPU positives.
    class_balance : bool
        Progressively balanced sampling (code ``MySampler``, on in the code): the class mix moves linearly
        from the data's to uniform over the run (:func:`progressive_balanced_order`); rare classes are
        oversampled late in training. False: one random permutation per epoch, as every other method.
    use_lde, use_contrastive, use_landmark_branch : bool
        Ablations: each off removes its loss term and its modules. Without LDE the bank stays at the one-hot
        given labels (contrastive pseudo-labels = given labels); without the landmark branch LDE uses the
        u-space only, and the contrastive loss (expression <-> landmark) must be off too.
    """

    landmarks: str = "dlib"
    K: int = ranged(8, AT_LEAST_1)
    dis_momentum: float = ranged(0.9, PROBABILITY)
    confidence: float = ranged(0.7, PROBABILITY)
    con_T: float = ranged(0.1, POSITIVE)
    banksize: int = ranged(8192, AT_LEAST_1)
    moco_momentum: float = ranged(0.999, PROBABILITY)
    lam_lm: float = ranged(1.0, NON_NEGATIVE)
    lam_kl: float = ranged(1.0, NON_NEGATIVE)
    lam_cl: float = ranged(0.1, NON_NEGATIVE)
    sigma: float = ranged(1.5, POSITIVE)
    awing_alpha: float = ranged(2.1, Interval(1, lo_open=True))
    awing_omega: float = ranged(14.0, POSITIVE)
    awing_epsilon: float = ranged(1.0, POSITIVE)
    awing_theta: float = ranged(0.5, POSITIVE)
    foreground_weight: float = ranged(10.0, NON_NEGATIVE)
    foreground_threshold: float = ranged(0.2, PROBABILITY)
    round_centres: bool = True
    flip_permutation: str = ""
    graph_batch: int | None = ranged(None, Interval(2))
    positive_batch: int | None = ranged(None, Interval(2))
    class_balance: bool = True
    use_lde: bool = True
    use_contrastive: bool = True
    use_landmark_branch: bool = True

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.use_contrastive and not self.use_landmark_branch:
            raise ValueError("LANetConfig: use_contrastive needs use_landmark_branch (the loss contrasts "
                             "expression and landmark features); set use_contrastive=False too")


def load_landmarks(spec: str, train) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks of the train split: ``points`` (N, P, 2) float32 fractions and ``ok`` (N,) bool.

    spec : path of an ``.npy`` array (N, P, 2), rows aligned with ``train`` (a row with a NaN is a failed
    detection), or a backend name of :func:`ferlib.landmarks.extract_landmarks`. Failed rows get the
    placeholder 0.5 (their heatmap weight is 0).
    """
    path = Path(spec)
    if spec.endswith(".npy") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"landmark file not found: {path}")
        points = np.load(path).astype(np.float32)
        ok = np.isfinite(points).all(axis=tuple(range(1, points.ndim)))
    else:
        from ferlib.landmarks import extract_landmarks

        found = extract_landmarks(train, backend=spec)
        points, ok = np.asarray(found.points, np.float32), np.asarray(found.ok, bool)
    if points.ndim != 3 or points.shape[0] != len(train) or points.shape[2] != 2 or ok.shape != (len(train),):
        raise ValueError(f"landmarks from {spec!r} have shape {points.shape}; expected ({len(train)}, P, 2) "
                         "aligned with the train split")
    return np.where(ok[:, None, None], points, 0.5).astype(np.float32), ok


def parse_flip_permutation(spec: str, num_points: int) -> torch.Tensor | None:
    """The left/right index swap applied under a flip (see :attr:`LANetConfig.flip_permutation`), or None."""
    if not spec:
        return None
    if spec == "68":
        from ferlib.landmarks.layout import FLIP_PERMUTATION_68 as perm
    else:
        perm = [int(i) for i in spec.split(",")]
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.long)
    if sorted(perm.tolist()) != list(range(num_points)):
        raise ValueError(f"flip_permutation {spec!r} is not a permutation of range({num_points}) "
                         "(the number of landmarks)")
    return perm


@register_method
class LANet(Method):
    """LA-Net (ICCV 2023): landmark branch + LDE + expression-landmark contrast around a plain FERModel."""

    name = "lanet"
    Config = LANetConfig
    ablations = {
        "no_lde": {"use_lde": False},
        "no_contrastive": {"use_contrastive": False},
        "no_landmarks": {"use_landmark_branch": False, "use_contrastive": False},
    }
    model_parts = ("backbone", "dropout", "head")  # the stem and stages feed both branches (code extract_base)
    multi_process = True

    def __init__(self, config: LANetConfig, *, num_classes: int, num_train: int, feature_dim: int) -> None:
        super().__init__(config, num_classes=num_classes, num_train=num_train, feature_dim=feature_dim)
        self.register_buffer("history", torch.zeros(num_train, num_classes))     # H, one-hot labels in bind
        self.register_buffer("given", torch.zeros(num_train, dtype=torch.long))
        self.branch = self.edge_u = self.edge_v = self.proj_u = self.proj_v = None
        self.key_encoder = self.queue_u = self.queue_v = None
        self._model: tuple = ()        # the bound model, held in a tuple so it is not a submodule

    # ----------------------------------------------------------------- setup
    def bind(self, model: nn.Module, train, config) -> None:
        """Check the backbone, initialise H, build the branch / scorers / momentum encoder on the model's device."""
        cfg = self.config
        require_parts(model.backbone, _RESNET_PARTS, "LA-Net needs a timm ResNet-family backbone")
        device = next(model.parameters()).device
        self._model = (model,)
        labels = torch.as_tensor(train.labels, dtype=torch.long)
        self.given.copy_(labels)
        self.history.copy_(F.one_hot(labels, self.num_classes).float())
        if cfg.use_landmark_branch:
            self._bind_landmarks(model.backbone, train)
        if cfg.use_lde:
            self.edge_u = EdgeScorer(self.feature_dim)
            self.edge_v = EdgeScorer(self.branch.width) if self.branch is not None else None
        if cfg.use_contrastive:
            self._bind_contrastive(model)
        self.to(device)

    def _bind_landmarks(self, backbone: nn.Module, train) -> None:
        points, ok = load_landmarks(self.config.landmarks, train)
        self.register_buffer("points", torch.from_numpy(points), persistent=False)
        self.register_buffer("points_ok", torch.from_numpy(ok), persistent=False)
        self.register_buffer("flip_perm", parse_flip_permutation(self.config.flip_permutation, points.shape[1]),
                             persistent=False)
        self.branch = LandmarkBranch(backbone, points.shape[1])

    def _bind_contrastive(self, model: nn.Module) -> None:
        width = self.branch.width
        self.proj_u = projection_head(self.feature_dim, width)
        self.proj_v = projection_head(width, width)
        online = dict(zip(("model", "branch", "proj_u", "proj_v"), self._online_modules()))
        self.key_encoder = nn.ModuleDict({k: copy.deepcopy(m) for k, m in online.items()}).requires_grad_(False)
        self.queue_u = KeyQueue(self.config.banksize, width)
        self.queue_v = KeyQueue(self.config.banksize, width)

    def _online_modules(self) -> list[nn.Module]:
        return [self._model[0], self.branch, self.proj_u, self.proj_v]

    def epoch_order(self, labels, gen):
        if not self.config.class_balance:
            return None
        return progressive_balanced_order(labels, self.epoch, self.num_epochs, gen)

    # ----------------------------------------------------------------- training
    def training_step(self, model, batch):
        cfg = self.config
        x, index, label = batch["image"], batch["index"], batch["label"]
        stem = resnet_stem(model.backbone, x)
        u = expression_features(model.backbone, stem)
        logits = model.head(model.dropout(u))
        self.record(index, logits, label)
        terms = {"ce": F.cross_entropy(logits.float(), label)}
        v = None
        if self.branch is not None:
            fmap = self.branch(stem)
            v = fmap.mean((2, 3))
            terms["landmark"] = self._landmark_loss(fmap, batch).mean()
        # LDE and the EL loss on the global batch: the code gathers u, v, z and the indices over its GPUs
        # (with gradient) before the graph, the pseudo-labels and the queues; here under torchrun too.
        u, v, logits, index = gather(u), gather(v), gather(logits), gather(index)
        target = self._estimate_target(u, v, logits, index)
        if cfg.use_lde:
            terms["kl"] = kl_per_sample(logits, target).mean()
        if cfg.use_contrastive:
            terms["contrastive"] = self._contrastive_loss(x, u, v, target, index).mean()
        lam = {"ce": 1.0, "landmark": cfg.lam_lm, "kl": cfg.lam_kl, "contrastive": cfg.lam_cl}
        return {"loss": sum(lam[k] * term for k, term in terms.items()), **terms}

    def _landmark_loss(self, fmap: torch.Tensor, batch: dict) -> torch.Tensor:
        """(B,) mean over landmarks and pixels of AWing x weight map; 0 for failed detections."""
        cfg = self.config
        index = batch["index"]
        pred = self.branch.heatmap(fmap).float()
        points = self.points[index]
        if "affine" in batch:
            points = transform_landmarks(points, batch["affine"], self.flip_perm)
        size = tuple(pred.shape[-2:])
        target = landmark_heatmaps(points, size, cfg.sigma * size[1] / REFERENCE_HEATMAP_SIZE,
                                   round_centres=cfg.round_centres)
        weight = heatmap_weights(target, foreground=cfg.foreground_weight, threshold=cfg.foreground_threshold)
        weight = weight * self.points_ok[index].float()[:, None, None, None]
        loss = awing_loss(pred, target, alpha=cfg.awing_alpha, omega=cfg.awing_omega,
                          epsilon=cfg.awing_epsilon, theta=cfg.awing_theta)
        return (loss * weight).flatten(1).mean(1)

    def _estimate_target(self, u, v, logits, index) -> torch.Tensor:
        """LDE target t (B, C), with gradient; updates the history bank H with the detached estimate."""
        cfg = self.config
        history = self.history[index]
        if not cfg.use_lde:
            return history
        if cfg.graph_batch and len(u) % cfg.graph_batch:
            raise ValueError(f"graph_batch={cfg.graph_batch} does not divide the batch size {len(u)}")
        groups = chunk_ids(len(u), cfg.graph_batch, u.device)
        spaces = [(u, self.edge_u)] + ([(v, self.edge_v)] if v is not None else [])
        with _float32(u.device):
            probs = logits.float().softmax(1)
            q = torch.stack([aggregate_neighbours(knn_mask(f, cfg.K, groups), scorer(f.float()), probs)
                             for f, scorer in spaces]).mean(0)
        self.history[index] = lde_target(history, q.detach(), cfg.dis_momentum)
        return lde_target(history, q, cfg.dis_momentum)

    def _contrastive_loss(self, x, u, v, target, index) -> torch.Tensor:
        """(B,) L_el = expression -> landmark keys + landmark -> expression keys; enqueues this batch's keys.

        x : this process's images; u, v, target, index : the global batch's."""
        cfg = self.config
        a, b = F.normalize(self.proj_u(u), dim=1), F.normalize(self.proj_v(v), dim=1)
        a_key, b_key = map(gather, self._momentum_keys(x))
        labels = pseudo_labels(target, index, cfg.confidence)
        groups = chunk_ids(len(index), cfg.positive_batch, x.device)
        with _float32(x.device):
            loss = (supcon_loss(a, b_key, self.queue_v.keys.clone(), labels, self.queue_v.labels, cfg.con_T, groups)
                    + supcon_loss(b, a_key, self.queue_u.keys.clone(), labels, self.queue_u.labels, cfg.con_T, groups))
        self.queue_u.enqueue(a_key, labels)
        self.queue_v.enqueue(b_key, labels)
        return loss

    @torch.no_grad()
    def _momentum_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.key_encoder
        stem = resnet_stem(enc["model"].backbone, x)
        u = expression_features(enc["model"].backbone, stem)
        v = enc["branch"](stem).mean((2, 3))
        return F.normalize(enc["proj_u"](u).float(), dim=1), F.normalize(enc["proj_v"](v).float(), dim=1)

    def after_step(self) -> None:
        """Momentum update of the key encoder (model + landmark branch + projection heads)."""
        if self.key_encoder is not None:
            momentum_update(self._online_modules(), list(self.key_encoder.values()), self.config.moco_momentum)

    # ----------------------------------------------------------------- read-outs
    def readout(self) -> Readout:
        """Adds ``target`` (N, C) = H, ``entropy`` (N,) of H and ``score`` = 1 - H[i, given label].

        The score is the mass the estimated distribution moved away from the given label (0 = still one-hot
        on it): a flipped label loses mass to the true class, while an ambiguous but correct one keeps the
        largest share, which the entropy would not tell apart. Without LDE, H never moves and the base score
        (latest cross-entropy) is kept.
        """
        out = dataclasses.replace(super().readout(), target=self.history.cpu().numpy(),
                                  extra={"entropy": entropy(self.history).cpu().numpy()})
        if self.config.use_lde:
            kept = self.history.gather(1, self.given[:, None]).squeeze(1)
            out = dataclasses.replace(out, score=1.0 - kept.cpu().numpy())
        return out
