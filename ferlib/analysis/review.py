"""Label review: a run's train faces from most to least suspicious, page by page, marked and exported.

cleanlab's label-issue workflow (find, then review) over ferlib's read-outs: a ranking orders the faces of a
given-label class (:func:`review_order`), a page shows a slice of that order (:func:`page_of`), each face carries a
suggested label (the argmax of the method's recovered distribution, :func:`~ferlib.analysis.recovered_distribution`:
its own target where it keeps one, else the model's prediction), a reviewer marks some with a decision of
:data:`DECISIONS`, and :func:`review_rows` / :func:`export_review` write the marks as the CSV a curator applies.
Since ferlib injects the noise, the known flips score each ranking: :func:`precision_at_k`, :func:`precision_table`.

Plain functions on arrays; the widgets of :mod:`ferlib.analysis.review_widget` only call them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..results import write_table
from .detection import RANKINGS, cleanlab_scores, fold_groups, out_of_sample_probs, ranking_score
from .distributions import _as_distribution, recovered_distribution
from .runs import class_names_for, images_by_id, load_runs, run_dataset
from .seeds import seed_summary

__all__ = [
    "DECISIONS", "REVIEW_RANKINGS", "EXPORT_COLUMNS", "ReviewSet", "review_set", "review_sets", "fold_settings",
    "cleanlab_ranking", "review_order", "n_pages", "page_of", "precision_at_k", "precision_table",
    "best_precision", "best_set", "review_rows", "export_review", "review_page_figure",
]

#: What a reviewer says of a face's given label.
DECISIONS: tuple[str, ...] = ("wrong label", "ambiguous", "fine")
#: The rankings a review can follow: the read-out's (:data:`~ferlib.analysis.detection.RANKINGS`) and cleanlab's.
REVIEW_RANKINGS: Mapping[str, str] = {
    **RANKINGS,
    "cleanlab": "1 - self-confidence of the cross-fitted CE probabilities (cleanlab; needs the fold runs)",
}
#: Columns of ``reviewed_labels.csv``.
EXPORT_COLUMNS: tuple[str, ...] = ("id", "split", "given", "suggested", "decision", "score", "ranking", "run_id")


@dataclass
class ReviewSet:
    """One run's train faces, ready to review; every per-face array has one row per face (N rows).

    Attributes
    ----------
    run_id, label, noise, seed : the run's id, method label (``"ldl_votes (oracle)"``), noise and seed.
    oracle : the method saw what noisy-label methods must not (the human votes).
    ids : (N,) str sample ids.
    split : (N,) str the dataset split of each face (``"train"``).
    given, clean : (N,) int given (possibly flipped) and clean labels in [0, K).
    scores : ranking name -> (N,) float, higher = more suspicious (NaN = unscored); see :data:`REVIEW_RANKINGS`.
    distribution : (N, K) float rows summing to 1: the method's recovered distribution.
    source : where ``distribution`` comes from (``"method_target"`` or ``"softmax(train_logits)"``).
    votes : (N, K) human vote counts, or None where the dataset has none.
    images : the dataset's (M, H, W, C) uint8 images (array-like, indexed lazily) and ``rows`` (N,) int the row
        of each face in it (:meth:`faces`).
    class_names : K names.
    """

    run_id: str
    label: str
    noise: str
    seed: int | None
    oracle: bool
    ids: np.ndarray
    split: np.ndarray
    given: np.ndarray
    clean: np.ndarray
    scores: dict
    distribution: np.ndarray
    source: str
    votes: np.ndarray | None
    images: "object"
    rows: np.ndarray
    class_names: tuple

    @property
    def flipped(self) -> np.ndarray:
        """(N,) bool: given label differs from the clean one."""
        return self.given != self.clean

    @property
    def suggested(self) -> np.ndarray:
        """(N,) int: the argmax of :attr:`distribution`."""
        return self.distribution.argmax(1)

    @property
    def title(self) -> str:
        """``"ce · symmetric:0.3 · seed 0 (run id)"``."""
        return f"{self.label} · {self.noise} · seed {self.seed} ({self.run_id})"

    def faces(self, index) -> np.ndarray:
        """(n, H, W, C) uint8 images of the faces at ``index`` (n,)."""
        index = np.asarray(index, dtype=np.int64)
        return np.asarray(self.images[self.rows[index]]) if len(index) else np.zeros((0, 1, 1, 1), np.uint8)


def review_set(run, *, settings: Sequence[tuple] = (), data=None) -> ReviewSet:
    """A run's train faces as a :class:`ReviewSet`.

    Parameters
    ----------
    run : RunRecord or run directory.
    settings : :func:`fold_settings` of the fold runs; the one with this run's ids and given labels gives the
        ``cleanlab`` ranking (none: no cleanlab ranking).
    data : the run's dataset (FERData); None = :func:`~ferlib.analysis.run_dataset` (read once, memoised).
    """
    run = load_runs(run)[0]
    readout = run.readout
    scores = {name: s for name in RANKINGS if (s := ranking_score(readout, name)) is not None}
    cleanlab = cleanlab_ranking(readout, settings)
    if cleanlab is not None:
        scores["cleanlab"] = cleanlab
    data = run_dataset(run) if data is None else data
    rows = images_by_id(data, readout["ids"])
    distribution, source = recovered_distribution(readout)
    return ReviewSet(run_id=run.run_id, label=run.label, noise=str(run.result.get("noise")),
                     seed=run.result.get("seed"), oracle=bool(run.result.get("oracle")),
                     ids=np.asarray(readout["ids"]).astype(str), split=np.asarray(data.split)[rows].astype(str),
                     given=np.asarray(readout["given"], np.int64), clean=np.asarray(readout["clean"], np.int64),
                     scores=scores, distribution=distribution, source=source,
                     votes=None if data.votes is None else np.asarray(data.votes)[rows],
                     images=data.images, rows=rows, class_names=class_names_for(run))


def review_sets(runs, *, run_ids: Sequence[str] = (), folds=None, data=None) -> list[ReviewSet]:
    """:func:`review_set` of every run (a runs folder, run directories or RunRecords), or of those named in
    ``run_ids`` (in that order; an unknown id raises ValueError listing the valid ones), cleanlab's ranking from
    the fold runs in ``folds`` (e.g. ``<runs_dir>/cleanlab``; None or a missing folder: none)."""
    runs = {run.run_id: run for run in load_runs(runs)}
    unknown = [i for i in run_ids if i not in runs]
    if unknown:
        raise ValueError(f"run_ids {unknown} are not finished runs here; valid: {', '.join(runs) or 'none'}")
    settings = fold_settings(load_runs(folds) if folds is not None and Path(folds).is_dir() else [])
    return [review_set(runs[i], settings=settings, data=data) for i in (run_ids or runs)]


def fold_settings(fold_runs) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each complete fold group's (:func:`~ferlib.analysis.fold_groups`) cross-fitted prediction: a list of
    ``(ids, given, pred_probs)``: (N,) str sorted, (N,) int, (N, K) float
    (:func:`~ferlib.analysis.out_of_sample_probs`)."""
    return [(ids, given, probs) for ids, given, _, probs in map(out_of_sample_probs, fold_groups(fold_runs))]


def cleanlab_ranking(readout: Mapping[str, np.ndarray], settings: Sequence[tuple]) -> np.ndarray | None:
    """cleanlab's ranking of a run's train faces (:func:`~ferlib.analysis.cleanlab_scores`: 1 - self-confidence).

    Parameters
    ----------
    readout : the run's read-out (``ids`` (N,), ``given`` (N,)).
    settings : :func:`fold_settings`; the first whose ids and given labels are exactly the run's is used (the
        fold runs saw the same noisy labels; their ``data`` path may be spelled differently).

    Returns
    -------
    (N,) float in [0, 1] in the read-out's order, or None when no setting matches.
    """
    ids, given = np.asarray(readout["ids"]).astype(str), np.asarray(readout["given"])
    for fold_ids, fold_given, probs in settings:
        if len(fold_ids) != len(ids):
            continue
        pos = np.minimum(np.searchsorted(fold_ids, ids), len(fold_ids) - 1)
        if np.array_equal(fold_ids[pos], ids) and np.array_equal(fold_given[pos], given):
            return cleanlab_scores(fold_given, probs)[pos]
    return None


def review_order(score, given=None, *, label: int | None = None) -> np.ndarray:
    """Faces from most to least suspicious.

    Parameters
    ----------
    score : (N,) float, higher = more suspicious; NaN (unscored) goes last.
    given : (N,) int given labels; needed with ``label``.
    label : keep only the faces whose given label is this class (None: all faces).

    Returns
    -------
    (n,) int64 indices into the N faces, by descending score (ties in index order).
    """
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 1:
        raise ValueError(f"score must be 1-D (N,), got shape {score.shape}")
    if label is None:
        index = np.arange(len(score))
    else:
        given = np.asarray(given)
        if given.shape != score.shape:
            raise ValueError(f"given must have the shape of score {score.shape}, got {given.shape}")
        index = np.flatnonzero(given == label)
    key = np.where(np.isnan(score[index]), np.inf, -score[index])
    return index[np.argsort(key, kind="stable")].astype(np.int64)


def n_pages(n: int, page_size: int) -> int:
    """Pages needed for ``n`` faces, ``page_size`` a page (at least 1: an empty class has one empty page)."""
    _check_page_size(page_size)
    return max(1, math.ceil(n / page_size))


def page_of(order, page: int, page_size: int) -> np.ndarray:
    """The faces of page ``page`` (0-based) of ``order``: ``order[page * page_size:(page + 1) * page_size]``.

    Raises ValueError when ``page`` is outside [0, :func:`n_pages`).
    """
    order = np.asarray(order)
    pages = n_pages(len(order), page_size)
    if not 0 <= page < pages:
        raise ValueError(f"page must lie in [0, {pages}) for {len(order)} faces of {page_size} a page, got {page}")
    return order[page * page_size:(page + 1) * page_size]


def _check_page_size(page_size: int) -> None:
    if int(page_size) != page_size or page_size < 1:
        raise ValueError(f"page_size must be an integer >= 1, got {page_size!r}")


def precision_at_k(order, flipped, ks: Sequence[int]) -> np.ndarray:
    """Share of truly flipped labels among the first k faces of ``order``, for each k.

    Parameters
    ----------
    order : (n,) int indices, most suspicious first (:func:`review_order`).
    flipped : (N,) bool, given label != clean label.
    ks : the k's (>= 1); a k beyond n counts the n faces there are.

    Returns
    -------
    (len(ks),) float in [0, 1]; NaN where ``order`` is empty. Chance level: the flipped rate of the faces ordered.
    """
    order, flipped = np.asarray(order, dtype=np.int64), np.asarray(flipped, dtype=bool)
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    hits = np.cumsum(flipped[order])
    return np.array([hits[min(int(k), len(order)) - 1] / min(int(k), len(order)) if len(order) else np.nan
                     for k in ks], dtype=np.float64)


def precision_table(sets: Sequence[ReviewSet], *, ks: Sequence[int] = (10, 50, 100), label: int | None = None):
    """Precision at k of every ranking of every set, the faces of class ``label`` (None: all faces).

    Returns
    -------
    pandas.DataFrame, one row per set and ranking: ``run_id, method, oracle, noise, seed, ranking, n, n_flipped,
    rate``
    (flipped share: chance level) and ``p_at_<k>`` per k.
    """
    import pandas as pd

    rows = []
    for s in sets:
        for name, score in s.scores.items():
            order = review_order(score, s.given, label=label)
            rows.append({"run_id": s.run_id, "method": s.label, "oracle": s.oracle, "noise": s.noise, "seed": s.seed,
                         "ranking": name, "n": len(order), "n_flipped": int(s.flipped[order].sum()),
                         "rate": float(s.flipped[order].mean()) if len(order) else float("nan"),
                         **{f"p_at_{k}": p for k, p in zip(ks, precision_at_k(order, s.flipped, ks))}})
    return pd.DataFrame(rows)


def best_precision(table, *, k: int = 50, oracle: bool = False):
    """For each noise setting, the method and ranking with the highest precision at ``k``, mean over seeds.

    Parameters
    ----------
    table : :func:`precision_table` output with a ``p_at_<k>`` column.
    oracle : also rank the oracle methods (``ldl_votes`` trains on the human votes: its rankings see the flips).

    Returns
    -------
    pandas.DataFrame, one row per noise (settings without a flipped label left out): ``noise, method, ranking,
    n_seeds, seeds, p_at_<k>_mean, p_at_<k>_std, rate_mean, rate_std`` (rate: the chance level).
    """
    metric = f"p_at_{k}"
    if metric not in table:
        raise ValueError(f"the table has no {metric} column (columns: {', '.join(map(str, table.columns))})")
    keep = (table["n_flipped"] > 0) & (oracle | ~table["oracle"].astype(bool))
    summary = seed_summary(table[keep], ("noise", "method", "ranking"), (metric, "rate"))
    if summary.empty:
        return summary
    best = summary.loc[summary.groupby("noise")[f"{metric}_mean"].idxmax()]
    return best[["noise", "method", "ranking", "n_seeds", "seeds", f"{metric}_mean", f"{metric}_std",
                 "rate_mean", "rate_std"]].reset_index(drop=True)


def best_set(sets: Sequence[ReviewSet], table, *, ranking: str = "score", k: int = 50) -> ReviewSet:
    """The set whose ``ranking`` has the highest precision at ``k`` in ``table`` (:func:`precision_table` of
    ``sets``), oracle methods and runs without a flipped label left out; the first set when none qualifies."""
    if not sets:
        raise ValueError("no run to choose from")
    rows = table[(table["ranking"] == ranking) & ~table["oracle"].astype(bool) & (table["n_flipped"] > 0)]
    if rows.empty:
        return sets[0]
    best = rows.sort_values(f"p_at_{k}", ascending=False, kind="stable")["run_id"].iloc[0]
    return next(s for s in sets if s.run_id == best)


def review_rows(s: ReviewSet, decisions: Mapping[int, str], *, ranking: str):
    """The marked faces of one set as rows of ``reviewed_labels.csv``.

    Parameters
    ----------
    s : the reviewed set.
    decisions : face index (into the set's N faces) -> one of :data:`DECISIONS`.
    ranking : the ranking reviewed (its score is written).

    Returns
    -------
    pandas.DataFrame with :data:`EXPORT_COLUMNS`: face id, split, given and suggested label (class names),
    decision, score, ranking, run id; most suspicious first.
    """
    import pandas as pd

    if ranking not in s.scores:
        raise ValueError(f"ranking {ranking!r} is not available for {s.run_id}; valid: {', '.join(s.scores)}")
    bad = {i: d for i, d in decisions.items() if d not in DECISIONS or not 0 <= int(i) < len(s.ids)}
    if bad:
        raise ValueError(f"decisions must map a face index in [0, {len(s.ids)}) to one of {list(DECISIONS)}, "
                         f"got {bad}")
    index = np.array(sorted(decisions, key=lambda i: -np.nan_to_num(s.scores[ranking][i], nan=-np.inf)),
                     dtype=np.int64)
    names = np.asarray(s.class_names)
    return pd.DataFrame({"id": s.ids[index], "split": s.split[index], "given": names[s.given[index]],
                         "suggested": names[s.suggested[index]], "decision": [decisions[i] for i in index],
                         "score": s.scores[ranking][index], "ranking": ranking, "run_id": s.run_id},
                        columns=list(EXPORT_COLUMNS))


def export_review(table, path: str | os.PathLike = "reviewed_labels.csv") -> Path:
    """Write :func:`review_rows` (one table, or several concatenated) to ``path`` as CSV, atomically.

    Raises ValueError when the table lacks a column of :data:`EXPORT_COLUMNS`.
    """
    missing = [c for c in EXPORT_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"the review table lacks column(s) {missing}; expected {list(EXPORT_COLUMNS)}")
    return write_table(path, table[list(EXPORT_COLUMNS)])


def _face_title(s: ReviewSet, i: int, rank: int, ranking: str) -> str:
    names = s.class_names
    clean = f"clean {names[s.clean[i]]}" + (" FLIPPED" if s.flipped[i] else "")
    return (f"#{rank + 1} {ranking} {s.scores[ranking][i]:.2f}\ngiven {names[s.given[i]]}\n{clean}\n"
            f"suggests {names[s.suggested[i]]}")


def review_page_figure(s: ReviewSet, *, ranking: str = "score", label: int | str | None = None, page: int = 0,
                       page_size: int = 8):
    """The faces of one page as a static figure (:func:`~ferlib.analysis.plot_review_page`): each face with its
    rank and score, given, clean and suggested label (flipped ones titled in red), and bars of the human votes
    beside the method's distribution. ``label``: the class by given label, an index or a name (None: all)."""
    from .plots import plot_review_page

    if isinstance(label, str):
        if label not in s.class_names:
            raise ValueError(f"unknown class {label!r}; valid: {', '.join(s.class_names)}")
        label = s.class_names.index(label)
    if ranking not in s.scores:
        raise ValueError(f"ranking {ranking!r} is not available for {s.run_id}; valid: {', '.join(s.scores)}")
    order = review_order(s.scores[ranking], s.given, label=label)
    index = page_of(order, page, page_size)
    dists = {"human votes": _as_distribution(s.votes[index], "votes")} if s.votes is not None else {}
    dists[s.label] = s.distribution[index]
    which = "all classes" if label is None else f"given {s.class_names[label]}"
    return plot_review_page(s.faces(index), dists, s.class_names,
                            titles=[_face_title(s, i, page * page_size + r, ranking) for r, i in enumerate(index)],
                            title_colors=["crimson" if s.flipped[i] else "black" for i in index],
                            title=f"{s.title}: {which}, page {page + 1} of {n_pages(len(order), page_size)} "
                                  f"by {ranking} ({len(order)} faces)")
