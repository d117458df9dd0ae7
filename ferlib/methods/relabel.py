"""SCN's relabelling rule and its audited per-sample label state, shared by ``scn`` and ``rul`` (relabel option).

Wang, Peng, Yang, Lu, Qiao, "Suppressing Uncertainties for Large-Scale Facial Expression Recognition"
(Self-Cure Network), CVPR 2020, relabelling module. Official code: ``kaiwang960112/Self-Cure-Network`` at
9f4c3ad, ``src/train.py:249-258``. Notes: ``docs/methods/scn.md``.

From the relabel epoch on, a sample whose prediction beats its current label by more than a margin takes the
predicted class as its label, permanently::

    p = softmax(z_i);  relabel i  <=>  max_c p_c - p_{y_i} > margin_2  (and i is eligible);  y_i <- argmax_c p_c

Eligible is every sample of the batch (the code) or only the low-importance group (the paper; the maintainer's
one-line fix in the SCN issues #33 and #83). Every change is kept: :class:`RelabelState` holds each sample's
current label and its label after every epoch, from which :func:`relabel_events` lists every relabel as
(sample, epoch, old label, new label) and :func:`ferlib.analysis.relabel_summary` scores them against the
clean labels.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["RELABEL_GROUPS", "split_groups", "relabel_gap", "relabel_mask", "RelabelState", "relabel_events"]

#: ``all``: any sample of the batch may be relabelled (SCN's code); ``low``: only its low-importance group
#: (SCN's paper).
RELABEL_GROUPS = ("all", "low")


def split_groups(importance: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The high- and low-importance groups of a batch (SCN, CVPR 2020, rank regularisation).

    importance : (B,) alpha_i, higher = more important; beta : the high group's share. Returns the indices of
    the floor(B * beta) largest values (the code's ``tops = int(batch_sz * beta)``, ``src/train.py:218``) and
    of the other B - floor(B * beta), a partition of 0..B-1. The code takes two separate ``topk`` calls
    (``src/train.py:224-225``), which may place a tied value in both groups or in neither; a stable sort
    partitions instead. The two agree on the groups' multisets of values, so on the rank loss, and differ
    only in which of several tied samples counts as low (for the ``low`` relabel group).
    """
    b = importance.shape[0]
    tops = int(b * beta)
    order = torch.argsort(importance.detach(), descending=True, stable=True)
    return order[:tops], order[tops:]


def relabel_gap(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The relabel evidence of each sample: max_c p_c - p_{y_i}, and argmax_c p_c (``src/train.py:251-253``).

    probs : (B, K) softmax of the logits; labels : (B,) current labels y_i. Returns gap (B,) in [0, 1] (0 when
    the prediction is the label) and pred (B,) int64.
    """
    p_max, pred = probs.max(1)
    return p_max - probs.gather(1, labels[:, None]).squeeze(1), pred


def relabel_mask(probs: torch.Tensor, labels: torch.Tensor, *, margin: float,
                 eligible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SCN's relabel rule (CVPR 2020, relabelling module; ``src/train.py:250-258``): relabel sample i to
    argmax_c p_c when max_c p_c - p_{y_i} > margin (delta_2) and i is eligible.

    probs : (B, K); labels : (B,); margin : delta_2 >= 0 (code ``--margin_2``, 0.2); eligible : (B,) bool or None
    (every sample, the code). Returns mask (B,) bool (which samples change label) and pred (B,) their new labels
    (argmax; a relabelled sample always changes class, since the gap is 0 when pred == label).
    """
    gap, pred = relabel_gap(probs, labels)
    mask = gap > margin
    if eligible is not None:
        mask &= eligible
    return mask, pred


class RelabelState(nn.Module):
    """Per-sample labels that a method may relabel, with their audit trail (buffers, so a resumed run is
    identical: they travel in the method's ``state_dict``).

    Buffers (N = number of train samples)
    -------------------------------------
    label : (N,) int64, the current training label (the given label until relabelled).
    count : (N,) int64, how many times the sample was relabelled.
    epoch : (N,) int64, the epoch (1-based, as ``epochs.csv``) of its latest relabel; 0 = never.
    before : (N,) int64, its label just before that latest relabel; -1 = never relabelled.
    history : (N, E) int16, its label at the end of each epoch (column e = epoch e + 1): the full audit, every
        (sample, epoch, old, new) change read off by :func:`relabel_events` (allocated by :meth:`bind`; one
        visit per epoch, as with the engine's default order, so no change hides inside an epoch; ``count``
        counts every change regardless).
    """

    def __init__(self, num_train: int) -> None:
        super().__init__()
        self.register_buffer("label", torch.zeros(num_train, dtype=torch.int64))
        self.register_buffer("count", torch.zeros(num_train, dtype=torch.int64))
        self.register_buffer("epoch", torch.zeros(num_train, dtype=torch.int64))
        self.register_buffer("before", torch.full((num_train,), -1, dtype=torch.int64))
        self.register_buffer("history", torch.zeros(num_train, 0, dtype=torch.int16))

    def bind(self, labels: np.ndarray, num_epochs: int) -> None:
        """Start from the given ``labels`` (N,) for a run of ``num_epochs`` epochs (resets the audit)."""
        given = torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=self.label.device)
        if given.shape != self.label.shape:
            raise ValueError(f"RelabelState holds {len(self.label)} samples, bound to {len(given)} labels")
        self.label.copy_(given)
        self.count.zero_()
        self.epoch.zero_()
        self.before.fill_(-1)
        self.history = given.to(torch.int16)[:, None].repeat(1, num_epochs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "history"  # the epoch count is known only at bind: take the stored shape
        if key in state_dict and state_dict[key].shape != self.history.shape:
            self.history = torch.zeros_like(state_dict[key], device=self.history.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def update(self, index: torch.Tensor, probs: torch.Tensor, *, epoch: int, margin: float,
               eligible: torch.Tensor | None = None) -> torch.Tensor:
        """Apply :func:`relabel_mask` to the batch ``index`` (B,) with ``probs`` (B, K) against the current labels
        at 0-based ``epoch``; record every change. Returns the (B,) bool mask of the relabelled samples."""
        mask, pred = relabel_mask(probs.float(), self.label[index], margin=margin, eligible=eligible)
        chosen, new = index[mask], pred[mask]
        self.before[chosen] = self.label[chosen]
        self.label[chosen] = new
        self.count[chosen] += 1
        self.epoch[chosen] = epoch + 1
        if self.history.shape[1]:
            self.history[chosen, min(epoch, self.history.shape[1] - 1):] = new.to(torch.int16)[:, None]
        return mask

    def arrays(self) -> dict[str, np.ndarray]:
        """The audit as read-out arrays: ``label``, ``relabel_count``, ``relabel_epoch``, ``label_before`` and
        ``label_history`` (see the buffers)."""
        return {"label": self.label.cpu().numpy(), "relabel_count": self.count.cpu().numpy(),
                "relabel_epoch": self.epoch.cpu().numpy(), "label_before": self.before.cpu().numpy(),
                "label_history": self.history.cpu().numpy()}


def relabel_events(history: np.ndarray, given: np.ndarray) -> dict[str, np.ndarray]:
    """Every relabel of a run as a table of columns (the audit of :class:`RelabelState`).

    history : (N, E) int, each sample's label at the end of each epoch (read-out ``label_history``);
    given : (N,) int, the given labels. Returns ``{"index", "epoch", "old", "new"}``, each (M,) int64, one row
    per change in row-major order (sample, then epoch); ``epoch`` is 1-based, as in ``epochs.csv``.
    """
    history, given = np.asarray(history, dtype=np.int64), np.asarray(given, dtype=np.int64)
    if history.ndim != 2 or len(history) != len(given):
        raise ValueError(f"history must be (N, E) with N = len(given) = {len(given)}, got {history.shape}")
    previous = np.concatenate([given[:, None], history[:, :-1]], axis=1)
    index, col = np.nonzero(history != previous)
    return {"index": index.astype(np.int64), "epoch": col.astype(np.int64) + 1,
            "old": previous[index, col], "new": history[index, col]}
