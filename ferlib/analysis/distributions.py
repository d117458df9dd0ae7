"""Label distributions: the label-distribution-learning measures (Chebyshev, Clark, Canberra, KL, cosine,
intersection, JS), a run's recovered distribution against the human votes, top-1, and their mean ± std over seeds."""
from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

from .runs import RunRecord, class_names_for, images_by_id, load_runs, run_dataset, run_start
from .seeds import seed_summary

__all__ = [
    "softmax", "kl_divergence", "js_divergence", "chebyshev_distance", "clark_distance", "canberra_distance",
    "cosine_similarity", "intersection_similarity", "LDL_MEASURES", "recovered_distribution",
    "label_distribution_metrics", "label_distribution_table", "label_distribution_summary", "choose_faces",
    "distribution_examples",
]


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of (N, K) logits; rows sum to 1."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _as_distribution(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, K), got {arr.shape}")
    if not np.all(np.isfinite(arr)) or (arr.size and arr.min() < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    total = arr.sum(1, keepdims=True)
    return np.divide(arr, total, out=np.zeros_like(arr), where=total > 0)


def _pair(p, q) -> tuple[np.ndarray, np.ndarray]:
    """``p`` and ``q`` as (N, K) distributions of the same shape (rows normalised)."""
    p, q = _as_distribution(p, "p"), _as_distribution(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    return p, q


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` elementwise, 0 where ``den`` is 0 (a class neither distribution gives mass to)."""
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def kl_divergence(p, q, *, eps: float = 1e-12) -> np.ndarray:
    """Row-wise Kullback-Leibler divergence ``KL(p || q) = sum_k p_k log(p_k / q_k)`` in nats.

    Parameters
    ----------
    p, q : (N, K) non-negative; each row is normalised to sum to 1 (counts are fine).
    eps : floor of ``q`` (a class with p_k > 0 and q_k = 0 gives a large finite value, not inf).

    Returns
    -------
    (N,) float64, >= 0; 0 iff the rows are equal. Terms with p_k = 0 contribute 0.
    """
    p, q = _pair(p, q)
    ratio = np.log(np.maximum(p, eps)) - np.log(np.maximum(q, eps))
    return np.maximum(np.where(p > 0, p * ratio, 0.0).sum(1), 0.0)


def js_divergence(p, q) -> np.ndarray:
    """Row-wise Jensen-Shannon divergence ``(KL(p || m) + KL(q || m)) / 2``, ``m = (p + q) / 2``, in nats.

    Symmetric, finite and bounded by ``log 2``; 0 iff the rows are equal.

    Parameters
    ----------
    p, q : (N, K) non-negative; rows normalised to sum to 1.

    Returns
    -------
    (N,) float64 in [0, log 2].
    """
    p, q = _pair(p, q)
    m = (p + q) / 2
    return np.clip((kl_divergence(p, m) + kl_divergence(q, m)) / 2, 0.0, math.log(2))


# The measures of Geng, "Label Distribution Learning", IEEE TKDE 28(7), 2016, Table 2: P = p (the real, human
# distribution), Q = q (the prediction), j = k (the class). Each takes (N, K) non-negative arrays whose rows are
# normalised to sum to 1 (counts are fine) and returns (N,) float64.
def chebyshev_distance(p, q) -> np.ndarray:
    """Chebyshev distance ``max_k |p_k - q_k|`` (Geng 2016, Table 2): in [0, 1], lower is better, 0 iff equal."""
    p, q = _pair(p, q)
    return np.abs(p - q).max(1)


def clark_distance(p, q) -> np.ndarray:
    """Clark distance ``sqrt(sum_k (p_k - q_k)^2 / (p_k + q_k)^2)`` (Geng 2016, Table 2).

    In [0, sqrt(K)], lower is better, 0 iff equal; classes with ``p_k + q_k = 0`` contribute 0.
    """
    p, q = _pair(p, q)
    return np.sqrt(_ratio((p - q) ** 2, (p + q) ** 2).sum(1))


def canberra_distance(p, q) -> np.ndarray:
    """Canberra distance ``sum_k |p_k - q_k| / (p_k + q_k)`` (Geng 2016, Table 2).

    In [0, K], lower is better, 0 iff equal; classes with ``p_k + q_k = 0`` contribute 0.
    """
    p, q = _pair(p, q)
    return _ratio(np.abs(p - q), p + q).sum(1)


def cosine_similarity(p, q) -> np.ndarray:
    """Cosine similarity ``sum_k p_k q_k / (||p|| ||q||)`` (Geng 2016, Table 2): in [0, 1], higher is better, 1 iff
    equal (0 for an all-zero row)."""
    p, q = _pair(p, q)
    return _ratio((p * q).sum(1), np.linalg.norm(p, axis=1) * np.linalg.norm(q, axis=1))


def intersection_similarity(p, q) -> np.ndarray:
    """Intersection similarity ``sum_k min(p_k, q_k)`` (Geng 2016, Table 2): in [0, 1], higher is better, 1 iff
    equal."""
    p, q = _pair(p, q)
    return np.minimum(p, q).sum(1)


#: The label-distribution measures reported, in Geng's (2016, Table 2) order and then JS: name ->
#: (function of (human, predicted) (N, K) distributions returning (N,), ``"lower"`` or ``"higher"`` is better).
LDL_MEASURES: Mapping[str, tuple[Callable[..., np.ndarray], str]] = {
    "chebyshev": (chebyshev_distance, "lower"),
    "clark": (clark_distance, "lower"),
    "canberra": (canberra_distance, "lower"),
    "kl": (kl_divergence, "lower"),
    "cosine": (cosine_similarity, "higher"),
    "intersection": (intersection_similarity, "higher"),
    "js": (js_divergence, "lower"),
}
#: The measures also given for the one-hot given labels: all but KL, which is infinite against a one-hot label
#: wherever the votes disagree (the ``eps`` floor would decide its value).
_GIVEN_MEASURES = tuple(m for m in LDL_MEASURES if m != "kl") + ("top1",)


def recovered_distribution(readout: Mapping[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """A run's label distribution over its train samples.

    The method's own estimate where it keeps one (``method_target`` (N, K): LA-Net's and LDLVA's
    distributions), else the softmax of the final model's train logits.

    Returns
    -------
    dist : (N, K) float64, rows summing to 1.
    source : ``"method_target"`` or ``"softmax(train_logits)"``.
    """
    target = readout.get("method_target")
    k = np.asarray(readout["train_logits"]).shape
    if target is not None and np.ndim(target) == 2 and np.shape(target) == k and np.isfinite(target).all():
        return _as_distribution(target, "method_target"), "method_target"
    return softmax(readout["train_logits"]), "softmax(train_logits)"


def label_distribution_metrics(pred_dist, votes, majority) -> dict[str, float]:
    """How close predicted label distributions are to human vote distributions.

    Parameters
    ----------
    pred_dist : (N, K) predicted distributions (rows normalised here).
    votes : (N, K) human vote counts or distributions (rows normalised here). Rows without any vote are left out.
    majority : (N,) int, the reference label (the dataset's majority / plurality label).

    Returns
    -------
    dict, each measure of :data:`LDL_MEASURES` averaged over the samples, the human distribution as the
    reference (``measure(votes, pred)``; NaN when no sample has a vote):
        ``chebyshev`` (lower is better, in [0, 1]), ``clark`` (lower), ``canberra`` (lower), ``kl`` (KL(votes ||
        pred) in nats, lower), ``cosine`` (higher, in [0, 1]), ``intersection`` (higher, in [0, 1]), ``js``
        (Jensen-Shannon divergence in nats, lower, in [0, log 2]);
        ``top1`` : fraction of samples whose argmax of ``pred_dist`` equals ``majority``,
        ``n`` : number of samples used.
    """
    pred, hum = _as_distribution(pred_dist, "pred_dist"), _as_distribution(votes, "votes")
    majority = np.asarray(majority)
    if pred.shape != hum.shape or majority.shape != (len(pred),):
        raise ValueError(f"shapes disagree: pred_dist {pred.shape}, votes {hum.shape}, majority {majority.shape}")
    keep = hum.sum(1) > 0
    if not keep.any():
        return {**dict.fromkeys(LDL_MEASURES, float("nan")), "top1": float("nan"), "n": 0}
    pred, hum, majority = pred[keep], hum[keep], majority[keep]
    return {**{name: float(measure(hum, pred).mean()) for name, (measure, _) in LDL_MEASURES.items()},
            "top1": float((pred.argmax(1) == majority).mean()), "n": int(keep.sum())}


def _run_votes(run: RunRecord) -> np.ndarray | None:
    data = run_dataset(run)
    if data.votes is None:
        return None
    return np.asarray(data.votes[images_by_id(data, run.readout["ids"])], dtype=np.float64)


def label_distribution_table(runs) -> "object":
    """Recovered label distributions of each run measured against the human votes, over its train split.

    Parameters
    ----------
    runs : runs folder, or RunRecords / run directories.

    Returns
    -------
    pandas.DataFrame, one row per run: ``run_id, method, oracle, noise, seed, start`` (:func:`run_start`:
    ``"random"``, ``"ssl"`` or a weights file), ``source`` (see :func:`recovered_distribution`), ``chebyshev, clark,
    canberra, kl, cosine, intersection, js, top1, n`` (:func:`label_distribution_metrics`, reference label = the
    clean label, i.e. the dataset's majority / plurality of the votes), and the same but KL for the one-hot GIVEN
    labels as a floor: ``<measure>_given`` and ``top1_given`` (= 1 - realised noise rate). Runs on data without
    votes get NaN and ``n = 0``.
    """
    import pandas as pd

    rows = []
    for run in load_runs(runs):
        dist, source = recovered_distribution(run.readout)
        votes = _run_votes(run)
        votes = np.zeros_like(dist) if votes is None else votes  # no vote anywhere: every measure NaN, n = 0
        clean, given = run.readout["clean"], np.eye(dist.shape[1])[run.readout["given"]]
        floor = label_distribution_metrics(given, votes, clean)
        rows.append({"run_id": run.run_id, "method": run.label, "oracle": bool(run.result.get("oracle")),
                     "noise": run.result.get("noise"), "seed": run.result.get("seed"),
                     "start": run_start(run), "source": source,
                     **label_distribution_metrics(dist, votes, clean),
                     **{f"{name}_given": floor[name] for name in _GIVEN_MEASURES}})
    return pd.DataFrame(rows)


def label_distribution_summary(table) -> "object":
    """:func:`label_distribution_table` averaged over seeds: one row per ``method, noise, start, source``, with
    ``n_seeds, seeds, n_runs`` and ``<measure>_mean``, ``<measure>_std`` (ddof = 1; NaN for one seed) of every
    measure (:data:`LDL_MEASURES`), ``top1`` and the given labels' ``<measure>_given``, ``top1_given``."""
    metrics = [*LDL_MEASURES, "top1", *(f"{name}_given" for name in _GIVEN_MEASURES)]
    return seed_summary(table, ("method", "noise", "start", "source"), metrics)


def choose_faces(readout: Mapping[str, np.ndarray], n: int, *, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` train samples to show: mislabelled ones (given != clean) first, then others, each at random.

    Returns
    -------
    (min(n, N),) int64 indices into the readout's train arrays.
    """
    flipped = np.asarray(readout["given"]) != np.asarray(readout["clean"])
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(flipped)), rng.permutation(np.flatnonzero(~flipped))])
    return order[:max(int(n), 0)].astype(np.int64)


def distribution_examples(runs, n: int = 6, *, seed: int = 0):
    """Faces and their label distributions side by side: the human votes and every run trained on the same labels.

    The reference is the first run trained on flipped labels (else the first run); runs with the same train
    ids and given labels join it (one setting of noise and seed, different methods). Faces come from
    :func:`choose_faces` (mislabelled first).

    Returns
    -------
    images : (n, H, W, C) uint8.
    distributions : dict name -> (n, K): ``"human votes"`` (when the data has votes), then one per run
        (:func:`recovered_distribution`).
    titles : n strings ``"given X\\nclean Y"`` (a third line ``FLIPPED`` where they differ).
    """
    runs = load_runs(runs)
    if not runs:
        raise ValueError("no finished run to take label distributions from")
    first = next((r for r in runs if r.flipped.any()), runs[0])
    ref = first.readout
    same = [r for r in runs if np.array_equal(r.readout["ids"], ref["ids"])
            and np.array_equal(r.readout["given"], ref["given"])]
    idx = choose_faces(ref, n, seed=seed)
    data = run_dataset(first)
    rows = images_by_id(data, ref["ids"][idx])
    names = class_names_for(first)
    dists: dict[str, np.ndarray] = {}
    if data.votes is not None:
        dists["human votes"] = _as_distribution(data.votes[rows], "votes")
    for r in same:
        key = r.label if r.label not in dists else f"{r.label} [{r.run_id}]"
        dists[key] = recovered_distribution(r.readout)[0][idx]
    titles = [f"given {names[g]}\nclean {names[c]}{chr(10) + 'FLIPPED' if g != c else ''}"
              for g, c in zip(ref["given"][idx], ref["clean"][idx])]
    return data.images[rows], dists, titles
