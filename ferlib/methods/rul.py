"""RUL: Relative Uncertainty Learning (uncertainty-weighted feature mixup, add-up loss), optionally with SCN's
relabelling.

Zhang, Wang, Deng, "Relative Uncertainty Learning for Facial Expression Recognition", NeurIPS 2021.
Official code: ``zyh-uaiaaaa/Relative-Uncertainty-Learning`` at 63b73f2 (``src/rul.py``, ``src/utils.py``,
``src/main.py``), whose effective behaviour we reproduce. Notes: ``docs/methods/rul.md``.

Each sample has a mean feature mu_i (here: the model's own pooled features, so the classifier on mu is the plain
model) and a log-variance head's output; its uncertainty is u_i = mean_d exp(logvar_i,d). With a random in-batch
partner j = perm(i)::

    x~_i = u_i / (u_i + u_j) * mu_i + u_j / (u_i + u_j) * mu_j
    L = 1/2 CE(fc(x~), y) + 1/2 CE(fc(x~), y_perm)                         (the "add-up" loss)

Inference is fc(mu): the plain backbone + classifier. The authors say noisy-label runs need SCN's relabel module
(RUL issue #4), which their code lacks: ``relabel=True`` adds it (:mod:`ferlib.methods.relabel`, audited), with
the relabel evidence read off each sample's own mean-path prediction.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import require_parts
from ..options import AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT_OPEN, Interval, check_ranges, ranged
from .base import Method, Readout, register_method
from .relabel import RELABEL_GROUPS, RelabelState, relabel_gap, split_groups

__all__ = ["RUL", "RULConfig", "LogVarHead", "mean_path", "feature_map_size", "uncertainty_value", "uncertainty_mixup",
           "add_up_loss"]

#: What the log-variance head reads: the pooled features (ferlib's default) or the last feature map (the code).
LOGVAR_INPUTS = ("pooled", "map")


@dataclass(frozen=True)
class RULConfig:
    """RUL hyperparameters: the official code's values (63b73f2), with the relabel option of SCN's code.

    logvar_dim : int >= 1
        Width of the log-variance head (code ``--out_dimension``, ``src/main.py:30``: 64;
        ``src/rul.py:32-37``). Only its exp-mean u matters, so it need not equal the feature width.
    logvar_dropout : float in [0, 1)
        Dropout inside the log-variance head (code ``drop_rate=0.4``, ``src/rul.py:12, 34``).
    bn_eps : float > 0
        Epsilon of the head's batch norms (code ``eps=2e-5``, ``src/rul.py:33, 37``).
    logvar_input : ``"pooled"`` | ``"map"``
        What the log-variance head reads. ``"pooled"`` (default; a DEPARTURE): the model's (B, D) pooled features,
        through BatchNorm1d. ``"map"``: the code's input, the backbone's last feature map (B, D, h, w), through
        BatchNorm2d and flattened before Linear(D h w, logvar_dim) (``src/rul.py:32-37, 42-44``: 512 x 7 x 7 at
        its 224 px; 2 x 2 for a ResNet at 64 px); needs a timm backbone, and builds the head at ``bind`` for the
        run's ``image_size``.
    uncertainty : bool
        Mix with the learnt weights u_i / (u_i + u_j) (default, the code ``src/utils.py:36-38``). False (the
        ``no_uncertainty`` ablation): equal weights 1/2, plain in-batch feature mixup, and no log-variance head.
    relabel : bool
        Add SCN's relabelling (not in RUL's code; the authors require it for noisy labels, RUL issue #4; a user
        reports overfitting with it from epoch 10, issue #7). Default False: RUL's code.
    relabel_epoch, margin_2, relabel_group : int >= 1, float >= 0, str
        As :class:`~ferlib.methods.scn.SCNConfig` (SCN ``src/train.py:23, 25``: 10, 0.2, ``all``). With
        ``relabel_group="low"`` the low group is the batch's ``1 - beta`` share with the highest u (so it needs
        ``uncertainty=True``).
    beta : float in (0, 1)
        High-importance share for ``relabel_group="low"`` (SCN ``src/train.py:22``: 0.7).
    """

    logvar_dim: int = ranged(64, AT_LEAST_1)
    logvar_dropout: float = ranged(0.4, UNIT_OPEN)
    bn_eps: float = ranged(2e-5, POSITIVE)
    logvar_input: str = "pooled"
    uncertainty: bool = True
    relabel: bool = False
    relabel_epoch: int = ranged(10, AT_LEAST_1)
    margin_2: float = ranged(0.2, NON_NEGATIVE)
    relabel_group: str = "all"
    beta: float = ranged(0.7, Interval(0, 1, lo_open=True, hi_open=True))

    def __post_init__(self) -> None:
        if self.relabel_group not in RELABEL_GROUPS:
            raise ValueError(f"RULConfig.relabel_group must be one of {RELABEL_GROUPS}, got {self.relabel_group!r}")
        if self.logvar_input not in LOGVAR_INPUTS:
            raise ValueError(f"RULConfig.logvar_input must be one of {LOGVAR_INPUTS}, got {self.logvar_input!r}")
        check_ranges(self)
        if self.relabel_group == "low" and not self.uncertainty:
            raise ValueError("RULConfig.relabel_group='low' ranks the batch by u: it needs uncertainty=True")


class LogVarHead(nn.Sequential):
    """log sigma^2: BN (no affine) -> dropout -> flatten + linear -> BN, the code's head (``src/rul.py:32-37``).

    ``map_size`` None (ferlib's default): on the (B, D) pooled features, BatchNorm1d and Linear(D, out_dim).
    (h, w): on the (B, D, h, w) last feature map, the code's input: BatchNorm2d, then Linear(D h w, out_dim) on the
    flattened map."""

    def __init__(self, feature_dim: int, out_dim: int = 64, dropout: float = 0.4, eps: float = 2e-5,
                 map_size: tuple[int, int] | None = None) -> None:
        norm = nn.BatchNorm1d if map_size is None else nn.BatchNorm2d
        area = 1 if map_size is None else map_size[0] * map_size[1]
        super().__init__(norm(feature_dim, eps=eps, affine=False), nn.Dropout(dropout),
                         _FlatLinear(feature_dim * area, out_dim), nn.BatchNorm1d(out_dim, eps=eps))


class _FlatLinear(nn.Linear):
    """A Linear on its input flattened from dim 1 (the code's ``Flatten()`` + ``Linear``, ``src/rul.py:35-36``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(x.flatten(1))


def feature_map_size(backbone: nn.Module, image_size: int) -> tuple[int, int]:
    """(h, w) of a timm ``backbone``'s last feature map on square ``image_size`` px inputs (a dry run in eval mode,
    so no batch-norm statistic moves)."""
    require_parts(backbone, ("forward_features", "pretrained_cfg"), "rul's logvar_input='map' reads a timm "
                  "backbone's last feature map")
    conv = backbone.get_submodule(backbone.pretrained_cfg["first_conv"])
    x = conv.weight.new_zeros(1, conv.in_channels, image_size, image_size)
    training = backbone.training
    backbone.eval()
    with torch.no_grad():
        size = backbone.forward_features(x).shape[2:]
    backbone.train(training)
    return int(size[0]), int(size[1])


# --------------------------------------------------------------------------- the paper's equations
def mean_path(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RUL's mean branch as the model's own path: the pooled features f = embed(x) and mu = dropout(f).

    Returns f (B, D), which the log-variance head reads, and mu (B, D). fc(mu) = ``model.head(mu)``; in eval mode
    it is exactly ``model(x)``, the plain backbone + classifier that ferlib evaluates (the code tests on fc(mu),
    ``src/main.py:134-135``, and builds mu and log sigma^2 from the same features, ``src/rul.py:42-44``).
    """
    features = model.embed(x)
    return features, model.dropout(features)


def uncertainty_value(logvar: torch.Tensor) -> torch.Tensor:
    """u_i = mean_d exp(logvar_i,d), RUL's scalar relative uncertainty (NeurIPS 2021, uncertainty branch; code
    ``logvar.exp().mean(dim=1, keepdim=True)``, ``src/rul.py:46``). logvar : (B, d). Returns (B,) u > 0."""
    return logvar.float().exp().mean(1)


def uncertainty_mixup(mu: torch.Tensor, u: torch.Tensor, perm: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uncertainty-weighted feature mixup (RUL, NeurIPS 2021; code ``mixup_data``, ``src/utils.py:30-40``).

    mu : (B, D) mean features; u : (B,) uncertainties; perm : (B,) the partner j = perm[i] of each sample.
    Returns x~ = w_i mu_i + w_j mu_j (B, D) with w_i = u_i / (u_i + u_j) (B,) and w_j = u_j / (u_i + u_j) (B,).
    A sample paired with itself keeps mu_i (w = 1/2 each).
    """
    u_j = u[perm]
    w_i, w_j = u / (u + u_j), u_j / (u + u_j)
    return w_i[:, None] * mu + w_j[:, None] * mu[perm], w_i, w_j


def add_up_loss(logits: torch.Tensor, label: torch.Tensor, label_partner: torch.Tensor) -> torch.Tensor:
    """L = 1/2 CE(fc(x~), y_i) + 1/2 CE(fc(x~), y_j), RUL's add-up loss (NeurIPS 2021; code ``mixup_criterion``,
    ``src/utils.py:43-44``, batch-mean cross-entropy ``src/main.py:100-102``). logits : (B, K) of the mixed
    features; label, label_partner : (B,) y_i and y_perm(i)."""
    return 0.5 * F.cross_entropy(logits, label) + 0.5 * F.cross_entropy(logits, label_partner)


# --------------------------------------------------------------------------- the method
@register_method
class RUL(Method):
    """Add-up loss on uncertainty-weighted mixtures of in-batch pairs of mean features; optional relabelling.

    Read-outs: ``score`` = u (the learnt uncertainty, higher = more uncertain; the author calls its mean "the
    learned uncertainty value", RUL issue #5) and ``uncertainty`` (the same) from each sample's latest visit; with
    ``relabel``, ``relabel_gap`` and the relabel audit of :class:`~ferlib.methods.relabel.RelabelState`.
    ``loss``, ``margin`` and ``aum`` are the un-mixed mean-path logits (= the plain model) on the given label.
    """

    name = "rul"
    Config = RULConfig
    ablations = {
        "no_uncertainty": {"uncertainty": False},  # equal-weight (1/2) feature mixup with the add-up loss
        "relabel": {"relabel": True},              # RUL + SCN's relabel module, as the authors ask for noisy labels
    }
    model_parts = ("embed", "dropout", "head", "feature_dim")

    def __init__(self, config: RULConfig, *, num_classes: int, num_train: int, feature_dim: int) -> None:
        super().__init__(config, num_classes=num_classes, num_train=num_train, feature_dim=feature_dim)
        self.logvar = (LogVarHead(feature_dim, config.logvar_dim, config.logvar_dropout, config.bn_eps)
                       if config.uncertainty and config.logvar_input == "pooled" else None)  # "map": at bind
        self.relabels = RelabelState(num_train) if config.relabel else None
        self.register_buffer("uncertainty", torch.full((num_train,), float("nan")))
        self.register_buffer("gap", torch.full((num_train,), float("nan")))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.seed = 0
        self.last_perm: torch.Tensor | None = None  # the latest partner permutation (for inspection)

    def bind(self, model: nn.Module, train, config) -> None:
        self.seed = int(config.seed)
        if self.relabels is not None:
            self.relabels.bind(train.labels, config.epochs)
        c = self.config
        if c.uncertainty and c.logvar_input == "map":  # the head's width depends on the map's size
            size = feature_map_size(getattr(model, "backbone", None), config.image_size)
            self.logvar = LogVarHead(self.feature_dim, c.logvar_dim, c.logvar_dropout, c.bn_eps, map_size=size).to(
                next(model.parameters()).device)

    def permutation(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """The partner permutation of the current step (code ``torch.randperm(batch_size)``, ``src/utils.py:33``),
        drawn from a generator seeded by the run's seed and the step count, a checkpointed buffer: a resumed run
        draws the same partners, and no other random stream shifts."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))
        return torch.randperm(batch_size, generator=gen).to(device)

    def relabelling(self) -> bool:
        """Whether this epoch relabels (SCN's ``i >= args.relabel_epoch``, 1-based epochs)."""
        return self.relabels is not None and self.epoch + 1 >= self.config.relabel_epoch

    def training_step(self, model, batch):
        idx = batch["index"]
        label = self.relabels.label[idx] if self.relabels is not None else batch["label"]
        head_input, mu = self._paths(model, batch["image"])
        perm = self.permutation(len(idx), mu.device)
        with torch.autocast(mu.device.type, enabled=False):
            mu = mu.float()
            u = (uncertainty_value(self.logvar(head_input.float())) if self.config.uncertainty
                 else torch.ones(len(idx), device=mu.device))
            mixed, _, _ = uncertainty_mixup(mu, u, perm)
            loss = add_up_loss(model.head(mixed), label, label[perm])
            with torch.no_grad():
                plain = model.head(mu)  # fc(mu): what the plain model predicts for each sample
        self.record(idx, plain, batch["label"])
        relabelled = self._remember(idx, u.detach(), plain, label, perm)
        return {"loss": loss, "u": u.mean().detach(), "relabelled": relabelled.sum().float()}

    def _paths(self, model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the log-variance head reads, mu): the pooled features f (:func:`mean_path`) or, with
        ``logvar_input="map"``, the backbone's last feature map, pooled by the backbone into the same f."""
        if self.config.logvar_input == "pooled":
            return mean_path(model, x)
        fmap = model.backbone.forward_features(x)
        return fmap, model.dropout(model.backbone.forward_head(fmap))

    @torch.no_grad()
    def _remember(self, idx, u, plain, label, perm) -> torch.Tensor:
        self.step += 1
        self.last_perm = perm
        self.uncertainty[idx] = u
        probs = torch.softmax(plain.float(), dim=1)
        self.gap[idx] = relabel_gap(probs, label)[0]
        if not self.relabelling():
            return torch.zeros_like(idx, dtype=torch.bool)
        eligible = None
        if self.config.relabel_group == "low":  # low importance = high uncertainty
            eligible = torch.zeros_like(idx, dtype=torch.bool)
            eligible[split_groups(-u, self.config.beta)[1]] = True
        return self.relabels.update(idx, probs, epoch=self.epoch, margin=self.config.margin_2, eligible=eligible)

    def readout(self) -> Readout:
        extra = {"uncertainty": self.uncertainty.cpu().numpy()}
        if self.relabels is not None:
            extra.update(relabel_gap=self.gap.cpu().numpy(), **self.relabels.arrays())
        return dataclasses.replace(super().readout(), score=self.uncertainty.cpu().numpy(), extra=extra)
