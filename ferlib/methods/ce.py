"""Cross-entropy baseline (optionally with label smoothing)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..options import UNIT_OPEN, check_ranges, ranged
from .base import Method, register_method

__all__ = ["CE", "CEConfig"]


@dataclass(frozen=True)
class CEConfig:
    """Plain softmax cross-entropy on the given labels.

    label_smoothing : float in [0, 1)
        Mass spread uniformly over all classes (Szegedy et al., CVPR 2016). 0 = plain CE.
    """

    label_smoothing: float = ranged(0.0, UNIT_OPEN)

    def __post_init__(self) -> None:
        check_ranges(self)


@register_method
class CE(Method):
    """The baseline every noisy-label method is compared with."""

    name = "ce"
    Config = CEConfig
    multi_process = True  # per-sample terms only; record() gathers

    def training_step(self, model, batch):
        logits = model(batch["image"])
        self.record(batch["index"], logits, batch["label"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.config.label_smoothing)
        return {"loss": loss}
