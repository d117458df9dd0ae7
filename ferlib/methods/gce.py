"""GCE: the generalized cross-entropy L_q, optionally truncated with pruning.

Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels",
NeurIPS 2018 (arXiv 1805.07836). The authors released no code; the truncated variant follows the widely used
reimplementation ``AlanChou/Truncated-Loss@fef5908`` (``TruncatedLoss.py``, ``main.py``), and the plain L_q the
copy in the SCE authors' code (``YisenWang/symmetric_cross_entropy_for_noisy_labels@ec778df`` ``loss.py:33-39``).
Notes: ``docs/methods/gce.md``.

    L_q(p, y) = (1 - p_y^q) / q          q -> 0: cross-entropy -log p_y;  q = 1: 1 - p_y (MAE / 2)

Truncated (``truncate=True``, the paper's L_trunc, optimised by its alternating convex search over the network
and per-sample weights w_i)::

    L = mean_i w_i * (L_q(p_i, y_i) - L_q(k)),    w_i = [p_{y_i} > k], refreshed at the pruning epochs
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..options import Interval, check_ranges, ranged
from .base import Method, Readout, register_method

__all__ = ["GCE", "GCEConfig", "lq_loss", "truncated_lq_loss", "pruning_weights", "is_pruning_epoch"]


@dataclass(frozen=True)
class GCEConfig:
    """GCE hyperparameters: the paper's defaults (its CIFAR experiments; ``AlanChou/Truncated-Loss`` README: "all
    hyperparameters are set the same as they are mentioned in the paper").

    q : float in (0, 1]
        Exponent of L_q. The paper uses q = 0.7 in all its experiments (also ``loss.py:37`` of the SCE authors'
        code and ``TruncatedLoss.py:9``). q -> 0 recovers cross-entropy, q = 1 is MAE up to a factor 1/2.
    truncate : bool
        Use the paper's truncated loss L_trunc with pruning (alternating convex search) instead of plain L_q.
        Default False: the plain L_q, the form other papers compare with. See ``docs/methods/gce.md``.
    k : float in (0, 1)
        Truncation threshold: at each pruning epoch a sample whose given-label probability is not above k gets
        weight 0 (it leaves the loss until the next pruning). Paper and ``TruncatedLoss.py:9``: 0.5.
    prune_start, prune_every : float in (0, 1]
        Pruning schedule as fractions of the run: weights are refreshed at the start of 1-based epoch n for
        n >= S and (n - S) divisible by P, with S = round(prune_start * E), P = round(prune_every * E) (each
        at least 1). ``AlanChou/Truncated-Loss`` ``main.py:176`` and its README's CIFAR-10 command prune at
        epochs 40, 50, ... of 120: 1/3 and 1/12. DEPARTURE (inevitable under the Method interface): the weights
        come from each sample's latest training visit (train mode, augmented view, the then-current model), not
        from a separate pass with the best checkpoint (the reimplementation's ``main.py:176-186`` picks it on the
        test set; the paper on a validation set).
    """

    q: float = ranged(0.7, Interval(0, 1, lo_open=True))
    truncate: bool = False
    k: float = ranged(0.5, Interval(0, 1, lo_open=True, hi_open=True))
    prune_start: float = ranged(1 / 3, Interval(0, 1, lo_open=True))
    prune_every: float = ranged(1 / 12, Interval(0, 1, lo_open=True))

    def __post_init__(self) -> None:
        check_ranges(self)


# --------------------------------------------------------------------------- the paper's equations
def lq_loss(logits: torch.Tensor, label: torch.Tensor, *, q: float) -> torch.Tensor:
    """Per-sample L_q(f(x), e_y) = (1 - f_y(x)^q) / q (Zhang & Sabuncu, NeurIPS 2018, the L_q loss; as
    ``YisenWang/symmetric_cross_entropy_for_noisy_labels@ec778df`` ``loss.py:37-39`` and
    ``AlanChou/Truncated-Loss@fef5908`` ``TruncatedLoss.py:16-19`` compute it).

    logits : (B, K) z; label : (B,) y; q in (0, 1]. Returns (B,) with f = softmax(z). f_y^q is computed as
    exp(q * log_softmax(z)_y), which is finite and differentiable even where f_y underflows.
    """
    log_p = torch.log_softmax(logits, dim=1).gather(1, label[:, None]).squeeze(1)
    return (1.0 - torch.exp(q * log_p)) / q


def truncated_lq_loss(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor, *, q: float,
                      k: float) -> torch.Tensor:
    """Per-sample w_i * (L_q(f(x_i), e_{y_i}) - L_q(k)) (Zhang & Sabuncu, NeurIPS 2018: the truncated L_q loss
    in its w-weighted form, the network step of the alternating convex search; ``AlanChou/Truncated-Loss@fef5908``
    ``TruncatedLoss.py:19``).

    logits : (B, K); label : (B,); weight : (B,) in {0, 1}; L_q(k) = (1 - k^q) / q. Returns (B,).
    """
    return weight * (lq_loss(logits, label, q=q) - (1.0 - k ** q) / q)


def pruning_weights(p_given: torch.Tensor, *, q: float, k: float) -> torch.Tensor:
    """The weight step of the alternating convex search: w_i = 1 where L_q(p_i) < L_q(k), i.e. p_{y_i} > k,
    else 0 (Zhang & Sabuncu, NeurIPS 2018; ``AlanChou/Truncated-Loss@fef5908`` ``TruncatedLoss.py:24-34``,
    ``torch.gt(Lqk, Lq)``).

    p_given : (N,) the given-label probability of each sample. Returns (N,) float in {0, 1}.
    """
    return ((1.0 - p_given ** q) / q < (1.0 - k ** q) / q).float()


def is_pruning_epoch(epoch: int, num_epochs: int, *, start: float, every: float) -> bool:
    """Whether the weights are refreshed before 0-based ``epoch`` of ``num_epochs`` (see
    :attr:`GCEConfig.prune_start`). At 120 epochs with 1/3 and 1/12: 1-based epochs 40, 50, ..., 120, as
    ``main.py:176`` of ``AlanChou/Truncated-Loss`` (``(epoch+1) >= 40 and (epoch+1) % 10 == 0``)."""
    s = max(1, round(start * num_epochs))
    p = max(1, round(every * num_epochs))
    n = epoch + 1
    return n >= s and (n - s) % p == 0


# --------------------------------------------------------------------------- the method
@register_method
class GCE(Method):
    """Generalized cross-entropy L_q (q = 0.7); with ``truncate``, the paper's pruned L_trunc."""

    name = "gce"
    Config = GCEConfig
    multi_process = True  # per-sample terms only; the pruning weights come from record()'s gathered losses

    def __init__(self, config: GCEConfig, *, num_classes: int, num_train: int, feature_dim: int) -> None:
        super().__init__(config, num_classes=num_classes, num_train=num_train, feature_dim=feature_dim)
        self.register_buffer("weight", torch.ones(num_train))   # w_i of the truncated loss (1: kept)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_start(epoch, num_epochs)
        cfg = self.config
        if cfg.truncate and is_pruning_epoch(epoch, num_epochs, start=cfg.prune_start, every=cfg.prune_every):
            p_given = torch.exp(-self.sample_loss)   # the latest visit's softmax of the given label; NaN: unvisited
            seen = ~torch.isnan(p_given)
            self.weight[seen] = pruning_weights(p_given[seen], q=cfg.q, k=cfg.k)

    def training_step(self, model, batch):
        idx, label = batch["index"], batch["label"]
        logits = model(batch["image"])
        self.record(idx, logits, label)
        cfg = self.config
        if cfg.truncate:
            loss = truncated_lq_loss(logits.float(), label, self.weight[idx], q=cfg.q, k=cfg.k).mean()
            return {"loss": loss, "kept": self.weight[idx].mean()}
        return {"loss": lq_loss(logits.float(), label, q=cfg.q).mean()}

    def readout(self) -> Readout:
        """The base read-out: ``score`` is the latest cross-entropy, which ranks samples exactly as L_q (both
        fall with p_y); with ``truncate``, ``weight`` (N,) is each sample's pruning weight (0: pruned)."""
        out = super().readout()
        if self.config.truncate:
            out = dataclasses.replace(out, extra={"weight": self.weight.cpu().numpy()})
        return out

