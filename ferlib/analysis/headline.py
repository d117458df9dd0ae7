"""What a study's index opens with: its setting in a few lines, the findings as a handful of plain sentences
generated from the verdicts of :func:`~ferlib.analysis.answer.paired_comparison`, the headline table and the
headline figure. Display names come from :mod:`.style` alone."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .labels import method_labels
from .seeds import mean_std_text
from .style import REFERENCE_STYLE, method_label, method_style, noise_label
from .tables import _SETTING_KEYS, _variant

__all__ = ["HEADLINE_METRICS", "main_setting", "labelled_runs", "headline_table", "headline_findings",
           "ablation_findings", "study_setting", "plot_headline"]

#: The headline's metrics, in its column order.
HEADLINE_METRICS = ("last.acc", "best.acc", "last.mean_acc")
#: Display names of backbones (timm's name otherwise).
_BACKBONE_NAMES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50"}
#: What the noise settings without a rate are, in the Setting box.
_NOISE_WORDS = {"annotator": " (one annotator's vote per face)",
                "annotator_matched": " (the real annotator's class transitions, drawn regardless of the face)"}
#: What a published FERPlus number is, for the sentence that says why a study's numbers are lower.
_PAPERS = {"ferplus": "the papers' ~88% on FERPlus (ResNet-18s pretrained on the MS-Celeb-1M faces, trained on "
                      "all 28k train faces at 224 px)"}


# ----------------------------------------------------------------------------------- the runs, labelled
def main_setting(results):
    """The runs of the setting most runs share (the run settings of :func:`~.tables.summary_table`: epochs,
    train subset, backbone, image size, optimiser ...), so that the headline never averages runs trained
    otherwise; returns ``(those runs, the number left out)``. A runs folder holds other settings when a study
    was run again with other settings into it."""
    keys = [k for k in _SETTING_KEYS if k in results.columns]
    if not keys or not len(results):
        return results, 0
    setting = results[keys].astype(str).apply(tuple, axis=1)
    main = setting.value_counts(sort=True).index[0]
    keep = (setting == main).to_numpy()
    return results[keep], int((~keep).sum())


def labelled_runs(results, *, baseline: str = "ce"):
    """``results`` (:func:`ferlib.rundir.collect_results`) with the columns the headline groups by: ``label``
    (:func:`~.labels.method_labels`: a method's option set in brackets only when it trained with several),
    ``kind`` (``method``; ``oracle``: reads the human votes, never the noisy labels; ``control``: the baseline on
    the clean labels, noise ``none``) and ``oracle`` as bool."""
    df = results.copy()
    df["oracle"] = [bool(v) and v == v for v in df["oracle"]] if "oracle" in df else False
    df["variant"] = [_variant(r) for r in df.to_dict("records")]
    df["label"] = method_labels(df["method"], df["variant"], df["oracle"])
    df["kind"] = np.where(df["oracle"], "oracle",
                          np.where((df["noise"] == "none") & (df["method"] == baseline), "control", "method"))
    return df


def _noises(df, order: Sequence[str] = ()) -> list[str]:
    """The noise settings the methods were compared at (``none`` left out): those of ``order`` first, in its order
    (a study's grid), then the others as the runs list them."""
    present = set(df["noise"])
    return [n for n in dict.fromkeys([*order, *df["noise"]]) if n != "none" and n in present]


# ----------------------------------------------------------------------------------- the table
def headline_table(results, *, baseline: str = "ce", metrics: Sequence[str] = HEADLINE_METRICS,
                   noise_order: Sequence[str] = ()):
    """The headline: each method's test accuracy, ``"mean ± std"`` over seeds in % (1 decimal), per metric and
    noise setting.

    Returns
    -------
    pandas.DataFrame, one row per method label (the baseline first, the others by name, then the control and the
    oracle): ``method``, ``kind`` (:func:`labelled_runs`), ``runs`` and one column per metric and noise, named
    ``"<metric> | <noise>"`` (noises in ``noise_order`` first). The control (the baseline on the clean labels)
    and the oracle (which never reads the noisy labels) are one row each, every noise column holding the same
    value: the mean over all their runs.
    """
    import pandas as pd

    df = labelled_runs(results, baseline=baseline)
    noises = _noises(df, noise_order)
    metrics = [m for m in metrics if m in df]
    rows = []
    for (kind, label), runs in df.groupby(["kind", "label"], sort=False):
        row = {"method": label if kind != "control" else f"{label} on the clean labels", "kind": kind,
               "runs": len(runs)}
        for m in metrics:
            for n in noises:
                pick = runs if kind != "method" else runs[runs["noise"] == n]
                values = pick[m].to_numpy(float)
                row[f"{m} | {n}"] = (mean_std_text(values.mean(), values.std(ddof=1) if len(values) > 1 else None)
                                     if len(values) else "")
        rows.append(row)
    order = {"method": 1, "control": 2, "oracle": 3}
    base = method_label(baseline)
    rows.sort(key=lambda r: (order[r["kind"]], r["method"] != base, r["method"].lower()))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- the findings
_SENTENCE_METRICS = {"last.acc": "At the last epoch", "best.acc": "Against early-stopped {b} (every run at the "
                     "epoch its validation accuracy chose)", "last.mean_acc": "In mean (class-balanced) accuracy "
                     "at the last epoch"}


def _grouped(rows, labels: dict[str, str], noises: list[str]) -> str:
    """Supported pairs by method: ``"NLA at every noise setting (+3.1 to +3.8 points); SCN at real annotator
    (+3.8) and synthetic twin (+2.8)"``."""
    parts = []
    for method, group in rows.groupby("method", sort=False):
        d = 100 * group["mean_diff"]
        if set(group["noise"]) >= set(noises) and len(noises) > 1:
            where = "every noise setting" + (f" ({d.min():+.1f} to {d.max():+.1f} points)" if len(d) > 1 else "")
        else:
            where = " and ".join(f"{noise_label(n)} ({x:+.1f})" for n, x in zip(group["noise"], d))
        parts.append(f"{labels[method]} at {where}")
    return "; ".join(parts)


def _evidence(row: dict) -> str:
    """``"(+2.7 points, higher in all 3 seeds, p = 0.052)"`` of a paired comparison's row."""
    n, wins, d = int(row["n_pairs"]), int(row["wins"]), 100 * row["mean_diff"]
    seeds = (f"higher in all {n} seeds" if wins == n else f"lower in all {n} seeds" if wins == 0 and d < 0
             else f"higher in {wins} of {n} seeds")
    p = f", p = {row['p_value']:.3f}" if math.isfinite(row["p_value"]) else ""
    return f"({d:+.1f} points, {seeds}{p})"


def _pair(row: dict, labels: dict[str, str]) -> str:
    """``"GCE at real annotator (+2.7 points, higher in all 3 seeds, p = 0.052)"``."""
    return f"{labels[row['method']]} at {noise_label(row['noise'])} {_evidence(row)}"


def _range(gains) -> str:
    return (f"supported gains, {100 * gains['mean_diff'].min():+.1f} to {100 * gains['mean_diff'].max():+.1f} "
            "points")


def _metric_sentence(rows, metric: str, labels: dict[str, str], baseline: str, noises: list[str]) -> str:
    """One sentence of one metric's verdicts: how many method and noise pairs are supported gains over the
    baseline; when they are the majority, the range of their differences and each pair that is not supported (with
    its seeds and p), else the supported ones by method; the supported losses by method."""
    lead = _SENTENCE_METRICS.get(metric, f"In {metric}").format(b=baseline)
    gains = rows[rows["verdict"] == "supported gain"]
    losses = rows[rows["verdict"] == "supported loss"]
    rest = rows[rows["verdict"] != "supported gain"]
    total = len(rows)
    if not len(gains):
        text = f"no method and noise pair is a supported gain over {baseline} ({total} compared)"
    elif len(gains) == total == 1:
        text = f"{_pair(gains.iloc[0].to_dict(), labels)} is a supported gain over {baseline}"
    elif len(gains) == total:
        text = f"every method beats {baseline} at every noise setting ({_range(gains)})"
    elif len(gains) >= len(rest):
        others = rest[rest["verdict"] != "supported loss"]
        text = (f"{len(gains)} of {total} method and noise pairs beat {baseline} ({_range(gains)})"
                + (f"; not supported: {'; '.join(_pair(r, labels) for r in others.to_dict('records'))}"
                   if len(others) else ""))
    else:
        text = (f"{len(gains)} of {total} method and noise pairs beat {baseline} with support: "
                f"{_grouped(gains, labels, noises)}")
    if len(losses):
        text += f"; supported losses: {_grouped(losses, labels, noises)}"
    return f"{lead}, {text}."


def _contrast_sentence(rows, labels: dict[str, str], noise: str, other: str) -> str:
    """One noise against another for every method at the last epoch: the methods more (less) accurate under
    ``noise`` with support, by name with their differences, and the others with the range of their differences
    and p values."""
    def named(group) -> str:
        return ", ".join(f"{labels.get(r['method'], r['method'])} ({100 * r['mean_diff']:+.1f})"
                         for r in group.sort_values("mean_diff", ascending=False).to_dict("records"))

    supported = rows["verdict"].str.startswith("supported")
    gains, losses, rest = rows[supported & (rows["mean_diff"] > 0)], rows[supported & (rows["mean_diff"] < 0)], \
        rows[~supported]
    parts = [f"{len(gains)} of {len(rows)} methods are more accurate under the {noise_label(noise)} noise with support"
             + (f": {named(gains)} points" if len(gains) else "")]
    if len(losses):
        parts.append(f"less accurate with support: {named(losses)} points")
    if len(rest):
        d, p = 100 * rest["mean_diff"], rest["p_value"]
        parts.append(f"not supported: {', '.join(labels.get(m, m) for m in rest['method'])} ("
                     + (f"{d.min():+.1f} to {d.max():+.1f} points" if len(rest) > 1 else f"{d.iloc[0]:+.1f} points")
                     + (f", p = {p.min():.3f} to {p.max():.3f}" if len(rest) > 1 and p.notna().all() else
                        f", p = {p.iloc[0]:.3f}" if p.notna().all() else "") + ")")
    lead = f"{noise_label(noise)[0].upper()}{noise_label(noise)[1:]} noise against its {noise_label(other)}"
    return f"{lead}{_NOISE_WORDS.get(other, '')}, at the last epoch: {'; '.join(parts)}."


def headline_findings(results, comparison, memorisation, *, baseline: str = "ce", noise_order: Sequence[str] = (),
                      contrast=None, contrast_noises: tuple[str, str] = ("annotator", "annotator_matched")
                      ) -> list[str]:
    """The findings in 4-7 plain sentences, every word about a difference taken from a verdict of
    :func:`~ferlib.analysis.answer.paired_comparison` (its rule: the same sign in every seed, at least 3 seeds,
    paired t-test p < 0.05).

    Parameters
    ----------
    results : :func:`ferlib.rundir.collect_results` of the study's runs (what was trained, the references).
    comparison : :func:`~ferlib.analysis.answer.paired_comparison` against ``baseline``.
    memorisation : :func:`~ferlib.analysis.answer.memorisation_summary` (the baseline's drop from its peak test
        epoch to its last).
    noise_order : the noise settings in the order to name them (a study's grid); others follow.
    contrast : :func:`~ferlib.analysis.flips.noise_contrast` (each method under one noise minus itself under
        another, seed by seed, with the same verdict rule), or None; ``contrast_noises`` names the two (default
        the real annotator and its synthetic twin).

    Returns
    -------
    list of str: what was compared; the baseline's drop per noise setting; per metric of
    :data:`HEADLINE_METRICS` the supported gains and losses (or, with fewer than 3 seeds, that none can be
    supported); with ``contrast``, which methods do better under one noise than the other; the oracle's and the
    clean control's accuracy. Accuracies in %, differences in points.
    """
    if not len(results):
        return []
    df = labelled_runs(results, baseline=baseline)
    base = method_label(baseline)
    labels = dict(zip(df["method"], df["label"]))  # registry name -> display name (one per method here)
    others = sorted({m for m in df.loc[df["kind"] == "method", "label"] if m != base}, key=str.lower)
    noises = _noises(df, noise_order)
    lines = [f"{base} and {len(others)} methods for noisy labels ({', '.join(others)}) trained on the same faces "
             f"at {len(noises)} noise setting{'s' * (len(noises) != 1)} ({', '.join(map(noise_label, noises))}), "
             f"{_seed_words(df[df['kind'] != 'control'], noises, each=True)}; a seed draws the noise, so the "
             f"methods of one seed saw the same flipped labels and are compared with {base} seed by seed."]
    drops = memorisation[(memorisation["method"] == baseline) & ~memorisation["oracle"].astype(bool)]
    rank = {n: i for i, n in enumerate([*noises, "none"])}
    drops = drops.sort_values("noise", key=lambda col: col.map(rank), kind="stable")
    if len(drops):
        parts = [f"{mean_std_text(r['drop_mean'], r['drop_std'])} points "
                 + ("on the clean labels" if r["noise"] == "none" else f"at {noise_label(r['noise'])}")
                 for r in drops.to_dict("records")]
        listed = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
        lines.append(f"From its best test epoch to its last, {base} loses {listed} (the peak is read off the "
                     "per-epoch curves, never used to select a model).")
    pairs = int(comparison["n_pairs"].max()) if len(comparison) else 0
    if not len(comparison):
        lines.append(f"No method has runs paired with {base}'s on the same seed: nothing is compared.")
    elif pairs < 3:
        d = 100 * comparison.loc[comparison["metric"] == "last.acc", "mean_diff"]
        lines.append(f"With {pairs} seed{'s' * (pairs != 1)} per setting no difference can be called supported "
                     f"(the rule needs 3 seeds); at the last epoch the methods differ from {base} by "
                     f"{d.min():+.1f} to {d.max():+.1f} points.")
    else:
        for metric in HEADLINE_METRICS:
            rows = comparison[comparison["metric"] == metric]
            if len(rows):
                lines.append(_metric_sentence(rows, metric, labels, base, noises))
    if contrast is not None and pairs >= 3:
        rows = contrast[contrast["metric"] == "last.acc"]
        if len(rows):
            lines.append(_contrast_sentence(rows, labels, *contrast_noises))
    references = [f"{label} {mean_std_text(runs['last.acc'].mean(), runs['last.acc'].std(ddof=1))}%"
                  for label, runs in ((("the oracle trained on the human votes" if k == "oracle" else
                                        f"{base} on the clean labels"), g)
                                      for k, g in df[df["kind"] != "method"].groupby("kind", sort=True))]
    if references:
        lines.append(f"References, not competitors, at the last epoch: {' and '.join(references)}.")
    return lines


def ablation_findings(ablations, comparison, *, baseline: str = "ce", noise_order: Sequence[str] = ()) -> list[str]:
    """One sentence per ablated method: at each noise setting, its gain over ``baseline`` and what each variant
    (one component switched off) changes against the full method, at the last epoch, the supported ones marked.

    Parameters
    ----------
    ablations : :func:`~ferlib.analysis.answer.ablation_comparison` (variant minus full, seed by seed).
    comparison : :func:`~ferlib.analysis.answer.paired_comparison` against ``baseline`` (the full method's gain).
    noise_order : the noise settings in the order to name them; others follow.

    Returns
    -------
    list of str, [] without ablation runs. A variant below the full method with support is a component that
    carries part of the gain; the gain puts its size in proportion. Differences in points.
    """
    rows = ablations[ablations["metric"] == "last.acc"] if len(ablations) else ablations
    if not len(rows):
        return []
    last = comparison[comparison["metric"] == "last.acc"] if len(comparison) else comparison
    gains = {(r["method"], r["noise"]): r for r in last.to_dict("records")}
    base, lines = method_label(baseline), []
    for method, group in rows.groupby("method", sort=True):
        parts, pairs = [], int(group["n_pairs"].max())
        for noise in _noises(group, noise_order):
            gain = gains.get((method, noise))
            items = ", ".join(f"{r['variant']} {100 * r['mean_diff']:+.1f}"
                              + (f" ({r['verdict']})" if r["verdict"].startswith("supported") else "")
                              for r in group[group["noise"] == noise].sort_values("mean_diff").to_dict("records"))
            seeds = f" in {int(gain['n_pairs'])} seeds" if gain and int(gain["n_pairs"]) != pairs else ""
            parts.append(f"at {noise_label(noise)}"
                         + (f" (full method {100 * gain['mean_diff']:+.1f} over {base}{seeds})" if gain else "")
                         + f": {items}")
        lines.append(f"{method_label(method)} with one component switched off, minus the full method at the last "
                     f"epoch ({pairs} seed{'s' * (pairs != 1)}), {'; '.join(parts)}.")
    return lines


# ----------------------------------------------------------------------------------- the setting
def _augment_words(augment: dict) -> str:
    parts = []
    if augment.get("flip"):
        parts.append(f"horizontal flip (p = {augment['flip']:g})")
    crop = augment.get("crop", "none")
    if crop == "pad":
        parts.append(f"random shift by up to {augment.get('pad', 4)} px (pad and crop)")
    elif crop != "none":
        parts.append(f"random {crop} crop")
    for key, words in (("erase", "random erasing (p = {:g})"), ("brightness", "brightness jitter ({:g})"),
                       ("contrast", "contrast jitter ({:g})"), ("noise_std", "pixel noise (std {:g})")):
        if augment.get(key):
            parts.append(words.format(augment[key]))
    if not parts:
        return "none"
    return f"{parts[0]} only" if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _start_words(weights, pretrain: dict | None) -> str:
    if weights in (None, "", "none") or (isinstance(weights, float) and math.isnan(weights)):
        return "random initialisation"
    if weights == "ssl":
        from ..pretrain.config import PretrainConfig

        method = (pretrain or {}).get("method") or PretrainConfig.__dataclass_fields__["method"].default
        return f"self-supervised ({method.replace('simclr', 'SimCLR').replace('byol', 'BYOL')} on the train faces, " \
               "no labels)"
    return f"the weights {weights}"


def study_setting(results, config: dict, *, study: dict | None = None, full_train: int | None = None,
                  extra_runs: dict[str, int] | None = None, baseline: str = "ce",
                  noise_order: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The setting of a study, as ``[(what, words)]`` rows for the index's Setting box.

    Parameters
    ----------
    results : :func:`ferlib.rundir.collect_results` of the study's runs folder.
    config : ``config.json`` of one of its runs (:func:`ferlib.rundir.read_config`): augmentation, precision,
        backbone widths.
    study : the study record (``study.json``): the grid's expected size.
    full_train : faces of the dataset's whole train split (``00_prepare_data.json``), when known.
    extra_runs : finished runs of the other folders, e.g. ``{"start-contrast runs (init/)": 12}``.
    noise_order : the noise settings in the order to list them (a study's grid).

    The last row says why the numbers are below the papers': the budget's departures, one by one.
    """
    df = labelled_runs(results, baseline=baseline)
    first = {k: v for k, v in df.iloc[0].items() if not (isinstance(v, float) and math.isnan(v))}
    dataset = str(first.get("dataset", "the dataset"))
    rows = [("data", _data_words(dataset, first))]
    counts = {s: int(first[f"split_counts.{s}"]) for s in ("train", "valid", "test") if f"split_counts.{s}" in first}
    if counts:
        subset = f" (a stratified subset of the {full_train:,})" if "train_subset" in first and full_train else ""
        test = "FERPlus test" if dataset == "ferplus" else "the test split"
        rows.append(("splits", f"train {counts['train']:,} faces{subset}; validation {counts.get('valid', 0):,}; "
                               f"test {counts.get('test', 0):,} ({test}, every number below)"))
    if "image_size" in first:
        size, chans = int(first["image_size"]), int(first.get("backbone.in_chans", 1))
        rows.append(("images", f"{size} × {size} px, {'grayscale' if chans == 1 else f'{chans} channels'}"))
    backbone = config.get("backbone") or {}
    widths = (backbone.get("model_kwargs") or {}).get("channels")
    name = str(backbone.get("name", first.get("backbone.name", "")))
    if name:
        rows.append(("network", _BACKBONE_NAMES.get(name, name)
                     + (f", channels {'-'.join(map(str, widths))}" if widths else "")
                     + (f" ({first['params'] / 1e6:.1f} M parameters)" if "params" in first else "")))
        rows.append(("start", _start_words(first.get("backbone.weights"), config.get("pretrain"))))
    train = config.get("train") or {}
    if {"epochs", "batch_size", "optimizer", "lr"} <= set(first):
        rows.append(("training", f"{int(first['epochs'])} epochs, batch {int(first['batch_size'])}, "
                                 f"{str(first['optimizer']).capitalize()} (lr {first['lr']:g}"
                                 + (f", {train['scheduler']} schedule" if train.get("scheduler") else "")
                                 + "), the same for every method"))
    if train:
        rows.append(("augmentation", _augment_words(train.get("augment") or {})))
        precision = config.get("precision") or {}
        words = f"{precision['autocast']} autocast" if precision.get("autocast") else "float32"
        rows.append(("precision", words + (", channels-last" if precision.get("channels_last") else "")))
    if "device" in first:
        ce = df.loc[df["method"] == baseline, "time_per_epoch_s"] if "time_per_epoch_s" in df else []
        rows.append(("machine", f"{str(first['device']).upper()}, {config.get('processes', 1)} process per run"
                     + (f"; {method_label(baseline)} trains an epoch in {ce.median():.1f} s" if len(ce) else "")))
    rows.append(("noise", _noise_words(df, noise_order)))
    rows.append(("runs", _runs_words(df, study, extra_runs or {})))
    if {"image_size", "epochs"} <= set(first):
        rows.append(("why so low", _why_low(dataset, first, counts, widths, train, full_train)))
    return rows


def _data_words(dataset: str, first: dict) -> str:
    mode = first.get("dataset_options.mode")
    return (f"{'FERPlus' if dataset == 'ferplus' else dataset}"
            + (f", {int(first['classes'])} classes" if "classes" in first else "")
            + (f", {mode} labels of the human votes" if isinstance(mode, str) else ""))


def _noise_words(df, noise_order: Sequence[str]) -> str:
    rates = df[df["kind"] == "method"].groupby("noise")["noise_rate"].mean() if "noise_rate" in df else {}
    parts = [noise_label(n) + _NOISE_WORDS.get(n, "") + (f": {100 * rates[n]:.1f}%" if n in rates else "")
             + (" of the train labels flipped" if n in rates and i == 0 else "")
             for i, n in enumerate(_noises(df, noise_order))]
    seeds = ", ".join(str(int(s)) for s in sorted(set(df["seed"])))
    return "; ".join(parts) + f"; seed{'s' * (df['seed'].nunique() != 1)} {seeds}, each drawing its own noise"


def _span(seeds) -> str:
    """``0-4`` for consecutive seeds, else ``0, 2, 5``."""
    seeds = sorted(int(s) for s in seeds)
    consecutive = len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1))
    return f"{seeds[0]}-{seeds[-1]}" if consecutive else ", ".join(map(str, seeds))


def _seed_words(runs, noises: Sequence[str], *, each: bool = False) -> str:
    """The seeds of ``runs`` (a labelled results frame): ``3 seeds`` (``3 seeds each``) when every method has
    the same ones at every noise; else, per noise setting, the seeds every method has and the methods with more,
    e.g. ``seeds 0-2 (CE 0-4) at 30% symmetric, 0-4 at real annotator and synthetic twin``."""
    per_noise = {}
    for noise in noises:
        have = runs[runs["noise"] == noise].groupby("label")["seed"].agg(frozenset)
        common = frozenset.intersection(*have) if len(have) else frozenset()
        more = "; ".join(f"{m} {_span(s)}" for m, s in have.items() if s != common)
        per_noise.setdefault(_span(common) + (f" ({more})" if more else ""), []).append(noise_label(noise))
    if len(per_noise) == 1 and "(" not in next(iter(per_noise)):
        n = runs["seed"].nunique()
        return f"{n} seed{'s' * (n != 1)}" + (" each" if each else "")
    return "seeds " + ", ".join(f"{seeds} at {' and '.join(where)}" for seeds, where in per_noise.items())


def _runs_words(df, study: dict | None, extra: dict[str, int]) -> str:
    """The finished runs: the grid's (its shape, its seeds per noise setting when not every method has every
    seed, and whether the folder holds fewer or more than the study's grid and extra grids), the control's, and
    ``extra``."""
    grid = df[df["kind"] != "control"]
    noises = _noises(grid)
    text = (f"{len(grid)} grid runs ({grid['label'].nunique()} methods × {len(noises)} noise settings"
            + (f"; {seeds}" if (seeds := _seed_words(grid, noises)).startswith("seeds ") else f" × {seeds}"))
    if study and study.get("resolved_methods"):
        grids = [{**study["grid"], "methods": study["resolved_methods"]}, *study.get("extra_grids", ())]
        expected = sum(len(g["methods"]) * len([n for n in g["noise"] if n != "none"]) * len(g["seeds"])
                       for g in grids)
        text += f"; the study's grid has {expected}" if expected != len(grid) else ""
    text += ")"
    control = df[df["kind"] == "control"]
    if len(control):
        text += f", {len(control)} control runs ({control['label'].iloc[0]} on the clean labels)"
    text += "".join(f", {n} {what}" for what, n in extra.items() if n)
    return text


def _why_low(dataset: str, first, counts: dict, widths, train: dict, full_train: int | None) -> str:
    """Why the accuracies are far below published ones: the budget's departures, each as it is."""
    papers = _PAPERS.get(dataset, "published numbers on this dataset")
    parts = []
    if full_train and counts.get("train", full_train) < full_train:
        parts.append(f"{counts['train']:,} of {full_train:,} train faces")
    parts.append(f"{int(first['image_size'])} px")
    if widths:
        parts.append("a reduced-width network")
    if first.get("backbone.weights") in (None, "", "none"):
        parts.append("a random start")
    parts.append(f"{int(first['epochs'])} epochs")
    if (train.get("augment") or {}).get("crop", "none") == "none":
        parts.append("no crop augmentation")
    return (f"Far below {papers} by design: {', '.join(parts)}, on the machine above. The budget is the same for "
            "every method, so the comparison between methods, not the level, is the result.")


# ----------------------------------------------------------------------------------- the figure
def plot_headline(results, *, baseline: str = "ce", style=method_style, noise_order: Sequence[str] = (),
                  title: str | None = None):
    """The headline figure: per noise setting, each method's test accuracy at the last epoch (filled marker,
    mean ± std over seeds) joined to its accuracy at the early-stopped epoch (hollow marker): the line between
    them is what training on to the last epoch costs or gains; the oracle (grey, dashed) and the baseline on the
    clean labels (black, dotted) as reference lines. Colours and markers from ``style``
    (:func:`~.style.method_style`).

    Returns a ``matplotlib.figure.Figure``."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    df = labelled_runs(results, baseline=baseline)
    noises = _noises(df, noise_order)
    methods = list(dict.fromkeys(df.loc[df["kind"] == "method", "method"]))
    methods.sort(key=lambda m: (m != baseline, method_label(m).lower()))
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax = fig.add_subplot()
    step = 0.8 / max(len(methods), 1)
    handles = []
    for j, m in enumerate(methods):
        runs = df[(df["method"] == m) & (df["kind"] == "method")]
        look = style(m)
        x = np.arange(len(noises)) - 0.4 + step * (j + 0.5)
        last = [100 * runs.loc[runs["noise"] == n, "last.acc"] for n in noises]
        mean = np.array([v.mean() for v in last])
        if "best.acc" in runs:
            best = np.array([100 * runs.loc[runs["noise"] == n, "best.acc"].mean() for n in noises])
            ax.vlines(x, np.minimum(best, mean), np.maximum(best, mean), color=look["color"], linewidth=1.2)
            ax.plot(x, best, linestyle="none", marker=look["marker"], markersize=6, markerfacecolor="white",
                    markeredgecolor=look["color"])
        ax.errorbar(x, mean, yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in last], linestyle="none",
                    marker=look["marker"], markersize=7, color=look["color"], capsize=2, elinewidth=0.8)
        handles.append(Line2D([], [], linestyle="none", marker=look["marker"], markersize=7, color=look["color"],
                              label=method_label(m)))
    oracle = style("ldl_votes")
    for kind, words, line in (("control", f"{method_label(baseline)} on the clean labels", REFERENCE_STYLE),
                              ("oracle", method_label("ldl_votes"), {"color": oracle["color"],
                                                                     "linestyle": oracle["linestyle"]})):
        ref = df.loc[df["kind"] == kind, "last.acc"]
        if len(ref):
            ax.axhline(100 * ref.mean(), **line)
            handles.append(Line2D([], [], label=f"{words}: {100 * ref.mean():.1f}%", **line))
    key = REFERENCE_STYLE["color"]  # the marker key, in the reference's neutral colour
    handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor=key, markeredgecolor=key,
                          label="last epoch (mean ± std)"))
    handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor=key,
                          label="early-stopped (validation-chosen epoch)"))
    for i in range(1, len(noises)):
        ax.axvline(i - 0.5, color="#ddd", linewidth=0.8)
    ax.set_xticks(np.arange(len(noises)), [noise_label(n) for n in noises])
    ax.set_xlim(-0.5, len(noises) - 0.5)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    ax.set_title(title or "Test accuracy per noise setting: last epoch (filled) and early-stopped (hollow)",
                 fontsize=11)
    return fig
