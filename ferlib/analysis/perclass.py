"""Per-class views: test confusion matrices summed over seeds, the best method per noise setting, and per-class
accuracy with each class's test count and a Wilson interval (the rare classes rest on a few dozen faces)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .runs import class_names_for, load_runs
from .tables import per_class_summary

__all__ = ["wilson_interval", "test_confusions", "best_methods", "class_accuracy"]


def wilson_interval(successes, n, *, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (95% for the default ``z``): ``successes`` of ``n`` trials.

    ``successes`` may be fractional (a mean accuracy times ``n``). Returns ``(low, high)`` arrays in [0, 1];
    NaN where ``n`` is 0.
    """
    k, n = np.asarray(successes, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.where(p == 0, 0.0, np.clip(centre - half, 0, 1)), np.where(p == 1, 1.0, np.clip(centre + half, 0, 1))


def test_confusions(runs, *, noise: str, methods: Sequence[str]) -> dict[str, np.ndarray]:
    """The last epoch's test confusion matrices (row = true class) of ``methods`` at ``noise``, summed over seeds.

    Returns
    -------
    dict method (registry name) -> (K, K) int64 counts, in the order of ``methods``; a method without a run at
    that noise is left out.
    """
    out: dict[str, np.ndarray] = {}
    for run in load_runs(runs):
        method = run.result["method"]
        if method in methods and run.result.get("noise") == noise and run.history:
            cm = np.asarray(run.history[-1]["test"]["confusion"], dtype=np.int64)
            out[method] = out[method] + cm if method in out else cm
    return {m: out[m] for m in methods if m in out}


def best_methods(summary, *, metric: str = "last.acc", baseline: str = "ce") -> "object":
    """The best method per noise setting by the mean of ``metric`` over seeds, oracles and the clean-label
    control left out.

    Parameters
    ----------
    summary : :func:`~ferlib.analysis.summary_table`'s output.

    Returns
    -------
    pandas.DataFrame, one row per noise setting other than ``none``: ``noise``, ``method``, ``<metric>_mean``,
    ``baseline_mean`` (``baseline``'s at that noise; NaN without one).
    """
    import pandas as pd

    col = f"{metric}_mean"
    oracle = summary["oracle"].astype(bool) if "oracle" in summary else np.zeros(len(summary), bool)
    df = summary[(summary["noise"] != "none") & ~oracle]
    rows = []
    for noise, g in df.groupby("noise", sort=False):
        best = g.loc[g[col].idxmax()]
        base = g.loc[g["method"] == baseline, col]
        rows.append({"noise": noise, "method": best["method"], col: best[col],
                     "baseline_mean": float(base.iloc[0]) if len(base) else np.nan})
    return pd.DataFrame(rows, columns=["noise", "method", col, "baseline_mean"])


def class_accuracy(runs, *, stage: str = "last") -> "object":
    """Per-class test accuracy over seeds with each class's number of test faces and a 95% Wilson interval.

    The interval is that of a proportion of ``n`` faces at the mean accuracy over seeds: how much the test set's
    sampling alone can move a class's accuracy (the seeds see the same test faces, so they add no faces to it).

    Returns
    -------
    pandas.DataFrame: :func:`~ferlib.analysis.per_class_summary`'s columns (``method`` the run label, oracle
    marked), plus ``n`` (the class's test faces), ``low`` and ``high`` (the interval).
    """
    table = per_class_summary(runs, stage=stage)
    if table.empty:
        return table.assign(n=[], low=[], high=[])
    run = next(r for r in load_runs(runs) if r.history)
    counts = np.asarray(run.history[-1]["test"]["confusion"]).sum(1)
    n = table["class"].map(dict(zip(class_names_for(run), counts.tolist()))).astype(float)
    low, high = wilson_interval(table["acc_mean"].to_numpy(float) * n.to_numpy(), n.to_numpy())
    return table.assign(n=n.astype(int), low=low, high=high)
