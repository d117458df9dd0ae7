"""Embeddings: UMAP of a run's penultimate features, and their silhouette by clean / given label."""
from __future__ import annotations

import warnings

import numpy as np

from .runs import load_runs, saved_features

__all__ = [
    "embed_umap", "run_embeddings", "silhouette",
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


def run_embeddings(run, *, features: dict | None = None, max_points: int | None = 2000,
                   random_state: int = 0) -> dict:
    """UMAP embeddings of one run's test and train features with the labels to colour them by.

    ``features`` : split -> (N, D) features, rows as the read-out's ``ids`` / ``test_ids``
    (:func:`ferlib.inference.run_features` recomputes them from ``model.pt``); None = the ones the run saved
    (:func:`saved_features`). At most ``max_points`` samples per split (a fixed random subset) are embedded.

    Returns
    -------
    dict
        ``test`` : ((n, 2) embedding, {"clean label": (n,)}); ``train`` : ((m, 2) embedding, {"clean label",
        "noisy (given) label", "flipped"}); ``silhouette_test`` / ``silhouette_train_clean`` /
        ``silhouette_train_given`` : :func:`silhouette` of the raw features by those labels; ``index`` : split ->
        (n,) rows of the read-out's ``test_ids`` / ``ids`` embedded (for hover: :func:`run_hover_embedding`).
    """
    run = load_runs(run)[0]
    feats = saved_features(run) if features is None else features
    if not {"train", "test"} <= set(feats):
        raise ValueError(f"{run.path}: no saved features (train.save_features was off); pass "
                         "features=ferlib.inference.run_features(run.path)")
    rng = np.random.default_rng(random_state)

    def pick(n: int) -> np.ndarray:
        return np.sort(rng.choice(n, size=max_points, replace=False)) if max_points and n > max_points else np.arange(n)

    te = pick(len(feats["test"]))
    tr = pick(len(feats["train"]))
    test_y = np.asarray(run.readout["test_labels"])[te]
    clean, given = np.asarray(run.readout["clean"])[tr], np.asarray(run.readout["given"])[tr]
    return {
        "test": (embed_umap(feats["test"][te], random_state=random_state), {"test: clean label": test_y}),
        "train": (embed_umap(feats["train"][tr], random_state=random_state),
                  {"train: clean label": clean, "train: given (noisy) label": given, "train: flipped": given != clean}),
        "silhouette_test": silhouette(feats["test"][te], test_y),
        "silhouette_train_clean": silhouette(feats["train"][tr], clean),
        "silhouette_train_given": silhouette(feats["train"][tr], given),
        "index": {"test": te, "train": tr},
    }


def silhouette(features, labels) -> float:
    """Silhouette score of (N, D) features grouped by (N,) labels (sklearn; NaN with < 2 labels present)."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(labels):
        return float("nan")
    return float(silhouette_score(np.asarray(features, dtype=np.float32), labels))
