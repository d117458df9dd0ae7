"""Mean ± std over seeds: the one aggregation behind every summary table of :mod:`ferlib.analysis`."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

__all__ = ["seed_summary", "seeds_text", "mean_std_text", "mean_std_column", "format_seed_summary"]


def seeds_text(seeds) -> str:
    """``"0,1,2"``: the distinct seeds of a group, sorted (integral floats written as integers)."""
    values = sorted({float(x) for x in seeds if x == x})
    return ",".join(str(int(x)) if x.is_integer() else str(x) for x in values)


def mean_std_text(mean, std, *, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
    """``"63.2 ± 1.4"``: a mean over seeds and its std, both times ``scale`` (100: fractions as %); the std left
    out when missing or NaN (one seed), ``"–"`` for a missing mean. ``signed``: the mean with its sign, as a
    difference (``"+5.0 ± 1.0"``)."""
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean * scale:{'+' if signed else ''}.{digits}f}"
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


def mean_std_column(table, metric: str, *, scale: float = 100.0, digits: int = 1) -> list[str]:
    """:func:`mean_std_text` of every row of a :func:`seed_summary` table for ``metric`` (its ``<metric>_mean``
    and ``<metric>_std`` columns)."""
    return [mean_std_text(mu, sd, scale=scale, digits=digits)
            for mu, sd in zip(table[f"{metric}_mean"], table[f"{metric}_std"])]


def format_seed_summary(table, metrics: Sequence[str], *, scale: float | Mapping[str, float] = 1.0,
                        digits: int = 3) -> "object":
    """A readable copy of a :func:`seed_summary` table, to show in full (the CSV keeps the numbers).

    Parameters
    ----------
    table : a :func:`seed_summary` output (or one with the same ``<metric>_mean`` / ``<metric>_std`` columns).
    metrics : the metrics to show, in this order; those the table lacks are skipped.
    scale : one factor for every metric, or ``{metric: factor}`` (missing metrics: 1), e.g. 100 for %.
    digits : decimals.

    Returns
    -------
    pandas.DataFrame: the key columns (every column that is neither a statistic nor ``seeds`` / ``n_runs``) in
    display names (``method``, with its ``variant`` where it has several and marked as an oracle, which replaces
    those two columns; ``noise``; ``start``: :mod:`.labels`, :mod:`.style`), ``n_seeds``, then one
    ``"mean ± std"`` string column per metric.
    """
    from .labels import method_labels, start_label
    from .style import noise_label

    keys = [c for c in table.columns if c not in ("seeds", "n_runs") and not c.endswith(("_mean", "_std"))]
    out = table[keys].copy()
    if "method" in out:
        out["method"] = method_labels(out["method"], out.get("variant"), out.get("oracle"))
        out = out.drop(columns=[c for c in ("variant", "oracle") if c in out])
    for column, label in (("noise", noise_label), ("start", start_label)):
        if column in out:
            out[column] = [label(v) for v in out[column]]
    for m in metrics:
        if f"{m}_mean" in table:
            factor = scale.get(m, 1.0) if isinstance(scale, Mapping) else scale
            out[m] = mean_std_column(table, m, scale=factor, digits=digits)
    return out
