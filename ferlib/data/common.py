"""Pieces shared by the dataset readers: the error type, option checks, CSV rows, image decoding, assembly.

A reader parses its label files into :class:`Sample` records (one per usable sample) and a ``dropped``
counter (one reason per left-out sample), then hands both to :func:`assemble`, which decodes the images
(chunk by chunk, into memory or a memory-mapped file: :mod:`ferlib.data.storage`) and builds the
:class:`~ferlib.data.dataset.FERData`.
"""
from __future__ import annotations

import csv
import itertools
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from .dataset import FERData
from .storage import current_store

__all__ = ["DatasetError", "Sample", "new_drops", "check_choice", "check_image_options", "open_text", "iter_csv",
           "decode", "assemble"]

MISSING_CHOICES = ("error", "drop")


class DatasetError(ValueError):
    """A dataset's files are missing, malformed or inconsistent. The message names the file (and 1-based line)."""


@dataclass
class Sample:
    """One labelled sample whose image is still to be decoded.

    Attributes
    ----------
    split : str
        ``"train"``, ``"valid"`` or ``"test"``.
    id : str
        Stable sample id, unique within the dataset.
    label : int
        Canonical label (:mod:`ferlib.classes` order).
    where : str
        The label file and line that list the sample (``"…/label.csv, line 3"``), for error messages.
    image : Path or np.ndarray
        The image file, or the pixels when the dataset stores them inline (shape (H, W), uint8).
    box : tuple of 4 int, optional
        Face box ``(left, top, right, bottom)`` to crop before resizing; None for the whole image.
    box_frame : (width, height), optional
        The image size the box's coordinates refer to; an image of another size is taken as a rescaled copy of
        that frame and the box is scaled with it (FERPlus: the 48x48 FER2013 frame, so a 96x96 copy keeps its
        whole face). None: the box is in the image's own pixels.
    votes : np.ndarray, shape (K,), float32, optional
        Human vote counts over the K classes.
    """

    split: str
    id: str
    label: int
    where: str
    image: Path | np.ndarray
    box: tuple[int, int, int, int] | None = None
    votes: np.ndarray | None = None
    box_frame: tuple[int, int] | None = None


def new_drops() -> defaultdict[str, Counter]:
    """An empty ``{split: Counter(reason -> count)}`` for a reader to fill."""
    return defaultdict(Counter)


def check_choice(name: str, value, choices: Sequence):
    """Return ``value`` if it is one of ``choices``, else raise ValueError naming the parameter and the choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_image_options(image_size: int | None, channels: int, on_missing: str = "error") -> None:
    """Validate the options every reader shares."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                                   or image_size < 1):
        raise ValueError(f"image_size must be a positive int (or None for the native size); got {image_size!r}")
    check_choice("channels", channels, (1, 3))
    check_choice("on_missing", on_missing, MISSING_CHOICES)


def open_text(path: Path):
    """Open a label file for reading as UTF-8 text, a leading byte-order mark dropped (spreadsheet programs save
    CSV with one; read as data, it would prefix the first name or column header with ``\\ufeff``)."""
    return open(path, newline="", encoding="utf-8-sig")


def iter_csv(path: Path, *, ncols: int | None = None, required: Sequence[str] | None = None
             ) -> Iterator[tuple[int, list[str] | dict[str, str]]]:
    """Rows of a CSV file with their 1-based line numbers, checking the column count.

    Parameters
    ----------
    path : Path
        The CSV file.
    ncols : int, optional
        Header-less file: every row must have exactly this many fields; rows are yielded as lists.
    required : sequence of str, optional
        The first line is a header that must contain these columns; rows are yielded as dicts and must have
        as many fields as the header.

    Yields
    ------
    (line, row) : (int, list or dict)
        Blank lines are skipped.
    """
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    with open_text(path) as f:
        reader = csv.reader(f)
        header = None
        if required is not None:
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(f"{path}, line 1: header lacks column(s) {', '.join(missing)}; "
                                   f"expected {', '.join(required)}; got {', '.join(header) or '(empty)'}")
            ncols = len(header)
        for row in reader:
            if not row:
                continue
            if len(row) != ncols:
                raise DatasetError(f"{path}, line {reader.line_num}: expected {ncols} columns, got {len(row)}")
            yield reader.line_num, (row if header is None else dict(zip(header, row)))


def decode(source: Path | np.ndarray, *, image_size: int | None, channels: int,
           box: tuple[int, int, int, int] | None = None, box_frame: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image with PIL, crop it to ``box``, resize it (bilinear) and convert it to ``channels``.

    ``box`` is scaled from ``box_frame`` to the image's size when given (see :class:`Sample`); a box reaching
    past the image is clipped to it, and one that keeps less than half of its area inside raises ValueError.

    Returns
    -------
    np.ndarray, shape (H, W, channels), uint8
        H = W = ``image_size`` unless it is None (native size, after the crop).
    """
    im = Image.fromarray(source) if isinstance(source, np.ndarray) else Image.open(source)
    with im:
        im = im.convert("L" if channels == 1 else "RGB")
        if box is not None:
            box = _fit_box(box, box_frame, im.width, im.height)
            if box != (0, 0, im.width, im.height):
                im = im.crop(box)
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def _fit_box(box, frame, width: int, height: int) -> tuple[int, int, int, int]:
    if frame is not None and frame != (width, height):
        sx, sy = width / frame[0], height / frame[1]
        box = (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))
    left, top, right, bottom = box
    inside = (max(left, 0), max(top, 0), min(right, width), min(bottom, height))
    area = lambda b: max(b[2] - b[0], 0) * max(b[3] - b[1], 0)  # noqa: E731
    if area(inside) * 2 < area(box):
        raise ValueError(f"face box {tuple(box)} lies mostly outside the {width}x{height} image")
    return inside


def _drop_missing(samples: Sequence[Sample], dropped, on_missing: str) -> list[Sample]:
    """The samples whose image exists (inline pixels always do); a missing one raises DatasetError naming it and
    its label file line or, with ``on_missing="drop"``, is counted in ``dropped`` as ``"missing image"``."""
    kept = []
    for s in samples:
        if isinstance(s.image, np.ndarray) or s.image.exists():
            kept.append(s)
        elif not str(s.image).isprintable():
            raise DatasetError(f"missing image {str(s.image)!r} (listed in {s.where}): its name holds invisible "
                               "characters; check the label file's encoding (save it as plain UTF-8 text)")
        elif on_missing == "error":
            raise DatasetError(f"missing image {s.image} (listed in {s.where}); "
                               "pass on_missing='drop' to leave such samples out")
        else:
            dropped[s.split]["missing image"] += 1
    return kept


def _check_samples(kept: Sequence[Sample], splits: Sequence[str], dropped, source: str) -> None:
    """Raise DatasetError on duplicate ids or a split left without samples."""
    counts = Counter(s.split for s in kept)
    for split in splits:
        if counts[split] == 0:
            raise DatasetError(f"split {split!r} of {source} has no usable samples "
                               f"(dropped: {dict(dropped.get(split, {})) or 'none'})")
    ids = Counter(s.id for s in kept)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        raise DatasetError(f"{source}: duplicate sample id(s) {', '.join(dup[:5])}")


def _decode_one(s: Sample, *, image_size: int | None, channels: int) -> np.ndarray:
    try:
        return decode(s.image, image_size=image_size, channels=channels, box=s.box, box_frame=s.box_frame)
    except Exception as e:  # PIL raises several types for corrupt files; re-raise naming the file
        raise DatasetError(f"cannot read image {s.image} (listed in {s.where}): {e}") from e


def _decode_chunks(samples: Sequence[Sample], shape: tuple[int, ...], *, chunk_size: int, image_size: int | None,
                   channels: int, progress: bool, name: str) -> Iterator[np.ndarray]:
    """The samples' images decoded ``chunk_size`` at a time, in order; each chunk is built in place, so decoding
    holds one chunk (and one image) at a time.

    Yields
    ------
    np.ndarray, shape (c, *shape), uint8
        c <= ``chunk_size``; ``shape`` (H, W, channels) is the first image's.
    """
    if progress:
        from tqdm.auto import tqdm
        samples = tqdm(samples, desc=f"reading {name}", unit="img")
    it = iter(samples)
    while batch := list(itertools.islice(it, chunk_size)):
        yield _decode_batch(batch, samples[0], shape, image_size=image_size, channels=channels)


def _decode_batch(batch: Sequence[Sample], first: Sample, shape: tuple[int, ...], *, image_size: int | None,
                  channels: int) -> np.ndarray:
    """The images of ``batch`` as one array (len(batch), *shape) uint8; an image of another shape raises
    DatasetError naming it and ``first`` (whose image has ``shape``)."""
    out = np.empty((len(batch),) + shape, np.uint8)
    for i, s in enumerate(batch):
        img = _decode_one(s, image_size=image_size, channels=channels)
        if img.shape != shape:
            raise DatasetError(f"image {s.image} (listed in {s.where}) has shape {img.shape} but "
                               f"{first.image} has {shape}; pass image_size=... to resize all")
        out[i] = img
    return out


def assemble(samples: Sequence[Sample], dropped, *, name: str, classes: Sequence[str], splits: Sequence[str],
             options: dict, image_size: int | None, channels: int, on_missing: str = "error",
             progress: bool = False, source: str | os.PathLike = "") -> FERData:
    """Decode the samples' images and build the :class:`FERData`.

    Missing images are dropped or reported before anything is decoded; the images are then decoded a chunk at a
    time into the active :class:`~ferlib.data.storage.ImageStore`: an in-memory array, or (for a large dataset
    read through the cache) a ``.npy`` file returned memory-mapped, so the build holds one chunk at a time.

    Parameters
    ----------
    samples : sequence of Sample
        The usable samples, in output order.
    dropped : dict
        ``{split: Counter}`` of samples already left out; missing images are added here when
        ``on_missing="drop"``.
    name, classes, options
        Copied into the FERData.
    splits : sequence of str
        The splits this dataset defines; each must keep at least one sample.
    image_size, channels, on_missing, progress
        See the readers.
    source : str or PathLike
        The dataset root, for error messages.
    """
    kept = _drop_missing(samples, dropped, on_missing)
    _check_samples(kept, splits, dropped, str(source))
    shape = _decode_one(kept[0], image_size=image_size, channels=channels).shape  # decoded again with the rest
    store = current_store()
    images = store.collect((len(kept),) + shape, _decode_chunks(
        kept, shape, chunk_size=store.chunk_size, image_size=image_size, channels=channels, progress=progress,
        name=name))
    votes = None if kept[0].votes is None else np.stack([s.votes for s in kept]).astype(np.float32)
    return FERData(
        images=images, labels=np.array([s.label for s in kept], dtype=np.int64),
        split=np.array([s.split for s in kept]), ids=np.array([s.id for s in kept]), classes=tuple(classes),
        votes=votes, dropped={s: {r: int(n) for r, n in sorted(dropped.get(s, {}).items())} for s in splits},
        name=name, options=dict(options),
    )
