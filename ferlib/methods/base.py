"""The one interface through which a training method plugs into the engine, and the method registry.

A method contributes targets, a loss and per-sample state; it never owns a training loop.
The engine (:mod:`ferlib.engine`) calls, per run::

    method = create_method("ce", num_classes=8, num_train=N, feature_dim=512, label_smoothing=0.1)
    method.bind(model, train_data, train_config)   # once: neighbour graphs, banks, extra heads ...
    for epoch in range(E):
        method.on_epoch_start(epoch, E)
        order = method.epoch_order(train_labels, generator)   # None: one seeded random permutation
        for batch in batches:
            out = method.training_step(model, batch)   # {"loss": tensor, "<term>": tensor, ...}
            out["loss"].backward(); optimizer.step(); method.after_step()
    method.readout()                          # a Readout: per-sample arrays saved with the run

A batch is a dict of tensors on the training device:

    image   (B, C, H, W) float   the augmented, normalised view
    index   (B,) int64           position of each sample in the train split (keys per-sample state)
    label   (B,) int64           the given (possibly noisy) label
    votes   (B, K) float         human vote counts, only when the data has them
    affine  (B, 2, 3) float      the augmentation's affine map (output -> input, normalised coords)
    image_<view>                 each extra view the method names in ``views`` (see ferlib.augment)

The model is a :class:`ferlib.backbones.FERModel`: ``model.embed(x) -> (B, D)`` features,
``model.head(features) -> (B, K)`` logits, ``model(x) == model.head(model.embed(x))``. A method declares the
parts it uses (``model_parts``, among :data:`FERModel.PARTS <ferlib.backbones.FERModel.PARTS>`); the engine
checks the model has them (:meth:`Method.check_binding`) and the method contract test runs each training step on a
model that exposes only those. Parameters a method
adds (edge scorers, projection heads, landmark branches) are attributes of the method, an ``nn.Module``: the
engine optimises them with the model and checkpoints them with ``method.state_dict()``. They are used in
training only; inference is always the plain backbone + classifier.

Several processes (``torchrun``, :mod:`ferlib.distributed`): each process's ``training_step`` gets its shard of
the global batch. A method that declares ``multi_process = True`` promises the one-process result: its
batch-level operations (neighbour graphs, rank groups, pairwise terms, in-batch partners) run on tensors
gathered over the processes (:func:`ferlib.distributed.gather`, with gradient; the identity on one process),
and every per-sample state update uses the gathered batch, so each process holds the same state. A loss term
is either a mean over the shard or computed from gathered tensors (never a sum over the shard).
:meth:`Method.record` gathers its inputs itself.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from .._registry import Registry
from ..distributed import gather
from ..options import check_types, parse_options

__all__ = ["Method", "Readout", "register_method", "create_method", "method_config", "list_methods",
           "method_class", "parse_overrides"]

_REGISTRY: Registry[type["Method"]] = Registry("method")


@dataclass(frozen=True, eq=False)
class Readout(Mapping):
    """A method's per-sample read-outs, rows indexed like the train split (N = ``num_train``); saved in the run's
    ``readout.npz`` as ``method_<name>``. Also a read-only mapping ``name -> array`` (``readout["score"]``).

    score : (N,) float, the method's own uncertainty ranking: higher = more likely mislabelled (NaN: never
        visited).
    loss : (N,) float, the latest per-sample cross-entropy on the given label.
    margin : (N,) float, the latest given-label logit minus the best other logit.
    aum : (N,) float, the area under the margin (Pleiss et al., NeurIPS 2020): the margin averaged over every
        visit in training; low (negative) = the model kept preferring another class: a method-independent
        detector of flipped labels (NaN: never visited).
    target : (N, K) float or None, the label distribution the method trains toward (LA-Net's H, LDLVA's target).
    extra : ``{name: array}`` of the method's own per-sample arrays (first dimension N), e.g. NLA's ``weight``,
        LDLVA's ``lambda``; a name may not repeat a field's.
    """

    score: np.ndarray
    loss: np.ndarray
    margin: np.ndarray
    aum: np.ndarray
    target: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.loss)
        for name in ("score", "loss", "margin", "aum"):
            value = np.asarray(getattr(self, name))
            if value.shape != (n,) or not np.issubdtype(value.dtype, np.floating):
                raise ValueError(f"Readout.{name} must be a float array of shape ({n},), got {value.dtype} "
                                 f"{value.shape}")
        if self.target is not None and (np.ndim(self.target) != 2 or len(self.target) != n):
            raise ValueError(f"Readout.target must be (N={n}, K), got {np.shape(self.target)}")
        clash = sorted(set(self.extra) & {"score", "loss", "margin", "aum", "target"})
        bad = sorted(k for k, v in self.extra.items() if np.ndim(v) == 0 or len(v) != n)
        if clash or bad:
            raise ValueError(f"Readout.extra: {clash or bad} {'repeat fields' if clash else 'are not (N, ...) arrays'}")

    def arrays(self) -> dict[str, np.ndarray]:
        """Every read-out as ``{name: array}`` (``target`` only when set)."""
        out = {"score": self.score, "loss": self.loss, "margin": self.margin, "aum": self.aum}
        if self.target is not None:
            out["target"] = self.target
        return {**out, **self.extra}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays()[name]

    def __iter__(self):
        return iter(self.arrays())

    def __len__(self) -> int:
        return len(self.arrays())


class Method(nn.Module):
    """Base class: plain cross-entropy-free skeleton every method fills in.

    Class attributes
    ----------------
    name : str
        Registry name (``"ce"``, ``"nla"``...).
    Config : type
        A frozen dataclass holding the method's hyperparameters with the papers' defaults.
    views : tuple of str
        Extra augmented views the method needs in each batch (e.g. ``("flip",)`` gives ``image_flip``).
    requires : tuple of str
        Dataset fields the method needs (``"votes"``); the engine checks them before training.
    oracle : bool
        True when the method sees information a noisy-label method must not (human votes, clean labels).
    ablations : dict
        ``{variant name: config overrides}``: the method's components switched off one at a time
        (the study trains each variant as a cell; a new method lists its own here).
    model_parts : tuple of str
        The :data:`FERModel.PARTS <ferlib.backbones.FERModel.PARTS>` its training step uses (default:
        ``model(x)`` only).
    multi_process : bool
        True when the training step gives the one-process result on a batch sharded over processes (see the
        module docstring); the engine refuses a method without it under ``torchrun``.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = type(None)
    views: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    oracle: ClassVar[bool] = False
    ablations: ClassVar[dict[str, dict]] = {}
    model_parts: ClassVar[tuple[str, ...]] = ("forward",)
    multi_process: ClassVar[bool] = False

    def __init__(self, config, *, num_classes: int, num_train: int, feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.num_train = num_train
        self.feature_dim = feature_dim
        self.epoch, self.num_epochs = 0, 1
        # Per-sample read-outs every method keeps: the loss and margin of each sample's latest visit, and the sum
        # of its margins over all visits with their count (the area under the margin, AUM).
        self.register_buffer("sample_loss", torch.full((num_train,), float("nan")))
        self.register_buffer("sample_margin", torch.full((num_train,), float("nan")))
        self.register_buffer("margin_sum", torch.zeros(num_train, dtype=torch.float64))
        self.register_buffer("visits", torch.zeros(num_train, dtype=torch.int64))

    # ----------------------------------------------------------------- hooks
    def check_binding(self, model: nn.Module, train) -> None:
        """Raise a ValueError naming the method when ``model`` or the train split ``train`` do not fit it: a part
        of ``model_parts`` the model lacks (an unknown part name is named too), a train split of another size or
        class count than the method was built for (its per-sample state is indexed by train position), or a
        model of another feature width. The engine calls this before :meth:`bind`."""
        from ..backbones import FERModel

        parts = ", ".join(FERModel.PARTS)
        unknown = [p for p in self.model_parts if p not in FERModel.PARTS]
        if unknown:
            raise ValueError(f"{type(self).__name__}.model_parts names {unknown}, not parts of a FERModel ({parts})")
        missing = [p for p in self.model_parts if not hasattr(model, p)]
        if missing:
            raise ValueError(f"method {self.name!r} uses the model's {missing}, which a {type(model).__name__} "
                             f"lacks (a ferlib.backbones.FERModel has {parts})")
        if len(train) != self.num_train or train.num_classes != self.num_classes:
            raise ValueError(f"method {self.name!r} was built for {self.num_train} samples / {self.num_classes} "
                             f"classes, bound to {len(train)} / {train.num_classes}")
        width = getattr(model, "feature_dim", self.feature_dim)
        if width != self.feature_dim:
            raise ValueError(f"model.feature_dim = {width} but method {self.name!r} was built with "
                             f"{self.feature_dim}")

    def bind(self, model: nn.Module, train, config) -> None:
        """Called once before training with the model, the train-split :class:`FERData` and the run's
        :class:`ferlib.engine.TrainConfig` (input size, augmentation, batch size)."""

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called at the start of each epoch (0-based)."""
        self.epoch, self.num_epochs = epoch, num_epochs

    def epoch_order(self, labels: np.ndarray, gen: torch.Generator) -> torch.Tensor | None:
        """The coming epoch's train indices in visiting order, or None for one random permutation (default).

        labels : (N,) int64 given labels of the train split. gen : the engine's generator; draw only from it,
        so that a resumed run stays identical. Return an int64 tensor of at least N indices into the train
        split (repeats allowed, e.g. oversampling); the engine visits the first floor(N / B) * B of them, so
        every epoch has the same number of steps. Called after :meth:`on_epoch_start`.
        """
        return None

    def training_step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Return ``{"loss": scalar tensor, <named terms for logging>...}`` for one batch."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step (e.g. to step a method's private optimiser or momentum encoder)."""

    # ----------------------------------------------------------------- read-outs
    @torch.no_grad()
    def record(self, index: torch.Tensor, logits: torch.Tensor, label: torch.Tensor) -> None:
        """Store each sample's cross-entropy and margin (given-label logit minus the best other logit), and add
        the margin to the sample's running AUM (Pleiss et al., NeurIPS 2020, eq. 1: the margin averaged over
        the training visits; a sample visited twice in a batch counts twice).

        index, logits, label : this process's shard; they are gathered over the processes first, so every
        process records the whole batch."""
        index, logits, label = gather(index), gather(logits), gather(label)
        self.sample_loss[index] = nn.functional.cross_entropy(logits.float(), label, reduction="none")
        given = logits.gather(1, label[:, None]).squeeze(1)
        other = logits.scatter(1, label[:, None], float("-inf")).amax(1)
        margin = (given - other).float()
        self.sample_margin[index] = margin
        self.margin_sum.index_add_(0, index, margin.double())
        self.visits.index_add_(0, index, torch.ones_like(index))

    def readout(self) -> Readout:
        """The per-sample :class:`Readout`.

        The base class ranks by the latest cross-entropy; methods with their own estimate replace ``score``
        and add their arrays (``dataclasses.replace(super().readout(), score=..., extra=...)``; LDLVA:
        1 - lambda; NLA: :func:`~ferlib.methods.nla.mislabel_score`; LA-Net: the mass its estimated distribution
        H moved off the given label, 1 - H[i, y_i]).
        """
        loss = self.sample_loss.cpu().numpy()
        aum = torch.where(self.visits > 0, self.margin_sum / self.visits.clamp(min=1), float("nan"))
        return Readout(score=loss, loss=loss, margin=self.sample_margin.cpu().numpy(), aum=aum.float().cpu().numpy())


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    register = _REGISTRY.register(cls.name)  # an empty or already registered name raises ValueError
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")
    return register(cls)


def list_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return _REGISTRY.names()


def method_class(name: str) -> type[Method]:
    """The registered class of a method name; unknown names raise with the valid list."""
    return _REGISTRY.get(name)


def method_config(name: str, **overrides):
    """The validated config of method ``name``: its paper defaults replaced by ``overrides``. An unknown option,
    a value of the wrong type or an invalid value raises ValueError naming the method and the option."""
    cls = method_class(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for method {name!r}; valid: {', '.join(sorted(fields))}")
    config = cls.Config(**overrides)
    check_types(config, where=f"method {name!r}")
    return config


def create_method(name: str, *, num_classes: int, num_train: int, feature_dim: int, **overrides) -> Method:
    """Build a method by name with its paper defaults, replaced by ``overrides`` (config field names)."""
    return method_class(name)(method_config(name, **overrides), num_classes=num_classes, num_train=num_train,
                              feature_dim=feature_dim)


def parse_overrides(name: str, pairs: list[str]) -> dict:
    """Turn ``["key=value", ...]`` into typed overrides of method ``name``'s config (types from the dataclass)."""
    return parse_options(method_class(name).Config, pairs, where=f"method {name!r}")
