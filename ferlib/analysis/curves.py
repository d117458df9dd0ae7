"""Learning curves and memorisation: every run's per-epoch test accuracy and training loss, and how much of its
training labels, flipped ones included, the final model fits.

``epochs.csv`` records, per epoch, the validation and test accuracy and the training loss on the given labels,
not the training accuracy; the final model's fit of the given labels is read from the read-out's train logits
(:func:`fit_table`)."""
from __future__ import annotations

import os
import warnings

import numpy as np

from .. import rundir
from .runs import load_runs, run_start
from .seeds import seed_summary

__all__ = ["CURVE_COLUMNS", "epoch_table", "curve_summary", "fit_table", "fit_summary"]

#: The per-epoch columns :func:`epoch_table` keeps from ``epochs.csv`` (those a run has).
CURVE_COLUMNS = ("test_acc", "test_mean_acc", "valid_acc", "train_loss")


def epoch_table(runs_dir: str | os.PathLike) -> "object":
    """Every finished run's ``epochs.csv`` of a runs folder, tidy.

    Returns
    -------
    pandas.DataFrame, one row per run and epoch: ``run_id, method, oracle, noise, seed, start, epoch`` and the
    :data:`CURVE_COLUMNS` present (accuracies as fractions; ``train_loss`` is the method's own training
    objective on the given labels, comparable between runs of one method). A run whose ``epochs.csv`` is missing
    or unreadable is skipped with a :class:`ferlib.rundir.RunWarning` naming it.
    """
    import pandas as pd

    parts = []
    for folder in rundir.finished_runs(runs_dir):
        result = rundir.read_result(folder)
        try:
            epochs = pd.read_csv(folder / rundir.EPOCHS_CSV)
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipped {folder / rundir.EPOCHS_CSV}: {type(exc).__name__}: {exc}", rundir.RunWarning,
                          stacklevel=2)
            continue
        keep = ["epoch", *(c for c in CURVE_COLUMNS if c in epochs)]
        parts.append(epochs[keep].assign(run_id=result.get("run_id", folder.name), method=result["method"],
                                         oracle=bool(result.get("oracle")), noise=result.get("noise"),
                                         seed=result.get("seed"), start=run_start(result)))
    columns = ["run_id", "method", "oracle", "noise", "seed", "start", "epoch", *CURVE_COLUMNS]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True).reindex(columns=columns)


def curve_summary(table) -> "object":
    """:func:`epoch_table` over seeds: one row per (method, noise, start, epoch) with ``n_seeds`` and the
    ``<column>_mean`` / ``<column>_std`` (ddof 1; NaN for one seed) of the :data:`CURVE_COLUMNS`."""
    return seed_summary(table, ["method", "oracle", "noise", "start", "epoch"], CURVE_COLUMNS)


def fit_table(runs) -> "object":
    """How much of its training labels each run's final model fits (argmax of the read-out's train logits).

    Parameters
    ----------
    runs : a runs folder, or RunRecords / run folders.

    Returns
    -------
    pandas.DataFrame, one row per run: ``run_id, method, oracle, noise, seed, start``, ``train_acc_given``
    (predictions equal to the given label, over all train faces), ``train_acc_clean`` (equal to the clean label),
    ``memorised`` (of the flipped faces, the share predicted as their flipped, given label) and ``recovered`` (of
    the flipped faces, the share predicted as their clean label); the last two NaN when no label was flipped.
    """
    import pandas as pd

    rows = []
    for run in load_runs(runs):
        r = run.readout
        pred = np.asarray(r["train_logits"]).argmax(1)
        given, clean = np.asarray(r["given"]), np.asarray(r["clean"])
        flipped = given != clean
        rows.append({"run_id": run.run_id, "method": run.result["method"], "oracle": bool(run.result.get("oracle")),
                     "noise": run.result.get("noise"), "seed": run.result.get("seed"), "start": run_start(run),
                     "train_acc_given": float(np.mean(pred == given)), "train_acc_clean": float(np.mean(pred == clean)),
                     "memorised": float(np.mean(pred[flipped] == given[flipped])) if flipped.any() else np.nan,
                     "recovered": float(np.mean(pred[flipped] == clean[flipped])) if flipped.any() else np.nan})
    return pd.DataFrame(rows, columns=["run_id", "method", "oracle", "noise", "seed", "start", "train_acc_given",
                                       "train_acc_clean", "memorised", "recovered"])


def fit_summary(table) -> "object":
    """:func:`fit_table` over seeds: one row per (method, oracle, noise, start) with ``n_seeds`` and the
    ``<column>_mean`` / ``<column>_std`` of its four shares."""
    return seed_summary(table, ["method", "oracle", "noise", "start"],
                        ["train_acc_given", "train_acc_clean", "memorised", "recovered"])
