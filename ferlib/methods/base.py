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
    method.readout()                          # per-sample arrays saved with the run

A batch is a dict of tensors on the training device:

    image   (B, C, H, W) float   the augmented, normalised view
    index   (B,) int64           position of each sample in the train split (keys per-sample state)
    label   (B,) int64           the given (possibly noisy) label
    votes   (B, K) float         human vote counts, only when the data has them
    affine  (B, 2, 3) float      the augmentation's affine map (output -> input, normalised coords)
    image_<view>                 each extra view the method names in ``views`` (see ferlib.augment)

The model is a :class:`ferlib.backbones.FERModel`: ``model.embed(x) -> (B, D)`` features,
``model.head(features) -> (B, K)`` logits, ``model(x) == model.head(model.embed(x))``. Parameters a method
adds (edge scorers, projection heads, landmark branches) are attributes of the method, an ``nn.Module``: the
engine optimises them with the model and checkpoints them with ``method.state_dict()``. They are used in
training only; inference is always the plain backbone + classifier.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from .._registry import Registry
from ..options import check_types, parse_options

__all__ = ["Method", "register_method", "create_method", "method_config", "list_methods", "method_class",
           "parse_overrides"]

_REGISTRY: Registry[type["Method"]] = Registry("method")


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
        (the study's ablation notebook runs each variant; a new method lists its own here).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = type(None)
    views: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    oracle: ClassVar[bool] = False
    ablations: ClassVar[dict[str, dict]] = {}

    def __init__(self, config, *, num_classes: int, num_train: int, feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.num_train = num_train
        self.feature_dim = feature_dim
        self.epoch, self.num_epochs = 0, 1
        # Per-sample read-outs every method keeps: the loss and margin of each sample's latest visit.
        self.register_buffer("sample_loss", torch.full((num_train,), float("nan")))
        self.register_buffer("sample_margin", torch.full((num_train,), float("nan")))

    # ----------------------------------------------------------------- hooks
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
        """Store each sample's cross-entropy and margin (given-label logit minus the best other logit)."""
        self.sample_loss[index] = nn.functional.cross_entropy(logits.float(), label, reduction="none")
        given = logits.gather(1, label[:, None]).squeeze(1)
        other = logits.scatter(1, label[:, None], float("-inf")).amax(1)
        self.sample_margin[index] = (given - other).float()

    def readout(self) -> dict[str, np.ndarray]:
        """Per-sample read-outs, each an array of shape (num_train,) indexed like the train split.

        ``score`` is the method's own uncertainty ranking: higher means more likely mislabelled. The base
        class ranks by the latest cross-entropy; methods with their own estimate override ``score`` and add
        their arrays (LDLVA: 1 - lambda; NLA: :func:`~ferlib.methods.nla.mislabel_score`; LA-Net: the mass its
        estimated distribution H moved off the given label, 1 - H[i, y_i]).
        """
        out = {"loss": self.sample_loss.cpu().numpy(), "margin": self.sample_margin.cpu().numpy()}
        out["score"] = out["loss"]
        return out


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
