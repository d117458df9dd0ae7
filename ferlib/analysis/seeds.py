"""Mean ± std over seeds: the one aggregation behind every summary table of :mod:`ferlib.analysis`."""
from __future__ import annotations

import math

from typing import Sequence

__all__ = ["seed_summary", "seeds_text", "mean_std_text"]


def seeds_text(seeds) -> str:
    """``"0,1,2"``: the distinct seeds of a group, sorted (integral floats written as integers)."""
    values = sorted({float(x) for x in seeds if x == x})
    return ",".join(str(int(x)) if x.is_integer() else str(x) for x in values)


def mean_std_text(mean, std, *, scale: float = 100.0, digits: int = 1) -> str:
    """``"63.2 ± 1.4"``: a mean over seeds and its std, both times ``scale`` (100: fractions as %); the std left
    out when missing or NaN (one seed), ``"–"`` for a missing mean."""
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return text if std is None or not math.isfinite(std) else f"{text} ± {std * scale:.{digits}f}"


def seed_summary(table, keys: Sequence[str], metrics: Sequence[str]) -> "object":
    """Mean and standard deviation over seeds of per-run ``metrics``, one row per setting.

    Parameters
    ----------
    table : pandas.DataFrame, one row per run (and ranking, class ...), with a ``seed`` column.
    keys : the columns that define a setting; those the table lacks are skipped (rows differing in one are
        never averaged together; a missing value is a value of its own).
    metrics : the columns to average; those the table lacks are skipped.

    Returns
    -------
    pandas.DataFrame sorted by the keys: the keys, ``n_seeds`` (distinct seeds), ``seeds`` (:func:`seeds_text`),
    ``n_runs`` (rows averaged: more than ``n_seeds`` when runs of one seed share a setting), and
    ``<metric>_mean``, ``<metric>_std`` (sample standard deviation, ddof = 1; NaN for one run) per metric.
    """
    import pandas as pd

    keys = [k for k in keys if k in table.columns]
    metrics = [m for m in metrics if m in table.columns]
    columns = [*keys, "n_seeds", "seeds", "n_runs", *(f"{m}_{stat}" for m in metrics for stat in ("mean", "std"))]
    if not len(table) or not keys:
        return pd.DataFrame(columns=columns)
    grouped = table.groupby(keys, dropna=False, sort=True)
    stats = grouped[metrics].agg(["mean", "std"])
    stats.columns = [f"{m}_{stat}" for m, stat in stats.columns]
    counts = [grouped["seed"].nunique().rename("n_seeds"), grouped["seed"].agg(seeds_text).rename("seeds"),
              grouped.size().rename("n_runs")]
    return pd.concat([*counts, stats], axis=1).reset_index()[columns]
