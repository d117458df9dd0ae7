"""ORACLE: label-distribution learning on the human vote distributions of FERPlus.

This method reads the annotators' votes, which no noisy-label method may see. It is an upper bound for the
label-distribution methods (LA-Net, LDLVA), never a competitor: results carry ``oracle=True``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import NON_NEGATIVE, check_ranges, ranged
from .base import Method, register_method

__all__ = ["LDLVotes", "LDLVotesConfig", "soft_cross_entropy"]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k t_k log softmax(z)_k.

    logits : (B, K); target : (B, K) rows summing to 1. Equals KL(t || p) up to the entropy of t.
    """
    return -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()


@dataclass(frozen=True)
class LDLVotesConfig:
    """Cross-entropy to the normalised human votes (Barsoum et al., ICMI 2016, "probabilistic label drawing"
    / "cross-entropy loss" schemes; here the cross-entropy one).

    min_votes : float >= 0
        Vote counts below this are zeroed before normalising (1 drops single votes, as in the majority mode).
    """

    min_votes: float = ranged(0.0, NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_ranges(self)


@register_method
class LDLVotes(Method):
    """Oracle: targets are the (thresholded, normalised) FERPlus votes of each image."""

    name = "ldl_votes"
    Config = LDLVotesConfig
    requires = ("votes",)
    oracle = True
    multi_process = True  # per-sample terms only; record() gathers

    def training_step(self, model, batch):
        logits = model(batch["image"])
        self.record(batch["index"], logits, batch["label"])
        votes = batch["votes"] * (batch["votes"] >= self.config.min_votes)
        target = votes / votes.sum(1, keepdim=True).clamp_min(1e-12)
        return {"loss": soft_cross_entropy(logits, target)}
