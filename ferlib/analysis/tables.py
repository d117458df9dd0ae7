"""Result tables: mean ± std summaries over seeds, their formatting, timings, per-class accuracy and
the scores of finished runs on other datasets (cross-dataset evaluation). The study's answer built on them (seed-
paired comparisons, the memorisation drop, per-class gains, the findings in words) is :mod:`.answer`."""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import rundir
from .labels import method_labels
from .runs import class_names_for, load_runs, run_start, start_name
from .seeds import mean_std_column, seed_summary
from .style import noise_label

__all__ = [
    "parse_noise", "summary_table", "format_summary", "timing_table", "per_class_table", "per_class_summary",
    "cross_eval_table", "cross_eval_summary", "format_cross_eval",
]


def parse_noise(spec: str) -> tuple[str, float]:
    """Split a noise spec into a protocol and its level, for grouping and plotting.

    ``"symmetric:0.3"`` -> ``("symmetric", 0.3)``; ``"imbalance:20+symmetric:0.3"`` ->
    ``("imbalance:20+symmetric", 0.3)`` (the level is the LAST step's parameter); ``"none"`` ->
    ``("none", 0.0)``; ``"annotator"`` -> ``("annotator", nan)``.
    """
    from ..noise import NoiseSpec

    parsed = NoiseSpec.parse(spec)
    last = parsed.steps[-1]
    text = str(parsed)
    if last.value is None:
        return text, (0.0 if last.protocol == "none" else float("nan"))
    return text.rsplit(":", 1)[0], float(last.value)


_SUMMARY_KEYS = ("dataset", "method", "variant", "recipe", "oracle", "protocol", "rate", "noise", "flags")
#: Run settings (``result.json`` fields) that also separate summary rows: runs differing in one are not averaged.
_SETTING_KEYS = ("train_subset", "epochs", "backbone.name", "backbone.weights", "image_size", "optimizer", "lr",
                 "batch_size", "selection")
_STAGES = ("last", "best")


def _variant(row) -> str:
    items = sorted((k.split(".", 1)[1], v) for k, v in row.items()
                   if k.startswith("method_options.") and not (isinstance(v, float) and math.isnan(v)))
    return ",".join(f"{k}={v}" for k, v in items)


def summary_table(results, *, metrics: Sequence[str] = ("acc", "mean_acc", "macro_f1"),
                  keys: Sequence[str] | None = None) -> "object":
    """Mean and standard deviation over seeds of each run setting's test metrics.

    Parameters
    ----------
    results : pandas.DataFrame, one row per run, as :func:`ferlib.rundir.collect_results` returns: columns
        ``method``, ``noise``, ``seed`` and ``last.<metric>`` (``best.<metric>`` too where present);
        ``oracle``, ``dataset``, ``best_epoch``, ``noise_rate`` (realised), ``time_per_epoch_s`` and
        ``method_options.<name>`` are used when present.
    metrics : metric names (``acc`` overall accuracy, ``mean_acc`` class-balanced accuracy, ``macro_f1``).
    keys : grouping columns; default those of ``dataset, method, variant, recipe, oracle, protocol, rate, noise,
        flags`` (a diverged or collapsed run, :func:`ferlib.metrics.health_flags`, is never averaged with
        healthy ones: it gets its own row, with the reason) and
        of the run settings ``train_subset, epochs, backbone.name, backbone.weights, image_size, optimizer, lr,
        batch_size, selection`` that exist (runs that differ in a setting are not averaged together: runs from
        a random start, ``backbone.weights`` None, and from pretrained weights get separate rows). ``variant`` is
        ``"k=v,..."`` of the method options ("" = the method's defaults); ``protocol`` and ``rate`` come from
        :func:`parse_noise`.

    Returns
    -------
    pandas.DataFrame, one row per setting, oracle rows last: the keys, ``n_seeds``, ``seeds`` (comma-joined),
    ``n_runs``, and for each ``<stage>.<metric>`` (stage ``last`` first: the primary number; then ``best``, the
    epoch picked on the validation split) plus ``best_epoch``, ``noise_rate`` and ``time_per_epoch_s``:
    ``<column>_mean`` and ``<column>_std`` (sample standard deviation over seeds, ddof = 1; NaN for a single
    seed). This is the table of ``summary.csv`` in a study's report (:mod:`ferlib.study.report`).
    """
    need = ["method", "noise", "seed"] + [f"last.{m}" for m in metrics]
    missing = [c for c in need if c not in results.columns]
    if missing:
        raise ValueError(f"results lacks column(s) {missing}; expected collect_results() output")
    df = results.copy()
    parsed = [parse_noise(s) for s in df["noise"]]
    df["protocol"] = [p for p, _ in parsed]
    df["rate"] = [r for _, r in parsed]
    df["variant"] = [_variant(r) for r in df.to_dict("records")]
    if "oracle" in df:
        df["oracle"] = [bool(v) and v == v for v in df["oracle"]]  # NaN (missing) -> False
    if "flags" in df:
        df["flags"] = df["flags"].fillna("").astype(str)  # runs that predate the flags count as healthy
    keys = [k for k in (keys or _SUMMARY_KEYS + _SETTING_KEYS) if k in df.columns]
    values = [f"{s}.{m}" for s in _STAGES for m in metrics if f"{s}.{m}" in df.columns]
    out = seed_summary(df, keys, values + ["best_epoch", "noise_rate", "time_per_epoch_s"])
    if "oracle" in out:  # oracle rows (upper bounds, not competitors) after the others, order kept
        out = out.sort_values("oracle", kind="stable").reset_index(drop=True)
    return out


def format_summary(table, *, metrics: Sequence[str] = ("acc", "mean_acc"), stages: Sequence[str] = _STAGES,
                   scale: float = 100.0, digits: int = 1) -> "object":
    """A readable copy of :func:`summary_table`: display names, ``"mean ± std"`` strings (in %).

    Returns
    -------
    pandas.DataFrame with ``method`` (:func:`~.labels.method_labels`: the display name, its option set in brackets
    where the method trained with several, an oracle marked), ``noise`` (:func:`~.style.noise_label`), ``start``
    (only when the table holds runs of more than one ``backbone.weights``: ``"random"`` for a random start, else
    the weights' name), ``n_seeds`` and one column per ``<stage>.<metric>`` that ``table`` has.
    """
    import pandas as pd

    out = pd.DataFrame(index=table.index)
    if "dataset" in table:
        out["dataset"] = table["dataset"]
    out["method"] = method_labels(table["method"], table.get("variant"), table.get("oracle"))
    out["noise"] = [noise_label(n) for n in table["noise"]]
    starts = [start_name(w) for w in table["backbone.weights"]] if "backbone.weights" in table else []
    if len(set(starts)) > 1:
        out["start"] = starts
    out["n_seeds"] = table["n_seeds"]
    for stage in stages:
        for m in metrics:
            col = f"{stage}.{m}"
            if f"{col}_mean" not in table:
                continue
            out[col] = mean_std_column(table, col, scale=scale, digits=digits)
    return out


def timing_table(results, *, baseline: str = "ce") -> "object":
    """Mean time per epoch of each method, and its ratio to the baseline's on the same device.

    Parameters
    ----------
    results : DataFrame of :func:`ferlib.rundir.collect_results` (``method``, ``time_per_epoch_s``,
        ``device`` and ``dataset`` used when present).
    baseline : method whose time is 1.0 (NaN ratios when it has no run on that device / dataset).

    Returns
    -------
    pandas.DataFrame: ``[dataset, device,] method, n_runs, time_per_epoch_s, ratio_to_<baseline>``.
    """
    keys = [k for k in ("dataset", "device") if k in results.columns]
    grouped = results.groupby(keys + ["method"], dropna=False)["time_per_epoch_s"]
    out = grouped.agg(["count", "mean"]).rename(columns={"count": "n_runs", "mean": "time_per_epoch_s"}).reset_index()
    base = out.loc[out["method"] == baseline, keys + ["time_per_epoch_s"]].rename(columns={"time_per_epoch_s": "_base"})
    if keys:
        out = out.merge(base, on=keys, how="left")
    else:
        out["_base"] = base["_base"].iloc[0] if len(base) else np.nan
    out[f"ratio_to_{baseline}"] = out["time_per_epoch_s"] / out.pop("_base")
    return out


def per_class_table(runs, *, stage: str = "last", split: str = "test") -> "object":
    """Per-class accuracy of each run (tidy), at the last or the best epoch.

    Returns
    -------
    pandas.DataFrame, one row per run and class: ``run_id, method, oracle, noise, start, seed, class, acc``
    (``start``: ``"random"`` or the ``backbone.weights`` the run started from; ``acc`` NaN for a class absent
    from the split).
    """
    import pandas as pd

    if stage not in _STAGES:
        raise ValueError(f"stage must be one of {_STAGES}, got {stage!r}")
    rows = []
    for run in load_runs(runs):
        if not run.history:
            continue
        if stage == "last":
            epoch = run.history[-1]
        else:
            epoch = next(h for h in run.history if h["epoch"] == run.result.get("best_epoch"))
        names = class_names_for(run)
        for name, acc in zip(names, epoch[split]["per_class_acc"]):
            rows.append({"run_id": run.run_id, "method": run.label, "oracle": bool(run.result.get("oracle")),
                         "noise": run.result.get("noise"),
                         "start": run_start(run),
                         "seed": run.result.get("seed"), "class": name,
                         "acc": float("nan") if acc is None else float(acc)})
    return pd.DataFrame(rows)


def per_class_summary(runs, *, stage: str = "last", split: str = "test") -> "object":
    """:func:`per_class_table` averaged over seeds: one row per (method, noise, start, class) with ``n_seeds``,
    ``seeds``, ``n_runs``, ``acc_mean`` and ``acc_std`` (ddof = 1); classes keep their canonical order."""
    table = per_class_table(runs, stage=stage, split=split)
    if table.empty:
        return table
    order = list(dict.fromkeys(table["class"]))
    out = seed_summary(table, ["method", "noise", "start", "class"], ["acc"])
    out["_order"] = out["class"].map(order.index)
    return out.sort_values(["noise", "start", "method", "_order"]).drop(columns="_order").reset_index(drop=True)


_CROSS_METRICS = ("acc", "mean_acc", "macro_f1")


def _run_folders(runs) -> list[Path]:
    """Finished run folders of a runs folder, of one run folder, or of a list of run folders / RunRecords."""
    if isinstance(runs, (str, os.PathLike)):
        path = Path(runs)
        return [path] if (path / rundir.RESULT).is_file() else rundir.finished_runs(path)
    return [Path(getattr(r, "path", r)) for r in runs]


def cross_eval_table(runs) -> "object":
    """The runs' scores on other datasets (``cross_eval.json``, :func:`ferlib.cross_eval.evaluate_run`), tidy.

    Parameters
    ----------
    runs : a runs folder (its finished runs), one run folder, or a list of run folders / RunRecords.

    Returns
    -------
    pandas.DataFrame, one row per run and target: ``run_id, dataset, method, oracle, noise, seed`` of the run,
    ``target`` (label), ``target_key`` (:meth:`ferlib.cross_eval.EvalTarget.key`), ``split``, ``n``
    (samples scored), ``n_excluded`` (left out: a class the run lacks), ``shared`` and ``masked`` (class names,
    comma-joined) and ``acc``, ``mean_acc``, ``macro_f1`` over the shared classes. Runs without scores add no row;
    an unreadable ``cross_eval.json`` is skipped with a :class:`ferlib.rundir.RunWarning` naming it.
    """
    import pandas as pd

    columns = ["run_id", "dataset", "method", "oracle", "noise", "seed", "target", "target_key", "split", "n",
               "n_excluded", "shared", "masked", *_CROSS_METRICS]
    rows = []
    for folder in _run_folders(runs):
        result = rundir.read_result(folder)
        try:
            scores = rundir.read_cross_eval(folder)
        except rundir.CorruptRunError as exc:
            warnings.warn(f"skipped the cross-dataset scores of {exc}", rundir.RunWarning, stacklevel=2)
            continue
        for key, e in scores.items():
            rows.append({"run_id": result.get("run_id", folder.name), "dataset": result.get("dataset"),
                         "method": result["method"], "oracle": bool(result.get("oracle")),
                         "noise": result.get("noise"), "seed": result.get("seed"), "target": e["target"],
                         "target_key": key, "split": e["split"], "n": e["n"], "n_excluded": e["n_excluded"],
                         "shared": ",".join(e["mapping"]["shared"]), "masked": ",".join(e["mapping"]["masked"]),
                         **{m: e[m] for m in _CROSS_METRICS}})
    return pd.DataFrame(rows, columns=columns)


def cross_eval_summary(runs) -> "object":
    """:func:`cross_eval_table` averaged over seeds: one row per (dataset, method, oracle, noise, target) with
    ``n_seeds``, ``n``, ``n_excluded``, ``masked`` and ``<metric>_mean`` / ``<metric>_std`` (ddof = 1; NaN for
    one seed) of ``acc``, ``mean_acc``, ``macro_f1``; oracle rows last."""
    table = cross_eval_table(runs)
    if table.empty:
        return table
    keys = ["dataset", "method", "oracle", "noise", "target_key"]
    first = table.groupby(keys, dropna=False, sort=True)[["target", "split", "n", "n_excluded", "masked"]].first()
    out = first.reset_index().merge(seed_summary(table, keys, _CROSS_METRICS), on=keys, how="left")
    return out.sort_values("oracle", kind="stable").reset_index(drop=True)


def format_cross_eval(summary, *, metrics: Sequence[str] = ("acc", "mean_acc"), scale: float = 100.0,
                      digits: int = 1) -> "object":
    """The cross-dataset table: one row per method and noise, one column per target and metric,
    ``"mean ± std"`` over seeds (in %), from :func:`cross_eval_summary`; display names of methods and noise
    settings (:func:`~.labels.method_labels`, :func:`~.style.noise_label`), oracle rows marked."""
    import pandas as pd

    if summary.empty:
        return pd.DataFrame()
    df = summary.assign(method=method_labels(summary["method"], oracle=summary["oracle"]),
                        noise=[noise_label(n) for n in summary["noise"]])
    for m in metrics:
        df[m] = mean_std_column(df, m, scale=scale, digits=digits)
    wide = df.pivot_table(index=["method", "noise"], columns="target", values=list(metrics), aggfunc="first",
                          sort=False)
    order = [(m, t) for t in dict.fromkeys(df["target"]) for m in metrics]
    wide = wide.reindex(columns=order)
    wide.columns = [f"{t} · {m}" for m, t in order]
    return wide.reset_index()
