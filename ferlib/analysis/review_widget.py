"""The label-review widget for JupyterLab: choosers, page buttons, a decision per face, an export button.

A thin layer of ipywidgets (imported when a widget is made) over :mod:`ferlib.analysis.review`, which computes
every order, page, suggestion, precision and exported row. Its callbacks are plain methods, so tests drive it
from Python without a browser (set a chooser's ``value``, ``click()`` a button).
"""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np

from .review import (DECISIONS, ReviewSet, export_review, n_pages, page_of, precision_at_k, review_order,
                     review_rows)

__all__ = ["ReviewWidget"]

#: What a rendered report shows in place of the widget (nbconvert keeps ``text/plain`` when widget state is dropped).
STATIC_TEXT = "Label-review widget: run this notebook in JupyterLab (make lab) to page, mark and export faces."
#: The class chooser's value for "all classes".
ALL = -1


class ReviewWidget:
    """Review the train faces of one of several runs, most suspicious first.

    Parameters
    ----------
    sets : the runs to choose from (:func:`~ferlib.analysis.review_sets`).
    run : index of the set shown first.
    label : class shown first, by given label (None: all faces).
    ranking : ranking shown first (falls back to the set's first ranking when it lacks this one).
    page_size : faces a page.
    path : where the export button writes ``reviewed_labels.csv``.
    thumb : face width in pixels.

    Attributes
    ----------
    run, label, ranking : the choosers (``ipywidgets.Dropdown``); prev, next, export : buttons; path : the export
    path (``ipywidgets.Text``); cards : ``(face index, ipywidgets.ToggleButtons)`` of the page shown;
    decisions : ``{(set index, face index): (decision, ranking)}`` of every face marked so far, on any page.
    """

    def __init__(self, sets: Sequence[ReviewSet], *, run: int = 0, label: int | None = None, ranking: str = "score",
                 page_size: int = 8, path: str | os.PathLike = "reviewed_labels.csv", thumb: int = 96):
        import ipywidgets as W

        self.sets = list(sets)
        if not self.sets:
            raise ValueError("no run to review (the runs folder has no finished run)")
        if not 0 <= run < len(self.sets):
            raise ValueError(f"run must index one of the {len(self.sets)} sets, got {run}")
        n_pages(0, page_size)  # validates page_size
        self.page_size, self.thumb, self.page = int(page_size), int(thumb), 0
        self.decisions: dict[tuple[int, int], tuple[str, str]] = {}
        self.cards: list[tuple[int, object]] = []
        names = self.sets[run].class_names
        self.run = W.Dropdown(description="run", options=[(s.title, i) for i, s in enumerate(self.sets)], value=run,
                              layout=W.Layout(width="640px"))
        self.label = W.Dropdown(description="class", value=ALL if label is None else label,  # None reads as unset
                                options=[("all classes", ALL)] + [(f"given {n}", k) for k, n in enumerate(names)])
        self.ranking = W.Dropdown(description="ranking", options=list(self.sets[run].scores))
        self.ranking.value = ranking if ranking in self.sets[run].scores else self.ranking.options[0]
        self.prev, self.next = W.Button(description="◀ previous"), W.Button(description="next ▶")
        self.position, self.precision, self.status = W.Label(), W.HTML(), W.Label()
        self.faces = W.GridBox(layout=W.Layout(grid_template_columns="repeat(auto-fill, minmax(320px, 1fr))"))
        self.path = W.Text(description="export to", value=str(path))
        self.export = W.Button(description="export marks", button_style="primary")
        for chooser in (self.run, self.label, self.ranking):
            chooser.observe(self._on_choice, "value")
        self.prev.on_click(lambda _: self._turn(-1))
        self.next.on_click(lambda _: self._turn(+1))
        self.export.on_click(lambda _: self._export())
        self.box = W.VBox([self.run, W.HBox([self.label, self.ranking]), W.HBox([self.prev, self.position, self.next]),
                           self.precision, self.faces, W.HBox([self.path, self.export]), self.status])
        self._show()

    @property
    def set(self) -> ReviewSet:
        """The set shown."""
        return self.sets[self.run.value]

    def order(self) -> np.ndarray:
        """:func:`~ferlib.analysis.review_order` of the set, class and ranking chosen."""
        label = None if self.label.value == ALL else self.label.value
        return review_order(self.set.scores[self.ranking.value], self.set.given, label=label)

    def table(self):
        """Every mark so far as :func:`~ferlib.analysis.review_rows` (set by set, ranking by ranking)."""
        import pandas as pd

        groups: dict[tuple[int, str], dict[int, str]] = {}
        for (s, i), (decision, ranking) in sorted(self.decisions.items()):
            groups.setdefault((s, ranking), {})[i] = decision
        frames = [review_rows(self.sets[s], marks, ranking=ranking) for (s, ranking), marks in groups.items()]
        return pd.concat(frames, ignore_index=True) if frames else review_rows(self.set, {}, ranking=self.ranking.value)

    def _on_choice(self, change) -> None:
        if change["owner"] is self.run:
            rankings = list(self.set.scores)
            keep = self.ranking.value if self.ranking.value in rankings else rankings[0]
            with self.ranking.hold_trait_notifications():
                self.ranking.options, self.ranking.value = rankings, keep
        self.page = 0
        self._show()

    def _turn(self, step: int) -> None:
        self.page = int(np.clip(self.page + step, 0, n_pages(len(self.order()), self.page_size) - 1))
        self._show()

    def _decide(self, index: int, decision: str | None) -> None:
        key = (self.run.value, index)
        if decision is None:
            self.decisions.pop(key, None)
        else:
            self.decisions[key] = (decision, self.ranking.value)

    def _export(self) -> None:
        try:
            path = export_review(self.table(), self.path.value)
        except (OSError, ValueError) as exc:
            self.status.value = f"not exported: {exc}"
        else:
            self.status.value = f"{len(self.decisions)} mark(s) written to {path}"

    def _show(self) -> None:
        import ipywidgets as W

        order = self.order()
        pages = n_pages(len(order), self.page_size)
        index = page_of(order, self.page, self.page_size)
        self.position.value = f"page {self.page + 1} of {pages} ({len(order)} faces)"
        self.prev.disabled, self.next.disabled = self.page == 0, self.page >= pages - 1
        self.precision.value = self._precision_text(order)
        self.cards, boxes = [], []
        for rank, (i, face) in enumerate(zip(index.tolist(), self.set.faces(index)), start=self.page * self.page_size):
            marked = self.decisions.get((self.run.value, i), (None, None))[0]
            toggle = W.ToggleButtons(options=list(DECISIONS), value=marked,
                                     style=W.ToggleButtonsStyle(button_width="100px"))
            toggle.observe(lambda change, i=i: self._decide(i, change["new"]), "value")
            self.cards.append((i, toggle))
            boxes.append(W.VBox([W.Image(value=_png(face), format="png", width=self.thumb),
                                 W.HTML(self._caption(i, rank)), toggle]))
        self.faces.children = boxes

    def _precision_text(self, order: np.ndarray) -> str:
        if not len(order):
            return "no face of this class"
        flipped = self.set.flipped
        k = min((self.page + 1) * self.page_size, len(order))
        (p,) = precision_at_k(order, flipped, [k])
        return (f"known flips among the {k} faces shown so far: <b>{p:.0%}</b> (p@{k}; chance "
                f"{flipped[order].mean():.0%}, {int(flipped[order].sum())} flipped of {len(order)})")

    def _caption(self, i: int, rank: int) -> str:
        s, names = self.set, self.set.class_names
        clean = (f"<span style='color:crimson'>clean {names[s.clean[i]]} (flipped)</span>" if s.flipped[i]
                 else f"clean {names[s.clean[i]]}")
        lines = [f"#{rank + 1} · {self.ranking.value} {s.scores[self.ranking.value][i]:.3f}",
                 f"given <b>{names[s.given[i]]}</b>", clean, f"suggests <b>{names[s.suggested[i]]}</b>",
                 f"{s.label}: {_top(s.distribution[i], names)}"]
        if s.votes is not None:
            lines.append(f"votes: {_top(s.votes[i], names, counts=True)}")
        return "<div style='font-size:11px;line-height:1.25'>" + "<br>".join(lines) + "</div>"

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        return {**bundle, "text/plain": STATIC_TEXT}


def _top(values, names: Sequence[str], *, counts: bool = False, n: int = 3) -> str:
    """``"happy 6, neutral 4"`` / ``"happy .61, neutral .30"``: the ``n`` largest non-zero entries."""
    values = np.asarray(values, dtype=np.float64)
    best = [k for k in np.argsort(-values, kind="stable")[:n] if values[k] > 0]
    return ", ".join(f"{names[k]} {values[k]:.0f}" if counts else f"{names[k]} {values[k]:.2f}" for k in best)


def _png(face: np.ndarray) -> bytes:
    """PNG bytes of one (H, W, C) uint8 face."""
    from PIL import Image

    face = np.asarray(face, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(face[..., 0] if face.shape[-1] == 1 else face).save(buffer, format="PNG")
    return buffer.getvalue()
