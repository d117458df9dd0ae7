"""ELR: early-learning regularisation, cross-entropy plus a pull toward each sample's running prediction.

Liu, Niles-Weed, Razavian, Fernandez-Granda, "Early-Learning Regularization Prevents Memorization of Noisy
Labels", NeurIPS 2020 (arXiv 2007.00151). Official code: ``shengliu66/ELR`` at 934af53, ``ELR/model/loss.py``
(the loss), ``ELR/config_cifar10.json`` (beta, lambda), ``ELR/train.py``, ``ELR/trainer/trainer.py``. ELR+ (two
networks, mixup, weight averaging; ``ELR_plus/``) is not implemented. Notes: ``docs/methods/elr.md``.

Per visit of sample i, with p_i = clamp(softmax(z_i), 1e-4, 1 - 1e-4) (not renormalised)::

    t_i <- beta * t_i + (1 - beta) * sg(p_i / sum_k p_ik)       t_i = 0 before the first visit; sg: no gradient
    L    = mean_i CE(z_i, y_i) + lam * mean_i log(1 - <t_i, p_i>)

with the target already updated by this visit, as the code does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import gather
from ..options import NON_NEGATIVE, UNIT_OPEN, Interval, check_ranges, ranged
from .base import Method, Readout, register_method

__all__ = ["ELR", "ELRConfig", "elr_probabilities", "elr_target_update", "elr_regulariser", "elr_loss"]


@dataclass(frozen=True)
class ELRConfig:
    """ELR hyperparameters: the official code's values for CIFAR-10 with symmetric noise, the paper's closest
    setting to FER (few classes, symmetric noise).

    beta : float in [0, 1)
        Momentum of the per-sample target's moving average. ``ELR/config_cifar10.json:39`` (``train_loss.args.
        beta``): 0.7. Other official settings: 0.9 for CIFAR-100 (``config_cifar100.json:39``) and for CIFAR-10
        with asymmetric noise (``config_cifar10_asym.json:39``). ``loss.py:12``'s class default 0.3 is never
        used (``train.py:73-74`` passes the config's).
    lam : float >= 0
        Weight lambda of the regulariser. ``ELR/config_cifar10.json:40`` (``train_loss.args.lambda``): 3
        (CIFAR-100: 7; CIFAR-10 asymmetric: 1). 0 = plain cross-entropy.
    clamp : float in (0, 0.5)
        p is clamped to [clamp, 1 - clamp] before both the target update and the regulariser
        (``ELR/model/loss.py:23``: 1e-4). It keeps log(1 - <t, p>) finite: <t, p> <= max_k p_k < 1.
    """

    beta: float = ranged(0.7, UNIT_OPEN)
    lam: float = ranged(3.0, NON_NEGATIVE)
    clamp: float = ranged(1e-4, Interval(0, 0.5, lo_open=True, hi_open=True))

    def __post_init__(self) -> None:
        check_ranges(self)


# --------------------------------------------------------------------------- the paper's equations
def elr_probabilities(logits: torch.Tensor, *, clamp: float = 1e-4) -> torch.Tensor:
    """(B, K) p = clamp(softmax(z), clamp, 1 - clamp), NOT renormalised (``ELR/model/loss.py:22-23``)."""
    return torch.softmax(logits, dim=1).clamp(clamp, 1.0 - clamp)


@torch.no_grad()
def elr_target_update(target: torch.Tensor, probs: torch.Tensor, *, beta: float) -> torch.Tensor:
    """The temporal-ensembling target t <- beta * t + (1 - beta) * p / sum_k p_k (Liu et al., NeurIPS 2020,
    the ELR target; ``ELR/model/loss.py:24-25``: ``y_pred_`` detached and renormalised).

    target : (B, K) the samples' previous t (zeros before the first visit); probs : (B, K) clamped p.
    Returns the new (B, K) t, without gradient.
    """
    probs = probs.detach()
    return beta * target + (1.0 - beta) * probs / probs.sum(1, keepdim=True)


def elr_regulariser(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample log(1 - <t_i, p_i>) (Liu et al., NeurIPS 2020, the ELR term; ``ELR/model/loss.py:27``).

    probs : (B, K) clamped p (carries the gradient); target : (B, K) t (constant). Returns (B,). Minimising it
    raises <t_i, p_i>: the prediction is pulled toward the sample's running average.
    """
    return torch.log(1.0 - (target * probs).sum(1))


def elr_loss(logits: torch.Tensor, label: torch.Tensor, target: torch.Tensor, *, beta: float, lam: float,
             clamp: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ELR step (``ELR/model/loss.py:21-29``): update the targets, then CE + lam * regulariser.

    logits : (B, K) z; label : (B,) y; target : (B, K) the samples' t before this visit.
    Returns (ce (B,), reg (B,), new target (B, K)); the code's loss is ``ce.mean() + lam * reg.mean()``.
    """
    probs = elr_probabilities(logits, clamp=clamp)
    new_target = elr_target_update(target, probs, beta=beta)
    ce = F.cross_entropy(logits, label, reduction="none")
    return ce, elr_regulariser(probs, new_target), new_target


# --------------------------------------------------------------------------- the method
@register_method
class ELR(Method):
    """Early-learning regularisation (beta = 0.7, lambda = 3 as the official CIFAR-10 config)."""

    name = "elr"
    Config = ELRConfig
    multi_process = True  # per-sample terms; the targets are written from the gathered batch
    ablations = {"no_elr": {"lam": 0.0}}   # plain cross-entropy (the target is still tracked and read out)

    def __init__(self, config: ELRConfig, *, num_classes: int, num_train: int, feature_dim: int) -> None:
        super().__init__(config, num_classes=num_classes, num_train=num_train, feature_dim=feature_dim)
        self.register_buffer("target", torch.zeros(num_train, num_classes))   # t_i (code: zeros, loss.py:17)
        self.register_buffer("given", torch.zeros(num_train, dtype=torch.int64))

    def bind(self, model, train, config) -> None:
        self.given.copy_(torch.as_tensor(train.labels, dtype=torch.int64))

    def training_step(self, model, batch):
        idx, label = batch["index"], batch["label"]
        logits = model(batch["image"])
        self.record(idx, logits, label)
        cfg = self.config
        ce, reg, target = elr_loss(logits.float(), label, self.target[idx], beta=cfg.beta, lam=cfg.lam,
                                   clamp=cfg.clamp)
        self.target[gather(idx)] = gather(target)  # every process keeps every row (one process: target[idx])
        ce, reg = ce.mean(), reg.mean()
        return {"loss": ce + cfg.lam * reg, "ce": ce, "elr": reg}

    def readout(self) -> Readout:
        """The base read-out with ``target`` (N, K), each sample's t (zeros: never visited; its rows sum to
        1 - beta^visits), and ``score`` = 1 - t_iy / sum_k t_ik, the share of the running-average prediction
        off the given label (a ferlib addition; NaN: never visited)."""
        target = self.target.cpu().numpy()
        total = target.sum(1)
        given = target[np.arange(len(target)), self.given.cpu().numpy()]
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.where(total > 0, 1.0 - given / total, np.nan).astype(np.float32)
        return dataclasses.replace(super().readout(), score=score, target=target)
