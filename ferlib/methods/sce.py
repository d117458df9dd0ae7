"""SCE: symmetric cross-entropy, alpha * CE + beta * reverse CE.

Wang, Ma, Chen, Luo, Yi, Bailey, "Symmetric Cross Entropy for Robust Learning with Noisy Labels", ICCV 2019
(arXiv 1908.06112). Official code: ``YisenWang/symmetric_cross_entropy_for_noisy_labels`` (Keras) at ec778df,
``loss.py:9-21``; PyTorch reproduction by the authors' group: ``HanxunH/SCELoss-Reproduce`` at c81fb33,
``loss.py``. Notes: ``docs/methods/sce.md``.

With p = softmax(z) and the one-hot label q = e_y::

    CE  = -sum_k q_k log p_k = -log p_y
    RCE = -sum_k p_k log q_k,   log 0 := A   =>   RCE = -A * (1 - p_y)
    L   = alpha * CE + beta * RCE

The paper states A = -4; the official code clips the one-hot label to [1e-4, 1] before the log, so its
effective A is log(1e-4) = -9.21. ferlib follows the code (``log_zero``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..options import NON_NEGATIVE, UNIT_OPEN, Interval, check_ranges, ranged
from .base import Method, register_method

__all__ = ["SCE", "SCEConfig", "reverse_cross_entropy", "symmetric_cross_entropy"]


@dataclass(frozen=True)
class SCEConfig:
    """SCE hyperparameters: the official code's values for CIFAR-10, the paper's closest setting to FER (few
    classes; the paper's other settings are MNIST (alpha 0.01, beta 1), CIFAR-100 (alpha 6, beta 0.1) and
    Clothing1M).

    alpha : float >= 0
        Weight of the cross-entropy. CIFAR-10: 0.1 (paper; official ``train_models.py:215-217``; the PyTorch
        reproduction's README command; its argparse default is 1.0, ``train.py:27``).
    beta : float >= 0
        Weight of the reverse cross-entropy. CIFAR-10: 1.0 (same sources; reproduction default 1.0, ``train.py:28``).
    log_zero : float < 0
        A, the value given to log 0 in the reverse cross-entropy. Default log(1e-4) = -9.2103: the official
        code clips the one-hot label to [1e-4, 1] before the log (``loss.py:18``, and the reproduction's
        ``loss.py:22``). The paper states A = -4 (``log_zero=-4.0``). Only the product -beta * A matters
        for one-hot labels, so the code's RCE is 2.30x the paper's at the same beta.
    ce_clip : float in [0, 1)
        Lower clip of p_y inside the cross-entropy: the official code computes -log(clip(p, 1e-7, 1))
        (``loss.py:17``), which caps CE at 16.1 and stops its gradient below 1e-7. 0 = no clip (the PyTorch
        reproduction's ``F.cross_entropy``, ``loss.py:16``). The two differ only where p_y < 1e-7.
    """

    alpha: float = ranged(0.1, NON_NEGATIVE)
    beta: float = ranged(1.0, NON_NEGATIVE)
    log_zero: float = ranged(math.log(1e-4), Interval(hi=0, hi_open=True))  # it stands for log 0
    ce_clip: float = ranged(1e-7, UNIT_OPEN)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.alpha + self.beta == 0:
            raise ValueError("SCEConfig.alpha and beta are both 0: the loss would be 0")


# --------------------------------------------------------------------------- the paper's equations
def reverse_cross_entropy(probs: torch.Tensor, label: torch.Tensor, *, log_zero: float) -> torch.Tensor:
    """Per-sample RCE = -sum_k p_k log q_k with q = e_y and log 0 := A (Wang et al., ICCV 2019, the reverse
    cross-entropy l_rce; ``YisenWang/symmetric_cross_entropy_for_noisy_labels@ec778df`` ``loss.py:18, 20``).

    probs : (B, K) p, rows summing to 1; label : (B,) y; log_zero : A < 0. Returns (B,), equal to
    -A * (1 - p_y) = (-A / 2) * ||p - e_y||_1.
    """
    log_q = torch.full_like(probs, log_zero).scatter(1, label[:, None], 0.0)   # log of the clipped one-hot
    return -(probs * log_q).sum(1)


def symmetric_cross_entropy(logits: torch.Tensor, label: torch.Tensor, *, alpha: float, beta: float,
                            log_zero: float, ce_clip: float = 0.0) -> torch.Tensor:
    """Per-sample l_sl = alpha * l_ce + beta * l_rce (Wang et al., ICCV 2019, the symmetric cross-entropy;
    ``loss.py:9-21`` of the official code, whose ``reduce_mean`` is the mean of this over the batch).

    logits : (B, K) z; label : (B,) y; ce_clip : lower clip of p_y inside l_ce (0: none). Returns (B,).
    """
    log_p = torch.log_softmax(logits, dim=1)
    log_py = log_p.gather(1, label[:, None]).squeeze(1)
    if ce_clip > 0:
        log_py = log_py.clamp(min=math.log(ce_clip))
    return alpha * -log_py + beta * reverse_cross_entropy(log_p.exp(), label, log_zero=log_zero)


# --------------------------------------------------------------------------- the method
@register_method
class SCE(Method):
    """Symmetric cross-entropy (alpha = 0.1, beta = 1, A = log 1e-4 as the official CIFAR-10 code).

    The base read-out's ``score`` (the latest cross-entropy) ranks samples exactly as the SCE loss does: both
    fall with p_y.
    """

    name = "sce"
    Config = SCEConfig
    multi_process = True  # per-sample terms only; record() gathers
    ablations = {"no_rce": {"beta": 0.0}}   # alpha * CE alone (CE scaled by alpha)

    def training_step(self, model, batch):
        logits = model(batch["image"])
        self.record(batch["index"], logits, batch["label"])
        cfg = self.config
        loss = symmetric_cross_entropy(logits.float(), batch["label"], alpha=cfg.alpha, beta=cfg.beta,
                                       log_zero=cfg.log_zero, ce_clip=cfg.ce_clip)
        return {"loss": loss.mean()}
