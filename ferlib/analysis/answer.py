"""The study's answer, from finished runs: each method against a baseline seed by seed (paired t-test and a
verdict), the grid's start against the other (init contrast), each ablation variant against the full method, the
memorisation drop (peak against last test
epoch), per-class gains over the baseline and the findings in plain words."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import rundir
from .runs import run_start, start_name
from .labels import METRIC_NAMES, method_labels, start_label
from .seeds import mean_std_text, seed_summary
from .style import method_label, noise_label
from .tables import _SETTING_KEYS, _STAGES, _variant  # the run settings, stages and variant label summaries use

__all__ = [
    "PAIRED_METRICS", "paired_comparison", "format_paired", "init_contrast_table", "ablation_table",
    "ablation_comparison", "memorisation_table", "memorisation_summary", "class_gains", "findings_text",
]


# ----------------------------------------------------------------------------------- paired comparisons
#: Columns of a paired comparison (:func:`paired_comparison`, :func:`init_contrast_table`) beside its keys.
_PAIR_COLUMNS = ("n_pairs", "mean_diff", "std_diff", "wins", "p_value", "verdict")
_METRIC_WORDS = {"last.acc": "last-epoch accuracy", "last.mean_acc": "last-epoch mean (class-balanced) accuracy",
                 "best.acc": "accuracy at the epoch chosen on the validation split (early stopping)"}
#: What :func:`paired_comparison` compares by default: the primary (last-epoch) accuracy and mean accuracy, and
#: the accuracy at the validation-selected epoch, against which a method must beat early-stopped CE.
PAIRED_METRICS = ("last.acc", "last.mean_acc", "best.acc")


def _pairing_keys(df) -> list[str]:
    """The columns two runs must agree on to be compared seed by seed (beside method and seed): ``dataset``,
    ``noise``, ``start`` and the run settings of :func:`summary_table` (``backbone.weights`` as ``start``)."""
    return [k for k in ("dataset", "noise", "start", *_SETTING_KEYS) if k in df.columns and k != "backbone.weights"]


def _comparable(results):
    """A copy of ``results`` with the columns comparisons group by: ``start`` (``"random"`` or the
    ``backbone.weights`` name), ``variant`` (as in :func:`summary_table`) and ``oracle`` (bool; False where
    missing)."""
    weights = results["backbone.weights"] if "backbone.weights" in results else [None] * len(results)
    oracle = results["oracle"] if "oracle" in results else [False] * len(results)
    return results.assign(start=[start_name(w) for w in weights],
                          variant=[_variant(r) for r in results.to_dict("records")],
                          oracle=np.array([bool(v) and v == v for v in oracle], dtype=bool))  # NaN -> False


def _pair_stats(x: np.ndarray, y: np.ndarray) -> dict:
    """Statistics of the paired differences ``x - y`` (one entry per seed): see :func:`paired_comparison`."""
    from scipy import stats

    d = x - y
    n = len(d)
    with warnings.catch_warnings():  # near-identical differences: scipy warns about precision, the p stands
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_rel(x, y).pvalue) if n >= 2 else float("nan")
    same_sign = n > 0 and (bool(np.all(d > 0)) or bool(np.all(d < 0)))
    if same_sign and n >= 3 and p < 0.05:
        verdict = "supported gain" if d[0] > 0 else "supported loss"
    elif same_sign and n < 3:
        verdict = f"same sign in every seed, too few seeds ({n} < 3)"
    elif same_sign:
        verdict = "same sign in every seed, not significant"
    else:
        verdict = "no consistent difference"
    return {"n_pairs": n, "mean_diff": float(d.mean()) if n else float("nan"),
            "std_diff": float(d.std(ddof=1)) if n >= 2 else float("nan"), "wins": int(np.sum(d > 0)),
            "p_value": p, "verdict": verdict}


def _paired(a, b, *, by: Sequence[str], match: Sequence[str], metrics: Sequence[str], names: tuple[str, str]):
    """``a``'s runs minus ``b``'s runs of the same seed, summarised per group of ``by`` and metric.

    Parameters
    ----------
    a, b : DataFrames of runs with ``seed``, the metrics and the key columns (``a``: ``by``; ``b``: ``match``).
        Several runs of one group and seed are averaged first (a rerun never counts as a second pair).
    by : the groups of the output (``match`` plus, e.g., ``method``).
    match : the columns an ``a`` run and a ``b`` run must share, beside ``seed``, to be paired.
    names : ``(name_a, name_b)``, the prefixes of the mean and std columns.

    Returns
    -------
    pandas.DataFrame, one row per group and metric with at least one pair: ``by``, ``metric``,
    ``<name_a>_mean``, ``<name_a>_std``, ``<name_b>_mean``, ``<name_b>_std`` (over the paired seeds, ddof 1) and
    the columns of :func:`_pair_stats`.
    """
    import pandas as pd

    by, match, metrics = list(by), list(match), list(metrics)
    left = a.groupby(by + ["seed"], dropna=False)[metrics].mean().reset_index()
    right = b.groupby(match + ["seed"], dropna=False)[metrics].mean().reset_index()
    both = left.merge(right, on=match + ["seed"], suffixes=("", "_b"))
    rows = []
    for group, g in both.groupby(by, dropna=False, sort=True):
        for m in metrics:
            x, y = g[m].to_numpy(float), g[f"{m}_b"].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)
            x, y = x[ok], y[ok]
            if not len(x):
                continue
            rows.append({**dict(zip(by, group)), "metric": m,
                         f"{names[0]}_mean": x.mean(), f"{names[0]}_std": x.std(ddof=1) if len(x) > 1 else np.nan,
                         f"{names[1]}_mean": y.mean(), f"{names[1]}_std": y.std(ddof=1) if len(y) > 1 else np.nan,
                         **_pair_stats(x, y)})
    columns = [*by, "metric", *(f"{n}_{s}" for n in names for s in ("mean", "std")), *_PAIR_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


def paired_comparison(results, *, baseline: str = "ce",
                      metrics: Sequence[str] = PAIRED_METRICS) -> "object":
    """Each method against the baseline, seed by seed: the differences, their paired t-test and a verdict.

    Seed ``s`` also seeds the noise, so at one noise and seed every method sees the same flipped labels: a
    method's run is compared with the baseline's run of the SAME seed (and the same dataset, noise, start and
    run settings of :func:`summary_table`); seeds only one of them has are left out.

    Parameters
    ----------
    results : DataFrame of :func:`ferlib.rundir.collect_results`: ``method``, ``noise``, ``seed``, the metrics;
        ``oracle``, ``dataset``, ``backbone.weights`` and the run settings used when present.
    baseline : the method every other one is compared with; its runs must all have the same method options
        (one ``variant``), else ValueError.
    metrics : result columns to compare (fractions; differences are in the same unit).

    Returns
    -------
    pandas.DataFrame, one row per non-baseline, non-oracle method (and variant), setting and metric with at least
    one pair: ``method``, ``variant`` (``"k=v,..."`` of the method options, as in :func:`summary_table`),
    ``dataset``, ``noise``, ``start`` (``"random"`` or the ``backbone.weights`` name), the run settings present,
    ``metric``, ``method_mean`` / ``method_std`` and ``baseline_mean`` / ``baseline_std`` (over the
    paired seeds), and

    - ``n_pairs``: seeds both have; ``mean_diff``, ``std_diff``: mean and sample std (ddof 1; NaN for one pair)
      of method minus baseline; ``wins``: seeds where the method is higher;
    - ``p_value``: paired t-test (``scipy.stats.ttest_rel``), two-sided; NaN for fewer than 2 pairs;
    - ``verdict``: ``"supported gain"`` / ``"supported loss"`` when every pair has the same sign, there are at
      least 3 pairs and p < 0.05 (with 3 seeds that needs |t| > 4.30, the 97.5% quantile of Student's t with 2
      degrees of freedom: the mean difference over four times its standard error);
      ``"same sign in every seed, too few seeds (n < 3)"`` when every pair has the same sign but there are
      fewer than 3; ``"same sign in every seed, not significant"`` when they do but p >= 0.05;
      ``"no consistent difference"`` otherwise (signs differ, or a difference is 0).
    """
    for col in ("method", "noise", "seed", *metrics):
        if col not in results.columns:
            raise ValueError(f"results lacks column {col!r}; expected collect_results() output")
    df = _comparable(results)
    keys = _pairing_keys(df)
    base = df[(df["method"] == baseline) & ~df["oracle"]]
    variants = sorted(set(base["variant"]))
    if len(variants) > 1:
        raise ValueError(f"baseline {baseline!r} has runs of several variants {variants} (method options): the "
                         "comparison needs one; pass the runs of one variant (e.g. a grid folder, not its ablations)")
    others = df[(df["method"] != baseline) & ~df["oracle"]]
    return _paired(others, base, by=["method", "variant", *keys], match=keys, metrics=metrics,
                   names=("method", "baseline"))


def format_paired(comparison, *, scale: float = 100.0) -> "object":
    """A readable copy of :func:`paired_comparison` (or :func:`init_contrast_table`).

    Returns
    -------
    pandas.DataFrame, one row per row of ``comparison``, in display names (:mod:`.labels`, :mod:`.style`):
    ``method`` (its variant in brackets where it has several), ``noise``, ``start`` (only when the rows hold
    several starts, or ``"<grid start> vs <init start>"`` for the init contrast), ``metric``, ``n pairs``,
    ``mean diff ± std`` (in points: times ``scale``, signed), ``wins`` (``"2 of 3"``), ``p`` (two significant
    digits; blank for one pair) and ``verdict``; the run settings that were only pairing keys are left out.
    """
    import pandas as pd

    records = comparison.to_dict("records")
    labels = method_labels([r.get("method", "") for r in records], [r.get("variant", "") for r in records],
                           [r.get("oracle", False) for r in records])
    rows = [{"method": label, "noise": noise_label(r.get("noise")),
             "metric": METRIC_NAMES.get(r["metric"], r["metric"]), "n pairs": r["n_pairs"],
             "start": start_label(r.get("start", "")) + (f" vs {start_label(r['init_start'])}"
                                                         if r.get("init_start") else ""),
             "mean diff ± std": mean_std_text(r["mean_diff"], r["std_diff"], scale=scale, signed=True),
             "wins": f"{r['wins']} of {r['n_pairs']}",
             "p": "" if not np.isfinite(r["p_value"]) else f"{r['p_value']:.2g}", "verdict": r["verdict"]}
            for label, r in zip(labels, records)]
    out = pd.DataFrame(rows, columns=["method", "noise", "start", "metric", "n pairs", "mean diff ± std", "wins",
                                      "p", "verdict"])
    return out if out["start"].nunique() > 1 or "init_start" in comparison else out.drop(columns="start")


def init_contrast_table(runs_dir: str | os.PathLike, *,
                        metrics: Sequence[str] = PAIRED_METRICS) -> "object":
    """The grid's runs against the same methods trained from the other start (``<runs_dir>/init``), by seed.

    A study's ``init_contrast`` (:class:`ferlib.study.StudySpec`) trains some methods at some noises and every
    seed again from other weights (random init in place of the self-supervised start, or the reverse). Each of
    those runs is paired with the grid run of the same method, noise, seed and run settings; the pairs are
    summarised as in :func:`paired_comparison` (same statistics and verdict rules), grid minus init.

    Returns
    -------
    pandas.DataFrame, one row per method, noise (and setting) and metric with at least one pair: ``method``,
    ``variant``, ``oracle``, ``dataset``, ``noise``, the run settings present, ``start`` (the grid's:
    ``"random"`` or the ``backbone.weights`` name), ``init_start`` (the init runs'), ``metric``, ``grid_mean`` /
    ``grid_std`` and ``init_mean`` / ``init_std`` (over the paired seeds), ``n_pairs``, ``mean_diff`` (grid minus
    init), ``std_diff``, ``wins`` (seeds where the grid's start is higher), ``p_value``, ``verdict``. Empty when
    ``<runs_dir>/init`` holds no finished run.
    """
    import pandas as pd

    from ..rundir import collect_results

    need = ["method", "noise", "seed", *metrics]
    grid, init = (_comparable(f.reindex(columns=list(dict.fromkeys([*need, *f.columns]))))
                  for f in (collect_results(runs_dir), collect_results(Path(runs_dir) / "init")))
    keys = ["method", "variant", "oracle", *(k for k in _pairing_keys(grid) if k != "start" and k in init.columns)]
    options = {"by": [*keys, "start"], "match": keys, "metrics": metrics, "names": ("grid", "init")}
    parts = [_paired(grid, init[init["start"] == s], **options).assign(init_start=s)
             for s in dict.fromkeys(init["start"])]
    out = pd.concat(parts, ignore_index=True) if parts else _paired(grid, init, **options).assign(init_start=None)
    order = list(out.columns[:-1])
    order.insert(order.index("start") + 1, "init_start")
    return out[order]


# ----------------------------------------------------------------------------------- ablations
_ABLATION_COLUMNS = ("method", "variant", "cell", "noise", "seed", "options", "run_id", "oracle",
                     *(f"{st}.{m}" for st in _STAGES for m in ("acc", "mean_acc", "macro_f1")), "time_per_epoch_s")


def _ablation_runs(runs_dir: str | os.PathLike):
    """The runs of a study's ablation cells and of the full method they are compared with.

    Returns ``(variants, full, keys)``: comparable frames (:func:`_comparable`) of the variant runs under
    ``<runs_dir>/ablations`` and of the full method's runs, which are the ablation cells of variant ``full``
    there (trained with ``ablation_train``) and the grid's runs of the ablated methods directly under
    ``runs_dir`` (no variant); ``variant`` is the cell's variant name (``full`` for the grid's runs), ``options``
    the ``"k=v,..."`` of the method options, ``cell`` ``ablation`` or ``grid``; ``keys`` are the pairing keys
    beside ``method`` and ``seed`` (:func:`_pairing_keys`)."""
    import pandas as pd

    from ..rundir import collect_results

    need = ["method", "variant", "noise", "seed", "run_id", *_ABLATION_COLUMNS[7:]]
    cells, grid = (f.reindex(columns=list(dict.fromkeys([*need, *f.columns])))
                   for f in (collect_results(Path(runs_dir) / "ablations"), collect_results(runs_dir)))
    cells = cells[cells["variant"].notna() & (cells["variant"] != "")].assign(cell="ablation")
    grid = grid[grid["method"].isin(set(cells["method"])) & (grid["variant"].isna() | (grid["variant"] == ""))]
    both = pd.concat([cells, grid.assign(variant="full", cell="grid")], ignore_index=True)
    frame = _comparable(both).assign(options=lambda f: f["variant"], variant=both["variant"].to_numpy())
    full = frame["variant"] == "full"
    return frame[~full], frame[full], _pairing_keys(frame)


def ablation_table(runs_dir: str | os.PathLike) -> "object":
    """Each ablation variant's runs beside the full method's runs they are compared with, run by run.

    The study trains every variant as a cell under ``<runs_dir>/ablations``
    (:meth:`ferlib.study.StudySpec.ablation_specs`); the full method is the grid's run of the same method, noise
    and seed, or an ablation cell of variant ``full`` where the ablation cells train otherwise than the grid.

    Parameters
    ----------
    runs_dir : a study's runs folder (its grid runs directly under it, the ablation cells in ``ablations/``).

    Returns
    -------
    pandas.DataFrame, one row per variant run and per full-method run paired with one (same method, noise, seed
    and run settings): ``method, variant`` (``"full"`` or the variant name), ``cell`` (``grid`` or
    ``ablation``), ``noise``, ``seed``, ``options`` (``"k=v,..."`` of the method options), ``run_id``,
    ``oracle``, ``last.acc``, ``last.mean_acc``, ``last.macro_f1``, ``best.*`` alike, ``time_per_epoch_s``, and
    ``delta_acc`` / ``delta_mean_acc`` (last epoch, the run minus the full method of its method, noise, seed and
    settings, averaged over its runs; NaN where there is none). Full rows first within a method, noise and seed.
    """
    import pandas as pd

    variants, full, keys = _ablation_runs(runs_dir)
    on = ["method", *keys, "seed"]
    paired = full.merge(variants[on].drop_duplicates(), on=on)
    table = pd.concat([paired, variants], ignore_index=True)
    mean = full.groupby(on, dropna=False)[["last.acc", "last.mean_acc"]].mean().reset_index()
    table = table.merge(mean, on=on, how="left", suffixes=("", "_full"))
    for m in ("acc", "mean_acc"):
        table[f"delta_{m}"] = table[f"last.{m}"].astype(float) - table[f"last.{m}_full"].astype(float)
    table["_full"] = table["variant"] == "full"
    table = table.sort_values(["method", "noise", "seed", "_full"], ascending=[True, True, True, False],
                              kind="stable")
    return table[[*_ABLATION_COLUMNS, "delta_acc", "delta_mean_acc"]].reset_index(drop=True)


def ablation_comparison(runs_dir: str | os.PathLike, *, metrics: Sequence[str] = PAIRED_METRICS) -> "object":
    """Each ablation variant against the full method, seed by seed, as :func:`paired_comparison` compares a
    method with its baseline (same statistics and verdict rule): variant minus full.

    Parameters
    ----------
    runs_dir : a study's runs folder; the runs are those of :func:`ablation_table`.
    metrics : result columns to compare.

    Returns
    -------
    pandas.DataFrame, one row per method, variant, setting (``dataset``, ``noise``, ``start`` and the run
    settings present) and metric with at least one pair: ``metric``, ``variant_mean`` / ``variant_std`` and
    ``full_mean`` / ``full_std`` over the paired seeds, ``n_pairs``, ``mean_diff`` (variant minus full; negative:
    switching the component off costs accuracy, so the component carries part of the method's gain),
    ``std_diff``, ``wins`` (seeds where the variant is higher), ``p_value`` and ``verdict``
    (``"supported loss"`` for a variant means the component it removes is supported as helping).
    """
    variants, full, keys = _ablation_runs(runs_dir)
    return _paired(variants, full, by=["method", "variant", *keys], match=["method", *keys], metrics=metrics,
                   names=("variant", "full"))


# ----------------------------------------------------------------------------------- memorisation
_MEMORISATION_COLUMNS = ("run_id", "method", "variant", "oracle", "noise", "seed", "start", "peak_test_acc",
                         "peak_epoch", "last_test_acc", "drop", "last_train_loss")


def memorisation_table(runs_dir: str | os.PathLike) -> "object":
    """How much each run loses between its best test epoch and its last: the memorisation drop.

    A network trained on noisy labels first fits the labels that agree with the image and later memorises the
    flipped ones; its test accuracy then peaks and falls. The drop (peak minus last test accuracy) of plain
    cross-entropy is the sign that a profile reaches that regime; a noise-robust method should drop less. The
    peak is descriptive only, read off ``epochs.csv`` after the run: it never selects a model (the primary
    number is the last epoch's; ``best`` in ``result.json`` is picked on the validation split).

    Parameters
    ----------
    runs_dir : a runs folder; the finished run folders directly under it are read (those whose ``result.json``
        passes :func:`ferlib.rundir.read_result`, as in :func:`ferlib.rundir.finished_runs`; nested folders such
        as ``init/`` and ``cleanlab/`` are runs folders of their own). A run whose ``epochs.csv`` is missing or
        unreadable is skipped with a :class:`ferlib.rundir.RunWarning` naming it.

    Returns
    -------
    pandas.DataFrame, one row per run: ``run_id, method``, ``variant`` (``"k=v,..."`` of the method options, as in
    :func:`summary_table`), ``oracle, noise, seed``, ``start`` (``"random"`` or the ``backbone.weights`` name),
    ``peak_test_acc`` (max of ``test_acc`` over epochs), ``peak_epoch`` (the first epoch reaching it),
    ``last_test_acc`` (``test_acc`` of the last epoch), ``drop`` (peak - last, >= 0) and ``last_train_loss``.
    Accuracies are fractions.
    """
    import pandas as pd

    from ..results import flatten

    rows = []
    for folder in rundir.run_folders(runs_dir):
        try:
            result = rundir.read_result(folder)
        except rundir.CorruptRunError:  # left out, as rundir.finished_runs does; rundir.problems lists it
            continue
        try:
            epochs = pd.read_csv(folder / rundir.EPOCHS_CSV).sort_values("epoch")
            peak = epochs["test_acc"].idxmax()
        except (OSError, ValueError, KeyError) as exc:  # missing, unparsable, empty, or without the columns
            warnings.warn(f"skipped {folder / rundir.EPOCHS_CSV}: {type(exc).__name__}: {exc}", rundir.RunWarning,
                          stacklevel=2)
            continue
        last = epochs.iloc[-1]
        rows.append({"run_id": result.get("run_id", folder.name), "method": result["method"],
                     "variant": _variant(flatten({"method_options": result.get("method_options") or {}})),
                     "oracle": bool(result.get("oracle")), "noise": result.get("noise"), "seed": result.get("seed"),
                     "start": run_start(result),
                     "peak_test_acc": float(epochs.at[peak, "test_acc"]), "peak_epoch": int(epochs.at[peak, "epoch"]),
                     "last_test_acc": float(last["test_acc"]),
                     "drop": float(epochs.at[peak, "test_acc"] - last["test_acc"]),
                     "last_train_loss": float(last["train_loss"])})
    return pd.DataFrame(rows, columns=_MEMORISATION_COLUMNS)


def memorisation_summary(table) -> "object":
    """:func:`memorisation_table` over seeds: one row per (method, variant, oracle, noise, start) with ``n_seeds``,
    ``n_runs`` (more runs than seeds: runs of other settings share the folder and are averaged too) and the
    ``<column>_mean`` / ``<column>_std`` (ddof 1; NaN for one run) of ``peak_test_acc``, ``peak_epoch``,
    ``last_test_acc``, ``drop`` and ``last_train_loss``; oracle rows last."""
    out = seed_summary(table, ["method", "variant", "oracle", "noise", "start"],
                       ["peak_test_acc", "peak_epoch", "last_test_acc", "drop", "last_train_loss"])
    return out.sort_values("oracle", kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------- per-class gains
def class_gains(per_class, *, baseline: str = "ce", rare: Sequence[str] = ("contempt", "disgust", "fear")) -> "object":
    """Each method's per-class test accuracy minus the baseline's at the same noise and start.

    Parameters
    ----------
    per_class : :func:`per_class_summary`'s output (``method``, ``noise``, ``start``, ``class``, ``acc_mean``,
        ``n_seeds``). Oracle methods (labelled ``"<method> (oracle)"`` there) are kept: their gains are upper
        bounds.
    baseline : the method label every other one is compared with.
    rare : the classes flagged ``rare``; the default is FERPlus's three smallest classes, each under 3% of its
        train labels (plurality of the votes: contempt and disgust about 0.6% each, fear about 2.3%).

    The gains are differences of means over seeds, not paired by seed.

    Returns
    -------
    pandas.DataFrame, one row per non-baseline method, noise, start and class with a baseline row:
    ``method, noise, start, class, rare`` (bool), ``acc_mean``, ``baseline_acc_mean``, ``gain`` (the difference,
    a fraction), ``n_seeds`` and ``baseline_n_seeds``; classes in their canonical order.
    """
    columns = ["method", "noise", "start", "class", "rare", "acc_mean", "baseline_acc_mean", "gain", "n_seeds",
               "baseline_n_seeds"]
    if per_class.empty:
        return per_class.reindex(columns=columns)
    keys = ["noise", "start", "class"]
    base = per_class.loc[per_class["method"] == baseline, [*keys, "acc_mean", "n_seeds"]]
    out = per_class[per_class["method"] != baseline].merge(base, on=keys, suffixes=("", "_baseline"))
    out = out.rename(columns={"acc_mean_baseline": "baseline_acc_mean", "n_seeds_baseline": "baseline_n_seeds"})
    out["gain"] = out["acc_mean"] - out["baseline_acc_mean"]
    out["rare"] = out["class"].isin(list(rare))
    return out[columns].reset_index(drop=True)


# ----------------------------------------------------------------------------------- findings in words
def findings_text(summary, comparison, memorisation, *, baseline: str = "ce") -> list[str]:
    """The study's answer in plain sentences, each carrying its numbers.

    Parameters
    ----------
    summary : :func:`summary_table` of the runs (what was trained: methods, noises, seeds, oracles).
    comparison : :func:`paired_comparison` against ``baseline`` (its verdicts decide what is called supported).
    memorisation : :func:`memorisation_summary` of the runs (the baseline's drop from its peak test epoch to its
        last, per noise).

    Returns
    -------
    list of str: what was compared; per noise (and start), the baseline's peak and last test accuracy and the
    drop between them; per metric, the supported gains and losses over the baseline (mean difference in points,
    pairs, p) and an explicit list of the differences the data does not support; the rule behind the verdicts.
    Accuracies are in %, differences in percentage points.
    """
    lines = []
    base = method_label(baseline)
    if len(summary):
        oracle = summary["oracle"].astype(bool) if "oracle" in summary else np.zeros(len(summary), bool)
        seeds = sorted({x for text in summary["seeds"] for x in text.split(",") if x}, key=float)
        lines.append(f"{_count(int(summary['n_runs'].sum()), 'finished run')}: "
                     f"{_listing(map(method_label, summary.loc[~oracle, 'method']))} at noise "
                     f"{_listing(map(noise_label, summary['noise']))}, "
                     f"seed{'' if len(seeds) == 1 else 's'} {', '.join(seeds)}."
                     + (f" Not compared (upper bounds: they read the human votes): "
                        f"{_listing(map(method_label, summary.loc[oracle, 'method']))}." if oracle.any() else ""))
    for r in memorisation[(memorisation["method"] == baseline) & ~memorisation["oracle"].astype(bool)].to_dict(
            "records"):
        lines.append(f"At {noise_label(r['noise'])}{_start_words(r['start'], memorisation)}, {base}'s test accuracy "
                     "peaks at "
                     f"{100 * r['peak_test_acc_mean']:.1f}% at epoch {r['peak_epoch_mean']:.0f} and ends at "
                     f"{100 * r['last_test_acc_mean']:.1f}% at the last epoch (means over "
                     f"{_count(r['n_runs'], 'run')}): a drop of {mean_std_text(r['drop_mean'], r['drop_std'])} points.")
    if comparison.empty:
        lines.append(f"No method has runs paired with {base}'s on the same seed: nothing is compared.")
        return lines
    labels = dict(zip(zip(comparison["method"], comparison["variant"]),
                      method_labels(comparison["method"], comparison["variant"])))
    for metric, rows in comparison.groupby("metric", sort=False):
        words = _METRIC_WORDS.get(metric, metric)
        found = {v: [_pair_words(r, comparison, labels) for r in rows[rows["verdict"] == v].to_dict("records")]
                 for v in ("supported gain", "supported loss")}
        lines.append(f"{words[0].upper()}{words[1:]} over {base}: supported gains: "
                     f"{'; '.join(found['supported gain']) or 'none'}; supported losses: "
                     f"{'; '.join(found['supported loss']) or 'none'}.")
        unsupported = rows[~rows["verdict"].str.startswith("supported")]
        rest = [_pair_words(r, comparison, labels) for r in unsupported.to_dict("records")]
        if rest:
            lines.append(f"Not supported by the data ({words}): {'; '.join(rest)}.")
    lines.append("A difference is called supported when it has the same sign in every seed, there are at least 3 "
                 "seeds, and the paired t-test over seeds gives p < 0.05 (with 3 seeds: |t| > 4.30).")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _listing(values) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values))


def _start_words(start: str, table) -> str:
    """``" (random start)"`` when ``table`` holds more than one start, else nothing."""
    return f" ({start_label(start)} start)" if table["start"].nunique() > 1 else ""


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _pair_words(row: dict, comparison, labels: dict) -> str:
    """``"NLA at real annotator: +1.2 points, higher in 3 of 3 seeds, p = 0.012"`` of a :func:`paired_comparison`
    row; ``labels`` maps ``(method, variant)`` to its display label."""
    p = "" if not np.isfinite(row["p_value"]) else f", {_p_text(row['p_value'])}"
    method = labels[(row["method"], row["variant"])]
    return (f"{method} at {noise_label(row['noise'])}{_start_words(row['start'], comparison)}: "
            f"{100 * row['mean_diff']:+.1f} points, higher in {row['wins']} of {_count(row['n_pairs'], 'seed')}{p}")
