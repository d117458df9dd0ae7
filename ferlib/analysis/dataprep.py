"""Data preparation views: sample faces, the injected noise, landmarks and valence-arousal values."""
from __future__ import annotations

import os
import warnings
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "sample_faces", "noise_table", "noise_examples", "try_landmarks", "va_values", "va_summary",
]


def sample_faces(data, per_class: int = 6, *, split: str = "train", seed: int = 0):
    """Up to ``per_class`` random faces of each class of one split, class by class.

    Returns
    -------
    images : (n, H, W, C) uint8; titles : n class names; rows : (n,) row indices into ``data``.
    """
    rng = np.random.default_rng(seed)
    in_split = np.flatnonzero(data.split == split)
    rows = np.concatenate([rng.permutation(in_split[data.labels[in_split] == k])[:per_class]
                           for k in range(data.num_classes)] or [np.zeros(0, np.int64)]).astype(np.int64)
    return data.images[rows], [data.classes[k] for k in data.labels[rows]], rows


def noise_table(report: Mapping) -> "object":
    """Per-class view of :func:`ferlib.noise.apply_noise`'s report: clean and noisy counts and the flip rate.

    Returns
    -------
    pandas.DataFrame indexed by class name: ``clean_count``, ``noisy_count``, ``flip_rate`` (fraction of the
    class's clean samples whose given label differs).
    """
    import pandas as pd

    train = report["train"]
    return pd.DataFrame({"clean_count": train["counts"]["clean"], "noisy_count": train["counts"]["noisy"],
                         "flip_rate": train["per_class_rate"]}).rename_axis("class")


def noise_examples(data, n: int = 16, *, seed: int = 0):
    """Up to ``n`` random train faces whose given label differs from the clean one.

    Returns
    -------
    images : (m, H, W, C) uint8; titles : m strings ``"clean->given"``.
    """
    train = data.subset("train")
    flipped = np.flatnonzero(train.labels != train.true_labels)
    rows = np.sort(np.random.default_rng(seed).permutation(flipped)[:n])
    names = data.classes
    return train.images[rows], [f"{names[c][:5]}->{names[g][:5]}" for c, g in
                                zip(train.true_labels[rows], train.labels[rows])]


def try_landmarks(data, *, backend: str = "dlib", limit: int | None = 64,
                  cache_dir: str | os.PathLike | None = None):
    """Landmarks of the first ``limit`` train faces through :func:`ferlib.landmarks.extract_landmarks` (cached).

    Returns
    -------
    (landmarks, images, message)
        ``landmarks`` : a ``ferlib.landmarks.Landmarks`` (``points`` (n, 68, 2), ``ok`` (n,)) or None when
        skipped (``backend="none"``) or unavailable (module, dependency or model file missing);
        ``images`` : the (n, H, W, C) faces they belong to; ``message`` : what happened.
    """
    train = data.subset("train")
    images = train.images if limit is None else train.images[:int(limit)]
    if backend in (None, "", "none"):
        return None, images, "landmarks skipped (landmarks_backend='none')"
    try:
        from ..landmarks import extract_landmarks
    except ImportError as exc:
        return None, images, f"ferlib.landmarks unavailable: {exc}"
    subset = train if limit is None else train.select(np.arange(min(int(limit), len(train))))
    try:
        with warnings.catch_warnings():  # the failed faces' warning: the message below counts them
            warnings.filterwarnings("ignore", message=r"landmarks \(", category=RuntimeWarning)
            lm = extract_landmarks(subset, backend=backend, cache_dir=cache_dir, progress=False)
    except (ImportError, OSError, RuntimeError) as exc:  # dependency or model file missing
        return None, images, f"landmarks backend {backend!r} unavailable: {type(exc).__name__}: {exc}"
    ok, n = int(np.sum(lm.ok)), len(lm.ok)
    failed = f"; the other {n - ok} failed and hold the mean shape (ok=False)" if ok < n else ""
    return lm, images, f"{backend}: {ok}/{n} faces with a plausible shape{failed}"


def va_values(data, source: str = "auto", *, root: str | os.PathLike | None = None,
              model_limit: int | None = None):
    """Valence-arousal values of the TRAIN split from an aux source of :mod:`ferlib.va` (the grammar LDLVA's
    ``aux`` uses).

    Parameters
    ----------
    data : FERData.
    source : ``"auto"`` (AffectNet: its annotations; data with votes: the ORACLE vote projection; else none),
        ``"none"``, or an aux source string (:func:`ferlib.va.aux_source_help`): ``"affectnet"`` (the dataset's
        own VA; ``root`` below or ``affectnet:<root>``), ``"oracle_votes"`` (ORACLE: circumplex projection of
        the human votes), ``"csv:<path>"`` (keyed by id), ``"onnx:<path>"`` (a VA regressor), ``"file:<path>"``.
    root : dataset root (for ``affectnet``).
    model_limit : the first n train faces only (None = all), for a source that runs a model on the images
        (``onnx``, ``landmarks``): slow on CPU.

    Returns
    -------
    (values, labels, message) : (n, 2) float32 or None, the (n,) given labels, and a description (``ORACLE``
    flagged). None with the reason as message when the source is unavailable here or gives other than two
    columns (landmarks, features).

    Raises
    ------
    ValueError
        An unknown source string (listing the valid ones).
    """
    train = data.subset("train")
    if source == "auto":
        source = "affectnet" if data.name == "affectnet" else ("oracle_votes" if data.votes is not None else "none")
    if source == "none":
        return None, train.labels, "no auxiliary source"
    from ..va import AuxUnavailable, describe_aux, parse_aux, resolve_aux

    spec, _ = parse_aux(source, where="va_source", kind="va source")
    if model_limit is not None and spec.runs_model:
        train = train.select(np.arange(min(int(model_limit), len(train))))
    try:
        values = resolve_aux(source, train, where="va_source", root=root)
    except (AuxUnavailable, ImportError, FileNotFoundError, KeyError, OSError) as exc:
        return None, train.labels, f"auxiliary source {source!r} unavailable: {type(exc).__name__}: {exc}"
    if values.shape[1] != 2:
        return None, train.labels, f"auxiliary source {source!r} gives {values.shape[1]} columns, not valence-arousal"
    return values, train.labels, describe_aux(source)


def va_summary(values: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> "object":
    """Per-class count, mean and std of (n, 2) valence-arousal values, as a DataFrame."""
    import pandas as pd

    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels)
    rows = []
    for k, name in enumerate(class_names):
        v = values[labels == k]
        rows.append({"class": name, "n": len(v),
                     "valence_mean": v[:, 0].mean() if len(v) else np.nan,
                     "valence_std": v[:, 0].std() if len(v) else np.nan,
                     "arousal_mean": v[:, 1].mean() if len(v) else np.nan,
                     "arousal_std": v[:, 1].std() if len(v) else np.nan})
    return pd.DataFrame(rows)
