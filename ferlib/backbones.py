"""Backbones through ``timm.create_model`` and the one model form every method trains: :class:`FERModel`.

Weights come only from a local file (never a hub download at run time). A file may hold a bare state dict
or one under ``state_dict`` / ``model`` / ``net``; ``module.`` prefixes (DataParallel) are stripped and a
user ``key_map`` renames keys (e.g. an MS-Celeb ResNet-18 in torchvision layout -> timm layout).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .options import field_hints, parse_literal, parse_value

__all__ = ["BackboneConfig", "FERModel", "create_model", "load_weights", "require_parts", "WeightsError",
           "backbone_options"]


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable or does not match the model."""


@dataclass(frozen=True)
class BackboneConfig:
    """How to build the network.

    name : str
        Any ``timm`` model name (``timm.list_models()``); default ``resnet18``.
    in_chans : int
        1 for grayscale faces (FERPlus), 3 for RGB.
    small_input : bool
        For faces of about 48 px: remove the stem's max-pool (ResNet family), so the last feature map is
        3x3 instead of 2x2 at 48 px. About 4x the compute; off by default (our CPU reference runs use the
        plain stem).
    weights : str or None
        Local path of pretrained weights (state dict). The classifier is always re-initialised.
    drop_rate : float
        Dropout before the classifier.
    model_kwargs : dict
        Extra keyword arguments of ``timm.create_model``, e.g. ``{"channels": [32, 64, 128, 256],
        "stem_width": 32}`` for a half-width ResNet-18 (2.8 M parameters, ~2.9x the CPU throughput).
    """

    name: str = "resnet18"
    in_chans: int = 1
    small_input: bool = False
    weights: str | None = None
    drop_rate: float = 0.0
    model_kwargs: dict = field(default_factory=dict)


class FERModel(nn.Module):
    """Backbone + linear classifier with the split every method relies on.

    ``embed(x)``: (B, C, H, W) -> (B, D) pooled features; ``head(f)``: (B, D) -> (B, K) logits;
    ``forward(x) = head(embed(x))``. ``backbone`` is the timm model with its classifier removed.

    :data:`PARTS` names what a training method may use of it; a method declares its share in
    ``Method.model_parts`` and the engine checks a model has them before training.
    """

    #: The parts a method may use: ``forward`` (``model(x)`` -> (B, K) logits), ``embed`` ((B, C, H, W) ->
    #: (B, D) pooled features), ``dropout`` (the dropout before the classifier), ``head`` ((B, D) -> (B, K)),
    #: ``backbone`` (the timm trunk: stages and feature maps, e.g. LA-Net's two branches), ``feature_dim`` (D).
    PARTS: tuple[str, ...] = ("forward", "embed", "dropout", "head", "backbone", "feature_dim")

    def __init__(self, backbone: nn.Module, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = backbone.num_features
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))


def create_model(config: BackboneConfig, num_classes: int,
                 key_map: Callable[[str], str] | None = None) -> FERModel:
    """Build a :class:`FERModel` from a :class:`BackboneConfig` (the one factory; timm underneath)."""
    import timm

    if config.name not in timm.list_models():
        raise ValueError(f"unknown backbone {config.name!r}; see timm.list_models() (e.g. resnet18, resnet50)")
    try:
        backbone = timm.create_model(config.name, pretrained=False, num_classes=0, in_chans=config.in_chans,
                                     **config.model_kwargs)
    except TypeError as exc:
        raise ValueError(f"BackboneConfig.model_kwargs {config.model_kwargs} do not fit {config.name!r}: {exc}") from exc
    if config.small_input:
        if not isinstance(getattr(backbone, "maxpool", None), nn.Module):
            raise ValueError(f"small_input needs a ResNet-family backbone with a stem max-pool, not {config.name!r}")
        backbone.maxpool = nn.Identity()
    if config.weights:
        load_weights(backbone, config.weights, key_map=key_map)
    return FERModel(backbone, num_classes, config.drop_rate)


def require_parts(backbone: nn.Module, parts: tuple[str, ...], needs: str) -> None:
    """Raise ValueError ``"<needs>; <backbone type> lacks [...]"`` when ``backbone`` lacks one of ``parts``
    (the stages and hooks a method reads of a timm backbone, e.g. a ResNet's ``layer4``)."""
    missing = [p for p in parts if not hasattr(backbone, p)]
    if missing:
        raise ValueError(f"{needs}; {type(backbone).__name__} lacks {missing}")


def load_weights(model: nn.Module, path: str | os.PathLike, *,
                 key_map: Callable[[str], str] | None = None) -> None:
    """Load a local state dict into ``model`` (classifier keys ignored), with clear errors.

    Raises :class:`WeightsError` when the file is missing, is not a state dict, or its keys do not match
    the backbone's one to one with the same shapes (the message lists the first offending keys).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (ferlib never downloads weights; give a local path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise WeightsError(f"cannot read weights file {path}: not a file of tensors torch.load reads safely "
                           f"({type(exc).__name__}); ferlib loads state dicts only (weights_only=True), never "
                           "pickled code") from exc
    state = _find_state_dict(obj, path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if key_map is not None:
        state = {key_map(k): v for k, v in state.items()}
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head.", "classifier.", "last_linear."))}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and state[k].shape != own[k].shape]
    channels = [k for k in shape if own[k].ndim == 4 and state[k].shape[1] != own[k].shape[1]
                and state[k].shape[0] == own[k].shape[0]]
    if channels:
        k = channels[0]
        raise WeightsError(f"weights file {path} expects {state[k].shape[1]}-channel images ({k}), the model is built "
                           f"for {own[k].shape[1]} (in_chans follows the data's channels): give RGB data, or "
                           f"weights trained on {own[k].shape[1]} channel(s)")
    if missing or unexpected or shape:
        raise WeightsError(f"weights file {path} does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}, wrong shape {shape[:5]} (first 5 of each; "
                           "pass key_map to rename keys)")
    model.load_state_dict({k: state[k] for k in own})


def _find_state_dict(obj, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if all(isinstance(v, torch.Tensor) for v in obj.values()) and obj:
            return obj
    raise WeightsError(f"weights file {path} holds no state dict (expected a dict of tensors, "
                       "optionally under 'state_dict', 'model' or 'net')")


#: BackboneConfig fields that --backbone-opt does not set, and where they come from instead.
_BACKBONE_ELSEWHERE = {"name": "use --backbone", "weights": "use --weights", "small_input": "use --small-input",
                       "in_chans": "it is set from the data's channels",
                       "model_kwargs": "give each timm keyword as its own KEY=VALUE"}


def backbone_options(pairs: list[str], *, where: str = "--backbone-opt") -> tuple[dict, dict]:
    """``["key=value", ...]`` -> (typed BackboneConfig fields, ``model_kwargs``).

    A key naming a BackboneConfig field (``drop_rate``) is typed from its hint (:func:`ferlib.options.parse_value`);
    any other key is a ``timm.create_model`` keyword whose value is a JSON literal, else a string
    (:func:`ferlib.options.parse_literal`). Raises ValueError naming ``where``, the key and the expected type.
    """
    hints = field_hints(BackboneConfig)
    fields, kwargs = {}, {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{where}: bad option {pair!r}: expected KEY=VALUE")
        if key in _BACKBONE_ELSEWHERE:
            raise ValueError(f"{where}: {key} is not set here: {_BACKBONE_ELSEWHERE[key]}")
        if key in hints:
            fields[key] = parse_value(text, hints[key], key=key, where=where)
        else:
            kwargs[key] = parse_literal(text)
    return fields, kwargs
