"""Figures you can hover (bokeh), self-contained in JupyterLab and in the study's rendered HTML alike.

A page loads BokehJS once, inlined (:func:`bokeh_loader`: bokeh's core bundle, about 1.3 MB), and embeds each
figure as standalone Bokeh items (:func:`bokeh_html`): no Bokeh server, no network, so an offline reader of a
rendered report still hovers. In JupyterLab, scripts in outputs run for a trusted notebook (outputs made in the
session are; ``jupyter trust`` a saved one). bokeh is imported inside the functions.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .runs import class_names_for, load_runs

__all__ = ["hover_embedding", "run_hover_embedding", "bokeh_loader", "bokeh_html"]

_FLIP_COLOURS = ("#c8c8c8", "#dc143c")  # clean label, flipped
_LEGEND_WIDTH = 95  # pixels beside a panel for its legend


def hover_embedding(xy, colourings: Mapping[str, np.ndarray], hover: Mapping[str, Sequence], *,
                    class_names: Sequence[str] | None = None, size: int = 280):
    """Linked scatter panels of one embedding (pan and zoom together), one per colouring, each with a hover tool.

    Parameters
    ----------
    xy : (N, 2) embedding.
    colourings : panel title -> (N,) int class labels (named by ``class_names``) or (N,) bool (flipped or not).
    hover : field name -> (N,) values shown when hovering a point (face id, score ...), before every colouring's
        value (class name, ``flipped`` / ``clean label``).
    class_names : names of the int labels (None: the numbers).
    size : pixels of each square panel (its legend is drawn beside it, outside the points).

    Returns
    -------
    bokeh.models.GridPlot (display it with :func:`bokeh_html`).
    """
    from bokeh.layouts import gridplot
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure
    from bokeh.transform import factor_cmap

    xy = np.asarray(xy, dtype=np.float32)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must have shape (N, 2), got {xy.shape}")
    for name, values in [*colourings.items(), *hover.items()]:
        if len(values) != len(xy):
            raise ValueError(f"colouring or hover field {name!r} has {len(values)} values, the embedding {len(xy)}")
    columns = {"x": xy[:, 0], "y": xy[:, 1], **{f"h{i}": np.asarray(v) for i, v in enumerate(hover.values())}}
    palettes = []
    for j, labels in enumerate(colourings.values()):
        columns[f"l{j}"], factors, palette = _legend(np.asarray(labels), class_names)
        palettes.append((factors, palette))
    source = ColumnDataSource(columns)
    tooltips = [(name, f"@h{i}" + ("{0.000}" if columns[f"h{i}"].dtype.kind == "f" else ""))
                for i, name in enumerate(hover)] + [(name, f"@l{j}") for j, name in enumerate(colourings)]
    figures: list = []
    for j, name in enumerate(colourings):
        linked = {"x_range": figures[0].x_range, "y_range": figures[0].y_range} if figures else {}
        fig = figure(width=size + _LEGEND_WIDTH, height=size, title=name, tools="pan,wheel_zoom,box_zoom,reset",
                     **linked)
        factors, palette = palettes[j]
        fig.scatter("x", "y", source=source, size=4, alpha=0.8, legend_field=f"l{j}",
                    color=factor_cmap(f"l{j}", palette, factors))
        fig.add_tools(HoverTool(tooltips=tooltips))
        fig.add_layout(fig.legend[0], "right")
        fig.legend.label_text_font_size, fig.legend.glyph_width, fig.legend.spacing = "7pt", 12, 0
        fig.axis.visible = False
        figures.append(fig)
    return gridplot([figures], toolbar_location="right")


def _legend(labels: np.ndarray, class_names) -> tuple[list[str], list[str], list[str]]:
    """Each point's legend text, the distinct texts (factors) and their colours: ``flipped`` / ``clean label``
    for bool labels, class names (Category10, Category20 beyond 10 classes) for int labels."""
    from bokeh.palettes import Category10_10, Category20_20

    if labels.dtype == bool:
        return ["flipped" if f else "clean label" for f in labels], ["clean label", "flipped"], list(_FLIP_COLOURS)
    k = int(labels.max(initial=-1)) + 1
    names = [str(n) for n in class_names] if class_names is not None else []
    names += [str(i) for i in range(len(names), k)]
    palette = Category10_10 if len(names) <= 10 else Category20_20
    return [names[i] for i in labels.astype(int)], names, [palette[i % len(palette)] for i in range(len(names))]


def run_hover_embedding(run, embeddings: dict, split: str, *, size: int = 280):
    """:func:`hover_embedding` of one split of :func:`~ferlib.analysis.run_embeddings`' output for ``run``.

    Hover shows the face id, on the train split the method's score (read-out ``method_score``, higher = more
    suspicious), and the labels the panels are coloured by: clean label, given label and flipped or not on the
    train split, the label on the test split.
    """
    run = load_runs(run)[0]
    xy, colourings = embeddings[split]
    rows = np.asarray(embeddings["index"][split])
    r = run.readout
    hover = {"face": np.asarray(r["test_ids" if split == "test" else "ids"])[rows].astype(str)}
    if split == "train" and "method_score" in r:
        hover["score"] = np.asarray(r["method_score"], dtype=np.float32)[rows]
    return hover_embedding(xy, colourings, hover, class_names=class_names_for(run), size=size)


def bokeh_loader():
    """BokehJS (the core bundle) inlined in an HTML output: display it once per page, before the figures."""
    from bokeh.resources import Resources
    from IPython.display import HTML

    return HTML(Resources(mode="inline", components=["bokeh"]).render_js())


def bokeh_html(obj, caption: str = ""):
    """A bokeh figure or layout as standalone HTML (its div and script; BokehJS from :func:`bokeh_loader`), under
    a bold ``caption`` line when one is given."""
    import html

    from bokeh.embed import components
    from IPython.display import HTML

    script, div = components(obj)
    return HTML((f"<p><b>{html.escape(caption)}</b></p>" if caption else "") + div + script)
