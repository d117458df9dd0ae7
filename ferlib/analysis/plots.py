"""Figures: ``matplotlib.figure.Figure`` objects built directly (no pyplot state, Agg canvas).

Every colour comes from :mod:`ferlib.analysis.style`: a method keeps its colour and marker from one figure to the
next (``style=`` of the functions that draw methods, :func:`~ferlib.analysis.style.method_style` by default), the
oracle is grey and dashed, CE on the clean labels is the dotted black reference line, and methods and noise
settings carry their display names. Accuracies are drawn in %.

matplotlib is imported inside the functions; a notebook displays a figure by making it the cell's last expression.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from . import style as st

__all__ = [
    "plot_confusion", "plot_confusions", "plot_learning_curves", "plot_seed_curves", "plot_memorisation",
    "plot_transition", "plot_transitions", "plot_bars", "plot_by_noise", "plot_noise_curve", "plot_class_accuracy",
    "plot_differences", "plot_ablations", "plot_detection", "plot_vote_entropy", "face_grid", "plot_distributions",
    "plot_embedding", "plot_embedding_grid", "plot_va", "plot_review_page",
]

Style = Callable[[str], dict]
#: Axis labels of the result metrics (``<stage>.<metric>`` of a run's result).
_METRIC_AXIS = {"last.acc": "test accuracy, last epoch", "best.acc": "test accuracy, early-stopped",
                "last.mean_acc": "mean (class-balanced) test accuracy, last epoch",
                "best.mean_acc": "mean (class-balanced) test accuracy, early-stopped"}


def _figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (4.0, 3.2), legend: float = 0.0, **kw):
    """A constrained-layout figure of ``nrows`` x ``ncols`` axes of ``size`` inches each, ``legend`` inches wider
    for a legend beside them."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols + legend, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _percent(ax, axis: str = "y") -> None:
    """Tick labels of an axis whose values are fractions, written in % (as many decimals as the ticks need)."""
    from matplotlib.ticker import PercentFormatter

    getattr(ax, f"{axis}axis").set_major_formatter(PercentFormatter(xmax=1.0))


def _log_loss(ax) -> None:
    """A log-scaled loss axis with plain numbers (0.1, 0.5, 2), not powers of ten."""
    from matplotlib.ticker import FormatStrFormatter, LogFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def _legend_outside(fig, ax=None, **kw) -> None:
    """One legend beside the axes (constrained layout makes room), from ``ax``'s handles (default: all axes)."""
    handles, labels = [], []
    for a in [ax] if ax is not None else fig.axes:
        for h, lab in zip(*a.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="outside right upper", **kw)


def _line_kw(s: dict) -> dict:
    """Matplotlib line keywords of a style dict (colour, marker, linestyle)."""
    return {k: s[k] for k in ("color", "marker", "linestyle", "linewidth") if k in s}


def _method_names(frame) -> list[str]:
    """The methods of a frame in the one order every figure uses (:func:`~ferlib.analysis.style.method_order`)."""
    return st.method_order(frame["method"])


def _series_label(method: str, variant: str, variants: Mapping[str, set]) -> str:
    """A method's display name, its variant added only when the table holds several variants of it (a study-wide
    option such as LDLVA's ``neighbours=bank`` is no variant)."""
    return st.method_label(method, variant if len(variants.get(method, ())) > 1 else "")


# ----------------------------------------------------------------------------------- heatmaps
def _heatmap(ax, matrix: np.ndarray, labels: Sequence[str], *, fmt: str, vmin: float = 0.0, vmax: float | None = None,
             cmap: str = st.HEATMAP_CMAP, xlabel: str, ylabel: str, scale: float = 1.0):
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    top = np.nanmax(np.abs(matrix)) if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        text = format(v * scale, fmt) if np.isfinite(v) else ""
        if text and float(text):  # no "0" or "-0": an empty cell reads as nothing there
            ax.text(j, i, text, ha="center", va="center", fontsize=6,
                    color="white" if top and abs(v) > 0.6 * top else "black")
    return im


def plot_confusions(matrices: Mapping[str, np.ndarray], class_names: Sequence[str], *, normalize: bool = True,
                    title: str = ""):
    """Side-by-side heatmaps of (K, K) confusion matrices (row = true class), one panel per ``{title: matrix}``;
    rows normalised to recall (in %) when ``normalize``, on one colour scale."""
    fig, axes = _figure(1, max(len(matrices), 1), size=(4.2, 3.9))
    im = None
    for ax, (name, cm) in zip(axes[0], matrices.items()):
        cm = np.asarray(cm, dtype=np.float64)
        if normalize:
            rows = cm.sum(1, keepdims=True)
            cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        im = _heatmap(ax, cm, class_names, fmt=".0f" if normalize else ".0f", vmax=1.0 if normalize else None,
                      xlabel="predicted", ylabel="true", scale=100.0 if normalize else 1.0)
        ax.set_title(name, fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="share of the true class" if normalize else "faces")
    if title:
        fig.suptitle(title)
    return fig


def plot_confusion(confusion, class_names: Sequence[str], *, normalize: bool = True, title: str = ""):
    """Heatmap of one (K, K) confusion matrix (row = true class); rows normalised to recall (%) when
    ``normalize``."""
    return plot_confusions({title or ("confusion (row-normalised, %)" if normalize else "confusion"): confusion},
                           class_names, normalize=normalize)


def plot_transitions(transitions: Mapping[str, np.ndarray], class_names: Sequence[str], *, difference: bool = True,
                     title: str = ""):
    """Side-by-side heatmaps of (C, C) noise transition matrices ``T[i, j] = P(given = j | clean = i)`` on one
    colour scale, one panel per ``{title: matrix}``; with two matrices and ``difference``, a third panel of the
    first minus the second (points of probability)."""
    mats = {k: np.asarray(v, dtype=np.float64) for k, v in transitions.items()}
    extra = difference and len(mats) == 2
    fig, axes = _figure(1, len(mats) + extra, size=(4.0, 3.8))
    im = None
    for ax, (name, t) in zip(axes[0], mats.items()):
        im = _heatmap(ax, t, class_names, fmt=".2f", vmax=1.0, xlabel="given (noisy) label", ylabel="clean label")
        ax.set_title(name, fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=list(axes[0][:len(mats)]), shrink=0.8, label="P(given | clean)")
    if extra:
        (a, ta), (b, tb) = mats.items()
        diff = 100 * (ta - tb)
        lim = max(float(np.abs(diff).max()), 1.0)
        dim = _heatmap(axes[0, -1], diff, class_names, fmt="+.0f", vmin=-lim, vmax=lim, cmap=st.DIFFERENCE_CMAP,
                       xlabel="given (noisy) label", ylabel="clean label")
        axes[0, -1].set_title(f"difference, {a} minus {b}", fontsize=9)
        fig.colorbar(dim, ax=axes[0, -1], shrink=0.8, label="points of probability")
    if title:
        fig.suptitle(title)
    return fig


def plot_transition(transition, class_names: Sequence[str], *, title: str = "realised transition P(given | clean)"):
    """Heatmap of one (C, C) noise transition matrix (row = clean class, column = given class)."""
    return plot_transitions({title: transition}, class_names, difference=False)


# ----------------------------------------------------------------------------------- curves
def plot_learning_curves(epochs, *, title: str = ""):
    """One run's ``epochs.csv`` (a DataFrame): its training loss terms and its valid / test accuracy per epoch."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(1, 2, size=(4.5, 3.2))
    loss_ax, acc_ax = axes[0]
    for col, colour in zip([c for c in epochs.columns if c.startswith("train_")], st.LINE_COLOURS):
        loss_ax.plot(epochs["epoch"], epochs[col], color=colour, marker=".", label=col.removeprefix("train_"))
    loss_ax.set(xlabel="epoch", ylabel="training loss (given labels)", title="loss")
    loss_ax.legend(fontsize=7)
    acc = [("valid_acc", "-", 0), ("test_acc", "-", 1), ("valid_mean_acc", "--", 0), ("test_mean_acc", "--", 1)]
    for col, line, k in acc:
        if col in epochs:
            acc_ax.plot(epochs["epoch"], epochs[col], line, color=st.LINE_COLOURS[k], marker=".",
                        label=col.replace("_mean_acc", " mean acc.").replace("_acc", " acc."))
    acc_ax.set(xlabel="epoch", ylabel="accuracy (clean labels)", title="accuracy", ylim=(0, 1))
    _percent(acc_ax)
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def _band(ax, rows, column: str, kw: dict, label: str) -> None:
    """Mean over seeds as a line, ± one standard deviation as a band (none for one seed)."""
    x = rows["epoch"].to_numpy(float)
    mean, std = rows[f"{column}_mean"].to_numpy(float), np.nan_to_num(rows[f"{column}_std"].to_numpy(float))
    ax.plot(x, mean, label=label, markevery=max(len(x) // 6, 1), markersize=4, **kw)
    ax.fill_between(x, mean - std, mean + std, color=kw.get("color"), alpha=0.15, linewidth=0)


def plot_seed_curves(curves, *, baseline: str = "ce", style: Style = st.method_style, title: str = ""):
    """Learning curves over seeds, one column per noise setting: test accuracy (top) and training loss on the
    given labels (bottom, log scale; each method's own objective) per epoch, mean over seeds with a ± 1 std
    band, one colour per method; ``baseline`` on the clean labels (noise ``none``) is the dotted reference.

    ``curves`` is :func:`~ferlib.analysis.curve_summary`'s output.
    """
    noises = [n for n in dict.fromkeys(curves["noise"]) if n != "none"] or ["none"]
    clean = curves[(curves["noise"] == "none") & (curves["method"] == baseline)]
    fig, axes = _figure(2, len(noises), size=(4.2, 3.0), sharex=True)
    for j, noise in enumerate(noises):
        sub = curves[curves["noise"] == noise]
        for row, column in enumerate(("test_acc", "train_loss")):
            ax = axes[row, j]
            if column not in sub and f"{column}_mean" not in sub:
                continue
            for method in _method_names(sub):
                _band(ax, sub[sub["method"] == method].sort_values("epoch"), column, _line_kw(style(method)),
                      st.method_label(method))
            if len(clean) and noise != "none":
                _band(ax, clean.sort_values("epoch"), column, dict(st.REFERENCE_STYLE),
                      f"{st.method_label(baseline)} on the clean labels")
        axes[0, j].set_title(st.noise_label(noise), fontsize=10)
        axes[0, j].set_ylabel("test accuracy")
        _percent(axes[0, j])
        axes[1, j].set(xlabel="epoch", ylabel="training loss (given labels)")
        _log_loss(axes[1, j])
    _legend_outside(fig)
    if title:
        fig.suptitle(title)
    return fig


def plot_memorisation(curves, *, method: str = "ce", title: str = ""):
    """One method under every noise setting on one panel: test accuracy (left) and training loss on the given
    labels (right, log scale) per epoch, mean over seeds with a ± 1 std band, one colour per noise setting
    (clean labels black); a dot marks each curve's peak test accuracy. ``curves``: :func:`curve_summary`."""
    sub = curves[curves["method"] == method]
    fig, axes = _figure(1, 2, size=(4.6, 3.4))
    acc_ax, loss_ax = axes[0]
    for noise in dict.fromkeys(sub["noise"]):
        rows = sub[sub["noise"] == noise].sort_values("epoch")
        kw = {**st.noise_style(noise), "linewidth": 1.6}
        _band(acc_ax, rows, "test_acc", kw, st.noise_label(noise))
        peak = rows["test_acc_mean"].idxmax()
        acc_ax.plot(rows.at[peak, "epoch"], rows.at[peak, "test_acc_mean"], "o", color=kw["color"], markersize=6)
        if "train_loss_mean" in rows:
            _band(loss_ax, rows, "train_loss", kw, st.noise_label(noise))
    acc_ax.set(xlabel="epoch", ylabel="test accuracy", title=f"{st.method_label(method)}: test accuracy (dot = peak)")
    _percent(acc_ax)
    loss_ax.set(xlabel="epoch", ylabel="training loss (given labels)",
                title=f"{st.method_label(method)}: training loss")
    _log_loss(loss_ax)
    _legend_outside(fig, acc_ax)
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------- bars and points
def _default_style(hue: str | None) -> tuple[Style, Callable[[str], str]]:
    """The colours and display names of a ``hue`` column: methods, noise settings, rankings, else in turn."""
    if hue == "method":
        return st.method_style, st.method_label
    if hue == "noise":
        return st.noise_style, st.noise_label
    if hue == "ranking":
        return st.ranking_style, lambda r: st.RANKING_NAMES.get(r, r)
    order: dict = {}
    return (lambda v: {"color": st.LINE_COLOURS[order.setdefault(v, len(order)) % len(st.LINE_COLOURS)]}), str


def _tick_label(column: str) -> Callable[[str], str]:
    return {"method": st.method_label, "noise": st.noise_label}.get(column, str)


def plot_bars(frame, *, x: str, y: str, hue: str | None = None, yerr: str | None = None, title: str = "",
              ylabel: str | None = None, ylim: tuple[float, float] | None = None, percent: bool = False,
              style: Style | None = None):
    """Grouped bar chart of a tidy DataFrame: groups along ``x``, one bar per ``hue`` value, height ``y``.

    Several rows for one (x, hue) pair (e.g. seeds) are averaged, with their standard deviation (ddof = 1) as
    the error bar unless ``yerr`` names a column of error values. Colours and names follow the ``hue`` column:
    methods (:func:`~ferlib.analysis.style.method_style`), noise settings, rankings; ``style`` overrides them.
    ``percent``: ``y`` holds fractions, drawn in %.
    """
    groups = st.method_order(frame[x]) if x == "method" else list(dict.fromkeys(frame[x]))
    hues = (st.method_order(frame[hue]) if hue == "method" else list(dict.fromkeys(frame[hue]))) if hue else [None]
    colours, names = _default_style(hue)
    colours = style or colours
    fig, axes = _figure(size=(min(max(4.0, 0.3 * len(groups) * len(hues)), 12.0), 3.4))
    ax = axes[0, 0]
    width = 0.8 / len(hues)
    for j, h in enumerate(hues):
        sub = frame if h is None else frame[frame[hue] == h]
        grouped = sub.groupby(x, sort=False)
        height = grouped[y].mean().reindex(groups)
        err = (grouped[yerr].mean() if yerr else grouped[y].std()).reindex(groups).fillna(0)
        pos = np.arange(len(groups)) - 0.4 + width * (j + 0.5)
        s = colours(h) if h is not None else colours(y)
        ax.bar(pos, height.to_numpy(dtype=float), width, yerr=err.to_numpy(dtype=float), color=s["color"],
               error_kw={"elinewidth": 0.8, "capsize": 2}, label=None if h is None else names(h))
    ax.set_xticks(range(len(groups)), [_tick_label(x)(g) for g in groups], rotation=30, ha="right")
    ax.set(ylabel=ylabel or y, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    if percent:
        _percent(ax)
    if hue:  # beside the axes, where it hides no bar (constrained layout makes room)
        _legend_outside(fig, ax)
    return fig


def _split_summary(summary, baseline: str):
    """(noisy rows of non-oracle methods, the baseline's clean-label rows, the oracle's rows) of a summary table."""
    oracle = summary["oracle"].astype(bool) if "oracle" in summary else np.zeros(len(summary), bool)
    clean = summary[(summary["noise"] == "none") & (summary["method"] == baseline) & ~oracle]
    noisy = summary[~oracle & ~((summary["noise"] == "none") & (summary["method"] == baseline))]
    if noisy.empty:  # a study on the clean labels only: the baseline is a method like the others
        noisy, clean = summary[~oracle], clean.iloc[:0]
    return noisy, clean, summary[oracle]


def _references(ax, clean, oracle, col: str, baseline: str) -> None:
    """Horizontal lines: the baseline on the clean labels (dotted black) and the oracle (grey, dashed), each at
    its mean over its rows, labelled with the value."""
    if len(clean):
        v = float(clean[f"{col}_mean"].mean())
        ax.axhline(v, **st.REFERENCE_STYLE, label=f"{st.method_label(baseline)} on the clean labels ({100 * v:.1f}%)")
    for method in _method_names(oracle):
        v = float(oracle.loc[oracle["method"] == method, f"{col}_mean"].mean())
        s = st.method_style(method)
        ax.axhline(v, color=s["color"], linestyle=s["linestyle"], linewidth=1.2,
                   label=f"{st.method_label(method)}, reads no noisy label ({100 * v:.1f}%)")


def plot_by_noise(summary, *, metric: str = "last.acc", baseline: str = "ce", style: Style = st.method_style,
                  title: str = "", ylabel: str | None = None):
    """Test accuracy by noise setting, one colour and marker per method: the noise settings on a categorical
    axis, each method's mean over seeds with ± 1 std error bars, side by side; ``baseline`` on the clean labels
    and the oracle (methods flagged ``oracle``, which read no noisy label) as horizontal reference lines.

    ``summary`` is :func:`~ferlib.analysis.summary_table`'s output; ``metric`` one of its ``<stage>.<metric>``
    (a fraction, drawn in %).
    """
    noisy, clean, oracle = _split_summary(summary, baseline)
    noises = list(dict.fromkeys(noisy["noise"]))
    variants = {m: set(g["variant"]) for m, g in noisy.groupby("method")} if "variant" in noisy else {}
    pairs = dict.fromkeys(zip(noisy["method"], noisy["variant"] if "variant" in noisy else [""] * len(noisy)))
    series = sorted(pairs, key=lambda mv: st.method_order(noisy["method"]).index(mv[0]))
    fig, axes = _figure(size=(max(4.0, 2.0 * len(noises)), 4.0), legend=3.2)
    ax = axes[0, 0]
    step = 0.8 / max(len(series), 1)
    for k, (method, variant) in enumerate(series):
        rows = noisy[(noisy["method"] == method) & ((noisy["variant"] == variant) if "variant" in noisy else True)]
        pos = [noises.index(n) - 0.4 + step * (k + 0.5) for n in rows["noise"]]
        s = style(method)
        ax.errorbar(pos, rows[f"{metric}_mean"], yerr=rows[f"{metric}_std"].fillna(0), linestyle="none",
                    marker=s.get("marker", "o"), color=s["color"], capsize=2, markersize=6,
                    label=_series_label(method, variant, variants))
    _references(ax, clean, oracle, metric, baseline)
    ax.set_xticks(range(len(noises)), [st.noise_label(n) for n in noises])
    for x in range(1, len(noises)):
        ax.axvline(x - 0.5, color="black", linewidth=0.3, alpha=0.3)
    ax.set(ylabel=ylabel or _METRIC_AXIS.get(metric, metric), title=title)
    _percent(ax)
    _legend_outside(fig, ax)
    return fig


def plot_noise_curve(summary, *, metric: str = "last.acc", baseline: str = "ce", style: Style = st.method_style,
                     title: str = ""):
    """Accuracy against the noise level, one panel per protocol run at two levels or more (``symmetric:0.2``,
    ``symmetric:0.4`` ...), one colour per method, error bars = std over seeds; ``baseline`` on the clean
    labels and the oracle as reference lines. Raises ValueError when no protocol has two levels (a categorical
    view of the settings is :func:`plot_by_noise`)."""
    noisy, clean, oracle = _split_summary(summary, baseline)
    levels = noisy.dropna(subset=["rate"]).groupby("protocol")["rate"].nunique()
    protocols = [p for p in dict.fromkeys(noisy["protocol"]) if levels.get(p, 0) >= 2]
    if not protocols:
        raise ValueError("no noise protocol was run at two levels or more: nothing to draw against the level")
    variants = {m: set(g["variant"]) for m, g in noisy.groupby("method")} if "variant" in noisy else {}
    fig, axes = _figure(1, len(protocols), size=(4.5, 3.6))
    for ax, proto in zip(axes[0], protocols):
        sub = noisy[noisy["protocol"] == proto]
        keys = ["method", "variant"] if "variant" in sub else ["method"]
        for key, rows in sub.groupby(keys, sort=False):
            method, variant = (key if isinstance(key, tuple) else (key,)) + ("",) * (2 - len(keys))
            rows = rows.sort_values("rate")
            ax.errorbar(rows["rate"], rows[f"{metric}_mean"], yerr=rows[f"{metric}_std"].fillna(0), capsize=3,
                        **_line_kw(style(method)), label=_series_label(method, variant, variants))
        _references(ax, clean, oracle, metric, baseline)
        ax.set(xlabel="noise level", ylabel=_METRIC_AXIS.get(metric, metric), title=st.noise_label(proto))
        _percent(ax)
        _percent(ax, "x")
    _legend_outside(fig)
    if title:
        fig.suptitle(title)
    return fig


def plot_class_accuracy(frame, *, reference=None, reference_label: str = "CE on the clean labels",
                        style: Style = st.method_style, title: str = ""):
    """Per-class test accuracy, one bar per method (its colour), each class labelled with its number of test
    faces; the error bars are the 95% Wilson interval of ``n`` faces at the mean over seeds.

    ``frame``: :func:`~ferlib.analysis.class_accuracy`'s rows of one noise setting (``method, class, n,
    acc_mean, low, high``). ``reference``: rows (``class, acc_mean``) drawn as the dotted black reference across
    each class's bars (the baseline on the clean labels), labelled ``reference_label``.
    """
    classes = list(dict.fromkeys(frame["class"]))
    counts = frame.drop_duplicates("class").set_index("class")["n"]
    methods = _method_names(frame)
    fig, axes = _figure(size=(min(max(6.0, 0.22 * len(classes) * len(methods)), 13.0), 3.6))
    ax = axes[0, 0]
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        rows = frame[frame["method"] == method].set_index("class").reindex(classes)
        mean = rows["acc_mean"].to_numpy(float)
        err = np.vstack([mean - rows["low"].to_numpy(float), rows["high"].to_numpy(float) - mean])
        ax.bar(np.arange(len(classes)) - 0.4 + width * (j + 0.5), mean, width,
               yerr=np.clip(np.nan_to_num(err), 0, None),  # a float's -1e-17 would be refused
               color=style(method)["color"], error_kw={"elinewidth": 0.6, "capsize": 1.5},
               label=st.method_label(method))
    if reference is not None and len(reference):
        level = reference.set_index("class")["acc_mean"].reindex(classes).to_numpy(float)
        ax.hlines(level, np.arange(len(classes)) - 0.45, np.arange(len(classes)) + 0.45, label=reference_label,
                  **{k: v for k, v in st.REFERENCE_STYLE.items() if k != "linestyle"},
                  linestyles=st.REFERENCE_STYLE["linestyle"])
    ax.set_xticks(range(len(classes)), [f"{c}\nn = {int(counts[c])}" for c in classes], fontsize=8)
    ax.set(ylabel="test accuracy", ylim=(0, 1), title=title)
    _percent(ax)
    _legend_outside(fig, ax)
    return fig


def plot_differences(comparison, *, metric: str = "last.acc", style: Style = st.method_style, title: str = "",
                     xlabel: str | None = None):
    """Seed-paired differences, one horizontal bar per method (its colour): the mean difference in points with
    ± 1 std of the differences, annotated with the seeds where it is positive, the paired t-test's p and the
    verdict. ``comparison``: rows of one ``metric`` of :func:`~ferlib.analysis.paired_comparison` (or
    :func:`~ferlib.analysis.noise_contrast`, :func:`~ferlib.analysis.init_contrast_table`)."""
    rows = comparison[comparison["metric"] == metric]
    rows = rows.iloc[np.argsort([_method_names(rows).index(m) for m in rows["method"]], kind="stable")]
    fig, axes = _figure(size=(8.5, 0.45 * len(rows) + 1.2))
    _difference_bars(axes[0, 0], rows, [st.method_label(m) for m in rows["method"]], style)
    axes[0, 0].set(xlabel=xlabel or f"difference in {_METRIC_AXIS.get(metric, metric)} (points)", title=title)
    return fig


def plot_ablations(comparison, *, metric: str = "last.acc", style: Style = st.method_style, title: str = ""):
    """Each ablation variant minus its full method, seed-paired, one panel per noise setting: one horizontal bar
    per variant in its method's colour, grouped by method, with ± 1 std of the differences and the seeds where
    it is higher, the paired t-test's p and the verdict beside it. ``comparison``:
    :func:`~ferlib.analysis.ablation_comparison`."""
    rows = comparison[comparison["metric"] == metric]
    noises = list(dict.fromkeys(rows["noise"]))
    rows = rows.iloc[np.lexsort((rows["variant"].to_numpy(), [_method_names(rows).index(m) for m in rows["method"]]))]
    variants = list(dict.fromkeys(zip(rows["method"], rows["variant"])))
    fig, axes = _figure(len(noises), 1, size=(8.5, 0.32 * len(variants) + 1.0), sharex=True)
    for ax, noise in zip(axes[:, 0], noises):
        sub = rows[rows["noise"] == noise].set_index(["method", "variant"]).reindex(variants).reset_index()
        _difference_bars(ax, sub, [f"{st.method_label(m)} {v}" for m, v in variants], style)
        ax.set(title=f"{st.noise_label(noise)}{': ' + title if title else ''}")
    axes[-1, 0].set(xlabel=f"variant minus full method, {_METRIC_AXIS.get(metric, metric)} (points)")
    return fig


def _difference_bars(ax, rows, labels: Sequence[str], style: Style) -> None:
    """One horizontal bar per row of a paired comparison, top to bottom: ``mean_diff`` in points with ± 1
    ``std_diff``, coloured by its ``method``, the seeds higher, p and the verdict beside it (a row without pairs
    is left empty)."""
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows.to_dict("records")):
        if not np.isfinite(r["mean_diff"]):
            continue
        ax.barh(yi, 100 * r["mean_diff"], xerr=100 * np.nan_to_num(r["std_diff"]), color=style(r["method"])["color"],
                error_kw={"elinewidth": 0.8, "capsize": 2}, height=0.6)
        p = "" if not np.isfinite(r["p_value"]) else f", p = {r['p_value']:.2g}"
        ax.text(1.02, yi, f"{int(r['wins'])} of {int(r['n_pairs'])} seeds higher{p}: {r['verdict']}", va="center",
                fontsize=7, transform=ax.get_yaxis_transform())
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, labels)


def plot_detection(summary, *, metric: str = "auroc", style: Style = st.ranking_style,
                   not_detectors: Sequence[tuple[str, str]] = st.NOT_DETECTORS, title: str = ""):
    """How well each per-sample ranking finds the flipped labels, one panel per noise setting: one bar group per
    method (tick labels in the method's colour; cleanlab's cross-fitted CE as a group of its own), one bar per
    ranking (own score, AUM, loss, margin, cleanlab), mean over seeds with ± 1 std. Chance is the dotted line
    (AUROC 0.5; for AP the flip rate). A (method, ranking) of ``not_detectors`` (DMUE's score: the official
    code's frozen random MLP) is hatched and marked "not a detector".

    ``summary``: :func:`~ferlib.analysis.detection_summary` (``method, noise, ranking, <metric>_mean,
    <metric>_std``; ``rate_mean`` for the AP chance line).
    """
    summary = summary[np.isfinite(summary[f"{metric}_mean"].to_numpy(float))]  # no flipped label: nothing to find
    noises = list(dict.fromkeys(summary["noise"]))
    names = list(st.RANKING_NAMES)
    rankings = sorted(dict.fromkeys(summary["ranking"]), key=lambda r: names.index(r) if r in names else len(names))
    fig, axes = _figure(max(len(noises), 1), 1,
                        size=(max(6.0, 0.22 * summary["method"].nunique() * len(rankings)), 2.6))
    width = 0.8 / max(len(rankings), 1)
    for ax, noise in zip(axes[:, 0], noises):
        sub = summary[summary["noise"] == noise]
        methods = _method_names(sub)
        for i, method in enumerate(methods):
            rows = sub[sub["method"] == method].set_index("ranking")
            present = [r for r in rankings if r in rows.index]
            for j, ranking in enumerate(present):  # centred on the method's tick, however many it has
                mean, std = float(rows.at[ranking, f"{metric}_mean"]), float(rows.at[ranking, f"{metric}_std"])
                (bar,) = ax.bar(i + width * (j - (len(present) - 1) / 2), mean, width, yerr=np.nan_to_num(std),
                                color=style(ranking)["color"], error_kw={"elinewidth": 0.6, "capsize": 1.5},
                                label=st.RANKING_NAMES.get(ranking, ranking))
                if (st.method_of(method), ranking) in not_detectors:
                    bar.set(hatch="///", alpha=0.5)
                    ax.text(bar.get_x() + bar.get_width() / 2, mean + 0.02, "not a detector", rotation=90,
                            ha="center", va="bottom", fontsize=6)
        chance = 0.5 if metric == "auroc" else float(sub["rate_mean"].mean()) if "rate_mean" in sub else None
        if chance is not None:
            ax.axhline(chance, **st.REFERENCE_STYLE, label="chance")
        ax.set_xticks(range(len(methods)), [st.method_label(m).replace(" (", "\n(") for m in methods], fontsize=8)
        for tick, method in zip(ax.get_xticklabels(), methods):
            tick.set_color(st.method_style(method)["color"] if method != "cleanlab" else "black")
        ax.set(ylim=(0, 1), ylabel=metric.upper() if metric in ("auroc", "ap") else metric,
               title=st.noise_label(noise))
    _legend_outside(fig, axes[0, 0])
    if title:
        fig.suptitle(title)
    return fig


def plot_vote_entropy(frame, *, bins: int = 12, title: str = ""):
    """The human votes of the faces each noise setting flips: the distribution of their vote entropy (left; all
    train faces as the dotted reference) and, per noise setting, the shares of its flips whose new label had at
    least one vote and was the runner-up vote, and the plurality share of their votes (right).

    ``frame``: :func:`~ferlib.analysis.flip_votes`' rows (every seed pooled).
    """
    noises = list(dict.fromkeys(frame["noise"]))
    fig, axes = _figure(1, 2, size=(4.6, 3.4))
    hist_ax, bar_ax = axes[0]
    edges = np.linspace(0, max(float(frame["entropy"].max()), 1e-6), bins + 1)
    first = frame[frame["noise"] == noises[0]] if noises else frame
    hist_ax.hist(first["entropy"], bins=edges, density=True, histtype="step", label="all train faces",
                 color=st.REFERENCE_STYLE["color"], linestyle=st.REFERENCE_STYLE["linestyle"])
    shares = ("given_voted", "given_runner_up", "plurality_share")
    width = 0.8 / max(len(noises), 1)
    for j, noise in enumerate(noises):
        flips = frame[(frame["noise"] == noise) & frame["flipped"]]
        s = st.noise_style(noise)
        hist_ax.hist(flips["entropy"], bins=edges, density=True, histtype="step", linewidth=1.6, color=s["color"],
                     label=f"flipped by {st.noise_label(noise)}")
        bar_ax.bar(np.arange(len(shares)) - 0.4 + width * (j + 0.5), [flips[c].mean() for c in shares], width,
                   color=s["color"])
    hist_ax.set(xlabel="entropy of the human votes (bits)", ylabel="density",
                title="how ambiguous the flipped faces are")
    bar_ax.set_xticks(range(len(shares)), ["new label\nhad a vote", "new label is\nthe runner-up",
                                           "plurality's share\nof the votes"], fontsize=8)
    bar_ax.set(ylim=(0, 1), title="flipped faces: their votes")
    _percent(bar_ax)
    _legend_outside(fig, hist_ax)
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------- faces and distributions
def face_grid(images, titles: Sequence[str] | None = None, *, ncols: int = 8, size: float = 1.3,
              title: str = "", title_colors: Sequence[str] | None = None):
    """A grid of (N, H, W[, C]) uint8 faces with optional per-face titles (grayscale for one channel); flipped
    faces' titles are usually drawn in :data:`~ferlib.analysis.style.FLIP_COLOURS` ``["flipped"]``."""
    images = np.asarray(images)
    n = len(images)
    ncols = max(1, min(ncols, n or 1))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = _figure(nrows, ncols, size=(size, size + (0.35 if titles is not None else 0)))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7, color=(title_colors[i] if title_colors else "black"))
    if title:
        fig.suptitle(title)
    return fig


_VOTES = "human votes"  # the key of the human vote distribution (:func:`~ferlib.analysis.distribution_examples`)


def _distribution_colour(name: str) -> str:
    """Bars of a label distribution: the human votes dark grey, a method's in its colour."""
    return st.VOTES_COLOUR if name == _VOTES else st.method_style(name)["color"]


def _distribution_label(name: str) -> str:
    return name if name == _VOTES else st.method_label(name)


def plot_distributions(images, distributions: Mapping[str, np.ndarray], class_names: Sequence[str],
                       titles: Sequence[str] | None = None):
    """For each face: the image and grouped bars of several (n, K) label distributions (the human votes dark
    grey, each method in its colour), every panel's classes named on its x axis."""
    images = np.asarray(images)
    n = len(images)
    fig, axes = _figure(max(n, 1), 2, size=(3.2, 2.4), gridspec_kw={"width_ratios": [1, 3]})
    names = [k for k in distributions if k == _VOTES] + st.method_order(k for k in distributions if k != _VOTES)
    width = 0.8 / max(len(names), 1)
    for i in range(n):
        img = images[i][..., 0] if images[i].shape[-1] == 1 else images[i]
        axes[i, 0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        axes[i, 0].axis("off")
        if titles is not None:
            axes[i, 0].set_title(str(titles[i]), fontsize=7)
        for j, name in enumerate(names):
            pos = np.arange(len(class_names)) - 0.4 + width * (j + 0.5)
            axes[i, 1].bar(pos, np.asarray(distributions[name])[i], width, label=_distribution_label(name),
                           color=_distribution_colour(name))
        axes[i, 1].set_ylim(0, 1)
        axes[i, 1].set_xticks(range(len(class_names)), class_names, rotation=30, ha="right", fontsize=7)
    if n:
        _legend_outside(fig, axes[0, 1])
    return fig


def plot_review_page(images, distributions: Mapping[str, np.ndarray], class_names: Sequence[str], *,
                     titles: Sequence[str] | None = None, title_colors: Sequence[str] | None = None, title: str = ""):
    """A page of faces side by side, each above grouped bars of several (n, K) label distributions (the human
    votes dark grey, a method's in its colour), classes abbreviated on the x axis; one column per face."""
    images = np.asarray(images)
    n, names = len(images), list(distributions)
    fig, axes = _figure(2, max(n, 1), size=(1.45, 1.55), gridspec_kw={"height_ratios": [1.5, 1]})
    width = 0.8 / max(len(names), 1)
    for i in range(n):
        img = images[i][..., 0] if images[i].shape[-1] == 1 else images[i]
        axes[0, i].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        if titles is not None:
            axes[0, i].set_title(str(titles[i]), fontsize=6, color=title_colors[i] if title_colors else "black")
        for j, name in enumerate(names):
            pos = np.arange(len(class_names)) - 0.4 + width * (j + 0.5)
            axes[1, i].bar(pos, np.asarray(distributions[name])[i], width, label=_distribution_label(name),
                           color=_distribution_colour(name))
        axes[1, i].set_ylim(0, 1)
        axes[1, i].set_xticks(range(len(class_names)), [c[:3] for c in class_names], rotation=90, fontsize=5)
        axes[1, i].tick_params(axis="y", labelsize=5)
    for ax in axes[0]:
        ax.axis("off")
    for ax in axes[1, n:]:
        ax.axis("off")
    if n and names:
        fig.legend(*axes[1, 0].get_legend_handles_labels(), fontsize=6, loc="outside lower center", ncols=len(names))
    if title:
        fig.suptitle(title, fontsize=8)
    return fig


# ----------------------------------------------------------------------------------- embeddings
_FIT_WORDS = {"clean": "clean label", "flipped": "flipped label", "memorised": "flipped, predicted as its wrong label",
              "recovered": "flipped, predicted as its clean label", "other": "flipped, predicted as a third class"}


def _scatter_flips(ax, xy: np.ndarray, groups: np.ndarray, *, size: float = 6) -> None:
    """Clean-label points light grey underneath, flipped ones on top in the flip colours: ``groups`` is (n,) bool
    (flipped or not) or (n,) str of :func:`~ferlib.analysis.fit_groups` (clean, memorised, recovered, other)."""
    groups = np.asarray(groups)
    names = ("clean", "flipped") if groups.dtype == bool else ("clean", "memorised", "recovered", "other")
    if groups.dtype == bool:
        groups = np.where(groups, "flipped", "clean")
    for name in names:
        m = groups == name
        if m.any() or len(names) == 2:  # flipped or not: both always in the legend, with their counts
            ax.scatter(xy[m, 0], xy[m, 1], s=size, c=st.FLIP_COLOURS[name], linewidths=0, label=_FIT_WORDS[name])


def plot_embedding(xy, colourings: Mapping[str, np.ndarray], *, class_names: Sequence[str] | None = None,
                   title: str = "", size: float = 4.0):
    """Scatter of an (N, 2) embedding, one panel per colouring (``{panel title: (N,) int or bool labels}``):
    classes in :data:`~ferlib.analysis.style.CLASS_CMAP`, flipped or not in the flip colours."""
    import matplotlib

    xy = np.asarray(xy)
    fig, axes = _figure(1, len(colourings), size=(size, size))
    for ax, (name, labels) in zip(axes[0], colourings.items()):
        labels = np.asarray(labels)
        if labels.dtype == bool:
            _scatter_flips(ax, xy, labels)
            for handle, n in zip(ax.collections, (int((~labels).sum()), int(labels.sum()))):
                handle.set_label(f"{handle.get_label()} ({n})")
        else:
            cmap = matplotlib.colormaps[st.CLASS_CMAP]
            for k in np.unique(labels):
                m = labels == k
                text = class_names[k] if class_names is not None and k < len(class_names) else str(k)
                ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(int(k) % cmap.N), label=text)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, markerscale=2)
    if title:
        fig.suptitle(title)
    return fig


def plot_embedding_grid(panels: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]], *, size: float = 2.4,
                        title: str = ""):
    """Embeddings of several runs on one page: rows = noise settings, columns = methods (the method's name in its
    colour), each panel an (n, 2) embedding of train faces, clean labels grey and flipped ones coloured by what
    the model predicts for them (its flipped label: red, memorised; its clean label: blue; another class:
    orange) or simply red; under each panel the shares of the flipped faces memorised and recovered.

    ``panels``: ``{(noise, method): (xy, groups)}``, registry names (shown through
    :func:`~ferlib.analysis.style.noise_label` / :func:`~ferlib.analysis.style.method_label`); ``groups`` (n,)
    bool (flipped) or str of :func:`~ferlib.analysis.fit_groups`.
    """
    noises = list(dict.fromkeys(n for n, _ in panels))
    methods = st.method_order(m for _, m in panels)
    fig, axes = _figure(len(noises), len(methods), size=(size, size), legend=2.6)
    for i, noise in enumerate(noises):
        for j, method in enumerate(methods):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if (noise, method) not in panels:
                ax.axis("off")
                continue
            xy, groups = (np.asarray(a) for a in panels[(noise, method)])
            _scatter_flips(ax, xy, groups, size=3)
            flips = groups[groups != "clean"] if groups.dtype.kind == "U" else np.zeros(0, str)
            if flips.size:
                ax.set_xlabel(f"memorised {100 * np.mean(flips == 'memorised'):.0f}%, "
                              f"recovered {100 * np.mean(flips == 'recovered'):.0f}%", fontsize=7)
            if i == 0 or (noises[i - 1], method) not in panels:
                ax.set_title(st.method_label(method), fontsize=9, color=st.method_style(method)["color"])
            if j == 0:
                ax.set_ylabel(st.noise_label(noise), fontsize=9)
    _legend_outside(fig, next(ax for ax in axes.flat if ax.collections), markerscale=3)
    if title:
        fig.suptitle(title)
    return fig


def plot_va(values, labels, class_names: Sequence[str], *, title: str = "auxiliary space"):
    """Scatter of (n, 2) valence-arousal values coloured by class, on [-1, 1] axes."""
    fig = plot_embedding(values, {title: np.asarray(labels)}, class_names=class_names, size=4.5)
    ax = fig.axes[0]
    ticks = [-1, -0.5, 0, 0.5, 1]
    ax.set(xlabel="valence", ylabel="arousal", xticks=ticks, yticks=ticks)
    ax.axhline(0, color="black", lw=0.5, alpha=0.4)
    ax.axvline(0, color="black", lw=0.5, alpha=0.4)
    return fig
