"""Data every registered method accepts, without a dataset or a landmark detector: seeded synthetic images with
human votes, and stub arrays for the per-sample source files some methods read (LA-Net's landmarks, LDLVA's
auxiliary space). The method contract test (``tests/test_method_contract.py``) uses the same stubs."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..classes import CLASSES_8
from ..data.dataset import FERData
from ..methods import method_class

__all__ = ["synthetic_data", "STUB_SOURCES", "stub_source_options"]


def synthetic_data(n: int, *, image_size: int = 48, channels: int = 1, votes: int = 10, seed: int = 0) -> FERData:
    """A train split of ``n`` random uint8 images (n, image_size, image_size, channels) over the 8 FERPlus
    classes, each with ``votes`` uniformly drawn human votes (N, 8) and the plurality of its votes as label."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, image_size, image_size, channels), dtype=np.uint8)
    counts = rng.multinomial(votes, np.full(len(CLASSES_8), 1 / len(CLASSES_8)), size=n).astype(np.float32)
    return FERData(images=images, labels=counts.argmax(1).astype(np.int64), split=np.full(n, "train"),
                   ids=np.arange(n).astype(str), classes=CLASSES_8, votes=counts, name="synthetic")


def _stub_landmarks(n: int, rng: np.random.Generator) -> np.ndarray:
    points = rng.uniform(0.2, 0.8, (n, 5, 2)).astype(np.float32)
    points[1] = np.nan  # one failed detection
    return points


#: Config fields that name a per-sample source file, and a stub array maker ``(n, rng) -> (n, ...)`` whose rows
#: align with the train split.
STUB_SOURCES = {
    "landmarks": _stub_landmarks,                                                        # LA-Net
    "aux": lambda n, rng: rng.normal(size=(n, 2)).astype(np.float32),                    # LDLVA (VA-like)
}


def stub_source_options(method: str, n: int, folder: str | Path, *, given: dict | None = None,
                        seed: int = 0) -> dict:
    """``{field: path}`` pointing each source field of ``method``'s config that ``given`` (its options) leaves
    unset at a stub ``.npy`` of ``n`` rows written into ``folder``; ``{}`` for a method that reads none."""
    fields = {f.name for f in dataclasses.fields(method_class(method).Config)}
    out = {}
    for field, make in STUB_SOURCES.items():
        if field in fields and field not in (given or {}):
            path = Path(folder) / f"{field}-{n}.npy"
            np.save(path, make(n, np.random.default_rng(seed)))
            out[field] = str(path)
    return out
