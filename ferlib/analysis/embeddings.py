"""Embeddings: UMAP of a run's penultimate features (or, for a committed cell without weights, of the logits its
read-out holds), and their silhouette by clean / given label."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from .runs import load_runs, saved_features

__all__ = [
    "embed_umap", "run_embeddings", "silhouette", "logit_features", "embedding_features", "flip_panels", "fit_groups",
]


def embed_umap(features, *, random_state: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
               metric: str = "euclidean") -> np.ndarray:
    """2-D UMAP embedding (umap-learn, imported on first call) of (N, D) features, reproducible for a seed.

    ``n_neighbors`` is capped at N - 1 for small N. Returns (N, 2) float32.
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"features must be (N, D) with N >= 3, got {x.shape}")
    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state; spectral init on tiny data
        reducer = umap.UMAP(n_neighbors=min(int(n_neighbors), len(x) - 1), min_dist=min_dist, metric=metric,
                            random_state=random_state)
        return reducer.fit_transform(x).astype(np.float32)


def run_embeddings(run, *, features: dict | None = None, max_points: int | None = 2000, random_state: int = 0,
                   splits: tuple[str, ...] = ("test", "train")) -> dict:
    """UMAP embeddings of one run's test and train features with the labels to colour them by.

    ``features`` : split -> (N, D) features, rows as the read-out's ``ids`` / ``test_ids``
    (:func:`embedding_features`: the saved ones, those recomputed from ``model.pt``, or the read-out's logits);
    None = the ones the run saved (:func:`saved_features`). At most ``max_points`` samples per split (a fixed
    random subset) are embedded. ``splits`` : which of ``test`` and ``train`` to embed.

    Returns
    -------
    dict, for the splits asked
        ``test`` : ((n, 2) embedding, {"clean label": (n,)}); ``train`` : ((m, 2) embedding, {"clean label",
        "noisy (given) label", "flipped"}); ``silhouette_test`` / ``silhouette_train_clean`` /
        ``silhouette_train_given`` : :func:`silhouette` of the raw features by those labels; ``index`` : split ->
        (n,) rows of the read-out's ``test_ids`` / ``ids`` embedded (for hover: :func:`run_hover_embedding`).
    """
    run = load_runs(run)[0]
    feats = saved_features(run) if features is None else features
    if not set(splits) <= set(feats):
        raise ValueError(f"{run.path}: no saved features (train.save_features was off); pass "
                         "features=embedding_features(run)[0]")
    rng = np.random.default_rng(random_state)

    def pick(n: int) -> np.ndarray:
        return np.sort(rng.choice(n, size=max_points, replace=False)) if max_points and n > max_points else np.arange(n)

    out: dict = {"index": {}}
    if "test" in splits:
        te = out["index"]["test"] = pick(len(feats["test"]))
        test_y = np.asarray(run.readout["test_labels"])[te]
        out["test"] = (embed_umap(feats["test"][te], random_state=random_state), {"test: clean label": test_y})
        out["silhouette_test"] = silhouette(feats["test"][te], test_y)
    if "train" in splits:
        tr = out["index"]["train"] = pick(len(feats["train"]))
        clean, given = np.asarray(run.readout["clean"])[tr], np.asarray(run.readout["given"])[tr]
        out["train"] = (embed_umap(feats["train"][tr], random_state=random_state),
                        {"train: clean label": clean, "train: given (noisy) label": given,
                         "train: flipped": given != clean})
        out["silhouette_train_clean"] = silhouette(feats["train"][tr], clean)
        out["silhouette_train_given"] = silhouette(feats["train"][tr], given)
    return out


def logit_features(run) -> dict[str, np.ndarray]:
    """The final model's logits on the train and test splits, from the read-out (split -> (N, K) float32): what a
    run folder without weights or saved features (a study's committed cell) still has to embed."""
    run = load_runs(run)[0]
    return {s: np.asarray(run.readout[f"{s}_logits"], dtype=np.float32) for s in ("train", "test")
            if f"{s}_logits" in run.readout}


def embedding_features(run) -> tuple[dict[str, np.ndarray], str]:
    """What to embed of a run, the best it has: ``(split -> (N, D) features, where they come from)``.

    The penultimate features the run saved (``train.save_features``), else those recomputed from its
    ``model.pt`` (:func:`ferlib.inference.run_features`, inference only), else the logits of its read-out
    (:func:`logit_features`: K dimensions, what the classifier made of the features).
    """
    from ..rundir import MODEL

    run = load_runs(run)[0]
    saved = saved_features(run)
    if {"train", "test"} <= set(saved):
        return saved, "penultimate features (saved)"
    if (run.path / MODEL).is_file():
        from ..inference import run_features

        return run_features(run.path), "penultimate features (model.pt)"
    return logit_features(run), "logits (read-out)"


def flip_panels(runs, *, noises: Sequence[str] = (), max_points: int | None = 2000, random_state: int = 0,
                with_test: int = 0) -> dict:
    """Embeddings of one run per (noise setting, method) with flipped labels, for a page of panels
    (:func:`~ferlib.analysis.plot_embedding_grid`).

    Parameters
    ----------
    runs : a runs folder or RunRecords; the lowest seed of each (noise, method) is taken.
    noises : the noise settings to embed, in this order (empty: every setting with a flipped label, in the
        runs' order).
    with_test : how many runs of the first noise setting (in method order) embed their test split too, for
        figures of their own.

    Returns
    -------
    dict ``(noise, method) -> (run, embeddings of :func:`run_embeddings`, the features' source)``; ``method`` is
    the registry name.
    """
    chosen: dict = {}
    for run in sorted(load_runs(runs), key=lambda r: r.result.get("seed") or 0):
        noise = str(run.result.get("noise"))
        if run.flipped.any() and (not noises or noise in noises):
            chosen.setdefault((noise, run.result["method"]), run)
    order = list(noises) or list(dict.fromkeys(n for n, _ in chosen))
    out = {}
    for k, key in enumerate(sorted(chosen, key=lambda k: order.index(k[0]))):
        run = chosen[key]
        feats, source = embedding_features(run)
        splits = ("test", "train") if key[0] == order[0] and k < with_test else ("train",)
        out[key] = (run, run_embeddings(run, features=feats, max_points=max_points, random_state=random_state,
                                        splits=splits), source)
    return out


def silhouette(features, labels) -> float:
    """Silhouette score of (N, D) features grouped by (N,) labels (sklearn; NaN with < 2 labels present)."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(labels):
        return float("nan")
    return float(silhouette_score(np.asarray(features, dtype=np.float32), labels))


def fit_groups(readout, rows=None) -> np.ndarray:
    """What the final model makes of each train face's label (rows ``rows`` of a read-out; None: all):
    ``"clean"`` (the given label is the clean one), else for a flipped label ``"memorised"`` (predicted as the
    flipped, given label), ``"recovered"`` (predicted as the clean label) or ``"other"``. Returns (n,) str."""
    rows = np.arange(len(readout["given"])) if rows is None else np.asarray(rows)
    given, clean = np.asarray(readout["given"])[rows], np.asarray(readout["clean"])[rows]
    pred = np.asarray(readout["train_logits"])[rows].argmax(1)
    return np.where(given == clean, "clean", np.where(pred == given, "memorised",
                                                      np.where(pred == clean, "recovered", "other")))
