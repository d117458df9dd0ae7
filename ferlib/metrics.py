"""Classification metrics on integer arrays (no torch): overall / mean accuracy, macro-F1, per class, confusion."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["confusion_matrix", "classification_metrics", "health_flags", "NonFiniteLossError", "DIVERGED_FACTOR",
           "COLLAPSED_SHARE"]

#: A run whose last-epoch training loss exceeds this many times its first epoch's, or ln K (the loss of a uniform
#: prediction over K classes), has diverged.
DIVERGED_FACTOR = 10.0
#: A run whose last-epoch model puts at least this share of a split's predictions in one class has collapsed.
COLLAPSED_SHARE = 0.9


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite: the run diverged (too high a learning rate, or a bfloat16
    overflow). The CLI reports it in one line as bad input, with what to change."""

    def __str__(self) -> str:
        return f"{super().__str__()}: lower --lr, or train in float32 with --no-amp"


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, *, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts; row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if len(y_true) and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, *, num_classes: int) -> dict:
    """Overall accuracy, mean (class-balanced) accuracy, macro-F1, per-class accuracy and confusion matrix.

    Classes absent from ``y_true`` are left out of the mean accuracy and of macro-F1 (their per-class
    accuracy is NaN), so a small test split does not get a free zero.

    Returns
    -------
    dict with ``acc``, ``mean_acc``, ``macro_f1`` (floats in [0, 1]), ``per_class_acc`` (list of K floats)
    and ``confusion`` (K x K nested list).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes=num_classes)
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = np.diag(cm).astype(float)
    present = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(present, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "acc": float(tp.sum() / max(cm.sum(), 1)),
        "mean_acc": float(np.nanmean(recall)) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class_acc": [float(r) for r in recall],
        "confusion": cm.tolist(),
    }


def health_flags(history: list[dict], class_names=None) -> list[str]:
    """Why a finished run is not an ordinary result: one line per problem, ``[]`` for a healthy run.

    ``history`` : the engine's epoch rows (``train_loss``, and ``valid`` / ``test`` metrics with ``confusion``).
    A run has *diverged* when its last training loss exceeds :data:`DIVERGED_FACTOR` times the first epoch's, or
    times ln K, the cross-entropy of a uniform prediction (where training starts), so that a run that blew up
    within its first epoch is caught too. It has *collapsed* on a split when its last-epoch model puts at least
    :data:`COLLAPSED_SHARE` of the split's predictions in one class (a one-class predictor, whatever its
    accuracy). ``class_names`` name the class in the message (default: its index); K is their number, else the
    size of the last epoch's confusion matrices.
    """
    flags = []
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    k = len(class_names) if class_names is not None else _num_classes(history[-1])
    diverged = f"diverged: training loss {last:.3g} at epoch {history[-1]['epoch']} is more than {DIVERGED_FACTOR:g}x"
    if last > DIVERGED_FACTOR * first:
        flags.append(f"{diverged} the first epoch's {first:.3g}")
    elif k > 1 and last > DIVERGED_FACTOR * math.log(k):
        flags.append(f"{diverged} ln {k} = {math.log(k):.3g}, the loss of a uniform prediction over {k} classes")
    for split in ("valid", "test"):
        if split not in history[-1]:
            continue
        predicted = np.asarray(history[-1][split]["confusion"]).sum(0)
        top = int(predicted.argmax())
        share = predicted[top] / max(predicted.sum(), 1)
        if share >= COLLAPSED_SHARE:
            name = class_names[top] if class_names is not None else str(top)
            flags.append(f"collapsed: {share:.0%} of the {split} predictions are {name!r} at the last epoch")
    return flags


def _num_classes(row: dict) -> int:
    """K of an epoch row: the side of its first split's confusion matrix (0 without one)."""
    return next((len(row[split]["confusion"]) for split in ("valid", "test") if split in row), 0)

