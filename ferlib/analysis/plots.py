"""Figures: ``matplotlib.figure.Figure`` objects built directly (no pyplot state, Agg canvas).

matplotlib is imported inside the functions; a notebook displays a figure by making it the cell's last expression.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "plot_confusion", "plot_learning_curves", "plot_transition", "plot_bars", "face_grid", "plot_distributions",
    "plot_noise_curve", "plot_embedding", "plot_va", "plot_review_page",
]


def _figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (4.0, 3.2), **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _heatmap(ax, matrix: np.ndarray, labels: Sequence[str], *, fmt: str, vmax: float | None = None,
             xlabel: str, ylabel: str) -> None:
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    top = np.nanmax(matrix) if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        if np.isfinite(v):
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7,
                    color="white" if top and v > 0.6 * top else "black")
    ax.figure.colorbar(im, ax=ax, shrink=0.8)


def plot_confusion(confusion, class_names: Sequence[str], *, normalize: bool = True, title: str = ""):
    """Heatmap of a (K, K) confusion matrix (row = true class); rows normalised to recall when ``normalize``."""
    cm = np.asarray(confusion, dtype=np.float64)
    if normalize:
        rows = cm.sum(1, keepdims=True)
        cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, axes = _figure(size=(5.5, 4.5))
    _heatmap(axes[0, 0], cm, class_names, fmt=".2f" if normalize else ".0f", vmax=1.0 if normalize else None,
             xlabel="predicted", ylabel="true")
    axes[0, 0].set_title(title or ("confusion (row-normalised)" if normalize else "confusion"))
    return fig


def plot_learning_curves(epochs, *, title: str = ""):
    """Training loss terms and valid/test accuracy per epoch of one run's ``epochs.csv`` (a DataFrame)."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(1, 2, size=(4.5, 3.2))
    loss_ax, acc_ax = axes[0]
    for col in [c for c in epochs.columns if c.startswith("train_")]:
        loss_ax.plot(epochs["epoch"], epochs[col], marker="o", label=col.removeprefix("train_"))
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss")
    loss_ax.legend(fontsize=7)
    for col, style in (("valid_acc", "-"), ("test_acc", "-"), ("valid_mean_acc", "--"), ("test_mean_acc", "--")):
        if col in epochs:
            acc_ax.plot(epochs["epoch"], epochs[col], style, marker="o", label=col)
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy (true labels)", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_transition(transition, class_names: Sequence[str], *, title: str = "realised transition P(given | clean)"):
    """Heatmap of a (C, C) noise transition matrix (row = clean class, column = given class)."""
    fig, axes = _figure(size=(5.5, 4.5))
    _heatmap(axes[0, 0], np.asarray(transition, dtype=np.float64), class_names, fmt=".2f", vmax=1.0,
             xlabel="given (noisy) label", ylabel="clean label")
    axes[0, 0].set_title(title)
    return fig


def plot_bars(frame, *, x: str, y: str, hue: str | None = None, yerr: str | None = None, title: str = "",
              ylabel: str | None = None, ylim: tuple[float, float] | None = None):
    """Grouped bar chart of a tidy DataFrame: groups along ``x``, one bar per ``hue`` value, height ``y``.

    Several rows for one (x, hue) pair (e.g. seeds) are averaged, with their standard deviation (ddof = 1) as
    the error bar unless ``yerr`` names a column of error values.
    """
    groups = list(dict.fromkeys(frame[x]))
    hues = list(dict.fromkeys(frame[hue])) if hue else [None]
    fig, axes = _figure(size=(min(max(4.0, 0.3 * len(groups) * len(hues)), 12.0), 3.4))
    ax = axes[0, 0]
    width = 0.8 / len(hues)
    for j, h in enumerate(hues):
        sub = frame if h is None else frame[frame[hue] == h]
        grouped = sub.groupby(x, sort=False)
        height = grouped[y].mean().reindex(groups)
        err = (grouped[yerr].mean() if yerr else grouped[y].std()).reindex(groups).fillna(0)
        pos = np.arange(len(groups)) - 0.4 + width * (j + 0.5)
        ax.bar(pos, height.to_numpy(dtype=float), width, yerr=err.to_numpy(dtype=float),
               error_kw={"elinewidth": 0.8, "capsize": 2}, label=None if h is None else str(h))
    ax.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=30, ha="right")
    ax.set(ylabel=ylabel or y, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    if hue:  # beside the axes, where it hides no bar (constrained layout makes room)
        fig.legend(fontsize=7, loc="outside right upper")
    return fig


def face_grid(images, titles: Sequence[str] | None = None, *, ncols: int = 8, size: float = 1.3,
              title: str = "", title_colors: Sequence[str] | None = None):
    """A grid of (N, H, W[, C]) uint8 faces with optional per-face titles (grayscale for one channel)."""
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


def plot_distributions(images, distributions: Mapping[str, np.ndarray], class_names: Sequence[str],
                       titles: Sequence[str] | None = None):
    """For each face: the image and grouped bars of several (n, K) label distributions (e.g. votes vs methods),
    every panel's classes named on its x axis."""
    images = np.asarray(images)
    n = len(images)
    fig, axes = _figure(max(n, 1), 2, size=(3.2, 2.4), gridspec_kw={"width_ratios": [1, 3]})
    names = list(distributions)
    width = 0.8 / max(len(names), 1)
    for i in range(n):
        img = images[i][..., 0] if images[i].shape[-1] == 1 else images[i]
        axes[i, 0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        axes[i, 0].axis("off")
        if titles is not None:
            axes[i, 0].set_title(str(titles[i]), fontsize=7)
        for j, name in enumerate(names):
            pos = np.arange(len(class_names)) - 0.4 + width * (j + 0.5)
            axes[i, 1].bar(pos, np.asarray(distributions[name])[i], width, label=name)
        axes[i, 1].set_ylim(0, 1)
        axes[i, 1].set_xticks(range(len(class_names)), class_names, rotation=30, ha="right", fontsize=7)
    if n:
        axes[0, 1].legend(fontsize=6, ncols=2)
    return fig


def plot_review_page(images, distributions: Mapping[str, np.ndarray], class_names: Sequence[str], *,
                     titles: Sequence[str] | None = None, title_colors: Sequence[str] | None = None, title: str = ""):
    """A page of faces side by side, each above grouped bars of several (n, K) label distributions (e.g. the
    human votes and a method's), classes abbreviated on the x axis; one column per face."""
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
            axes[1, i].bar(pos, np.asarray(distributions[name])[i], width, label=name,
                           color="darkgrey" if name == "human votes" else _cmap(10)(j))
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


def plot_noise_curve(summary, *, metric: str = "last.acc", title: str = ""):
    """Accuracy vs noise level per method, one panel per protocol, error bars = std over seeds.

    ``summary`` is :func:`summary_table`'s output. Rows with ``noise == "none"`` are drawn at level 0 of every
    single-step flip protocol (``symmetric``, ``class_dependent``); a protocol without a level (``annotator``,
    ``annotator_matched``) is drawn at its realised noise rate (``noise_rate_mean``); only default-configuration
    rows (``variant == ""``) are drawn.
    """
    import pandas as pd

    df = summary[summary["variant"] == ""] if "variant" in summary else summary
    clean = df[df["protocol"] == "none"]
    protocols = [p for p in dict.fromkeys(df["protocol"]) if p != "none"] or ["none"]
    fig, axes = _figure(1, len(protocols), size=(4.5, 3.4))
    for ax, proto in zip(axes[0], protocols):
        sub = df[df["protocol"] == proto]
        if proto in ("symmetric", "class_dependent"):
            sub = pd.concat([sub, clean])
        if "noise_rate_mean" in sub:
            sub = sub.assign(rate=sub["rate"].fillna(sub["noise_rate_mean"]))
        for method, rows in sub.groupby("method", sort=True):
            rows = rows.sort_values("rate")
            oracle = bool(rows["oracle"].iloc[0]) if "oracle" in rows else False
            ax.errorbar(rows["rate"], rows[f"{metric}_mean"], yerr=rows[f"{metric}_std"].fillna(0),
                        marker="o", capsize=3, linestyle="--" if oracle else "-",
                        label=f"{method}{' (oracle)' if oracle else ''}")
        ax.set(xlabel="noise level", ylabel=metric, title=proto)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_embedding(xy, colourings: Mapping[str, np.ndarray], *, class_names: Sequence[str] | None = None,
                   title: str = "", size: float = 4.0):
    """Scatter of an (N, 2) embedding, one panel per colouring (``{panel title: (N,) int or bool labels}``)."""
    xy = np.asarray(xy)
    fig, axes = _figure(1, len(colourings), size=(size, size))
    for ax, (name, labels) in zip(axes[0], colourings.items()):
        labels = np.asarray(labels)
        if labels.dtype == bool:
            groups = [(False, "clean label", "lightgrey"), (True, "flipped", "crimson")]
            for value, text, colour in groups:
                m = labels == value
                ax.scatter(xy[m, 0], xy[m, 1], s=6, c=colour, label=f"{text} ({m.sum()})")
        else:
            cmap = _cmap(10 if labels.size == 0 else max(int(labels.max()) + 1, 1))
            for k in np.unique(labels):
                m = labels == k
                text = class_names[k] if class_names is not None and k < len(class_names) else str(k)
                ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(int(k)), label=text)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, markerscale=2)
    if title:
        fig.suptitle(title)
    return fig


def _cmap(n: int):
    import matplotlib

    return matplotlib.colormaps["tab10" if n <= 10 else "tab20"]


def plot_va(values, labels, class_names: Sequence[str], *, title: str = "auxiliary space"):
    """Scatter of (n, 2) valence-arousal values coloured by class, on [-1, 1] axes."""
    fig = plot_embedding(values, {title: np.asarray(labels)}, class_names=class_names, size=4.5)
    ax = fig.axes[0]
    ticks = [-1, -0.5, 0, 0.5, 1]
    ax.set(xlabel="valence", ylabel="arousal", xticks=ticks, yticks=ticks)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    return fig
