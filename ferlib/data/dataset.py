"""The one in-memory form every dataset reader returns: :class:`FERData`.

All splits of a dataset live in one object; ``split`` tells which sample belongs where and
:meth:`FERData.subset` cuts one out. Arrays are plain numpy so that noise, metrics and caching
work on them without torch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .storage import MappedImages, iter_chunks, select_rows

__all__ = ["FERData", "SPLITS"]

SPLITS: tuple[str, ...] = ("train", "valid", "test")


@dataclass
class FERData:
    """A facial-expression dataset in ferlib's canonical form.

    Attributes
    ----------
    images : np.ndarray or MappedImages, shape (N, H, W, C), uint8
        Face crops, all resized to one size when read; C is 1 (grayscale) or 3 (RGB). A large dataset read
        through the cache holds them memory-mapped (:class:`~ferlib.data.storage.MappedImages`: read from disk
        when indexed, read-only); read batches with :func:`~ferlib.data.storage.batch_images`.
    labels : np.ndarray, shape (N,), int64
        Label in the canonical class order (:mod:`ferlib.classes`). After noise injection these are
        the *given* (possibly noisy) labels and ``clean_labels`` holds the originals.
    split : np.ndarray, shape (N,), str
        One of ``SPLITS`` per sample.
    ids : np.ndarray, shape (N,), str
        Stable sample id (e.g. ``"FER2013Train/fer0000000.png"``), unique within the dataset.
    classes : tuple of str
        Class names, index = label.
    votes : np.ndarray, shape (N, K), float32, or None
        Human vote counts over the K classes (FERPlus), or None where the dataset has none.
    clean_labels : np.ndarray, shape (N,), int64, or None
        The labels before noise injection; None while ``labels`` are the dataset's own.
    dropped : dict
        ``{split: {reason: count}}`` of every sample the reader left out.
    name : str
        Dataset name (reader), e.g. ``"ferplus"``.
    options : dict
        The reader options that produced this object (label mode, class count, image size, ...).
    """

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    ids: np.ndarray
    classes: tuple[str, ...]
    votes: np.ndarray | None = None
    clean_labels: np.ndarray | None = None
    dropped: dict = field(default_factory=dict)
    name: str = ""
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        for attr in ("images", "split", "ids", "votes", "clean_labels"):
            arr = getattr(self, attr)
            if arr is not None and len(arr) != n:
                raise ValueError(f"{attr} has {len(arr)} rows but labels has {n}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}), got [{self.labels.min()}, {self.labels.max()}]")
        if self.votes is not None and self.votes.shape[1] != len(self.classes):
            raise ValueError(f"votes has {self.votes.shape[1]} columns for {len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def vote_distribution(self) -> np.ndarray | None:
        """Votes normalised to a label distribution, shape (N, K), rows summing to 1 (None without votes)."""
        if self.votes is None:
            return None
        total = self.votes.sum(axis=1, keepdims=True)
        return (self.votes / np.maximum(total, 1e-12)).astype(np.float32)

    @property
    def true_labels(self) -> np.ndarray:
        """The clean labels: ``clean_labels`` after noise injection, else ``labels``."""
        return self.labels if self.clean_labels is None else self.clean_labels

    def subset(self, split: str) -> "FERData":
        """The samples of one split, as a new FERData (``dropped`` restricted to that split)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.select(self.split == split, dropped={split: self.dropped.get(split, {})})

    def select(self, mask_or_index: np.ndarray, **changes) -> "FERData":
        """A new FERData holding the rows chosen by a boolean mask or an index array (memory-mapped images stay
        lazy: nothing is read)."""
        idx = np.asarray(mask_or_index)
        take = lambda a: None if a is None else a[idx]  # noqa: E731
        return dataclasses.replace(
            self, images=select_rows(self.images, idx), labels=self.labels[idx], split=self.split[idx],
            ids=self.ids[idx], votes=take(self.votes), clean_labels=take(self.clean_labels), **changes,
        )

    def with_labels(self, labels: np.ndarray) -> "FERData":
        """A copy whose given labels are ``labels``; the current clean labels are kept in ``clean_labels``."""
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != self.labels.shape:
            raise ValueError(f"labels must have shape {self.labels.shape}, got {labels.shape}")
        return dataclasses.replace(self, labels=labels, clean_labels=self.true_labels.copy())

    def summary(self):
        """Counts per class and split, then the drop reasons: a tidy ``pandas.DataFrame``.

        Columns: ``split``, ``kind`` (``"class"`` or ``"dropped"``), ``name`` (class name or reason), ``count``.
        """
        import pandas as pd

        rows = []
        for s in SPLITS:
            labels = self.labels[self.split == s]
            counts = np.bincount(labels, minlength=self.num_classes) if len(labels) else np.zeros(self.num_classes, int)
            rows += [(s, "class", c, int(n)) for c, n in zip(self.classes, counts)]
            rows += [(s, "dropped", r, int(n)) for r, n in sorted(self.dropped.get(s, {}).items())]
        return pd.DataFrame(rows, columns=["split", "kind", "name", "count"])

    def split_counts(self) -> dict[str, int]:
        """Number of samples per split."""
        counts = Counter(self.split.tolist())
        return {s: counts.get(s, 0) for s in SPLITS}

    def fingerprint(self) -> str:
        """A short content hash (ids, labels, images): the key for caches derived from this data (images read a
        chunk at a time)."""
        h = hashlib.sha1()
        for arr in itertools.chain((self.ids.astype(str), self.labels), iter_chunks(self.images)):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, *, images: bool = True) -> Path:
        """Write to one uncompressed ``.npz`` atomically (temporary file, then rename); ``images=False`` leaves
        the images out (a memory-mapped cache entry keeps them in their own ``.npy``)."""
        from ..results import atomic_savez

        arrays = dict(images=self.images) if images else {}
        arrays.update(labels=self.labels, split=self.split.astype(str), ids=self.ids.astype(str))
        for opt in ("votes", "clean_labels"):
            if getattr(self, opt) is not None:
                arrays[opt] = getattr(self, opt)
        meta = dict(classes=list(self.classes), dropped=self.dropped, name=self.name, options=self.options)
        return atomic_savez(path, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, images: np.ndarray | MappedImages | None = None) -> "FERData":
        """Read a file written by :meth:`save`; ``images`` supplies the images of one saved without them."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            opt = {k: z[k] for k in ("votes", "clean_labels") if k in z.files}
            return cls(images=z["images"] if images is None else images, labels=z["labels"], split=z["split"],
                       ids=z["ids"], classes=tuple(meta["classes"]), dropped=meta["dropped"], name=meta["name"],
                       options=meta["options"], **opt)
