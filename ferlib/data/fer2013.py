"""The original Kaggle ``fer2013.csv`` (inline pixels) labelled by FERPlus's ``fer2013new.csv`` votes, or by its
own original single labels.

The two files are joined row by row (both list the 35,887 FER2013 images in the same order). By default the
labels come from the FERPlus votes with the same rules as :func:`~ferlib.data.ferplus.read_ferplus`; with
``mode="original"`` they are FER2013's own ``emotion`` column (one crowd label per face, the labels FERPlus's
relabelling corrected), on the same faces, so a model can be scored on the labels before and after the
correction (cross-dataset evaluation, :mod:`ferlib.cross_eval`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..classes import class_index, class_names
from .common import DatasetError, Sample, assemble, check_choice, check_image_options, iter_csv, new_drops
from .ferplus import BOX_FRAME, FERPLUS_DIRS, LABEL_MODES, VOTE_COLUMNS, parse_votes, vote_samples
from .registry import register_dataset

__all__ = ["read_fer2013", "USAGE_SPLITS", "FER2013_EMOTIONS", "MODES"]

USAGE_SPLITS: dict[str, str] = {"Training": "train", "PublicTest": "valid", "PrivateTest": "test"}
#: FER2013's ``emotion`` codes 0-6 (Goodfellow et al., 2013; the Kaggle challenge's order).
FER2013_EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
#: Label rules: FERPlus's vote rules, or FER2013's original single label.
MODES: tuple[str, ...] = (*LABEL_MODES, "original")
_SIDE = 48


def _usage(value: str, where: str) -> str:
    split = USAGE_SPLITS.get(value.strip())
    if split is None:
        raise DatasetError(f"{where}: unknown Usage {value!r}; valid: {', '.join(USAGE_SPLITS)}")
    return split


def _pixels(text: str, where: str) -> np.ndarray:
    """2304 space-separated ints in [0, 255] -> (48, 48) uint8."""
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise DatasetError(f"{where}: pixels must be space-separated integers") from None
    if values.size != _SIDE * _SIDE:
        raise DatasetError(f"{where}: expected {_SIDE * _SIDE} pixel values, got {values.size}")
    if values.min() < 0 or values.max() > 255:
        raise DatasetError(f"{where}: pixel values must lie in [0, 255], got [{values.min()}, {values.max()}]")
    return values.astype(np.uint8).reshape(_SIDE, _SIDE)


def _joined_rows(pixels_csv: Path, votes_csv: Path) -> dict[str, list[dict]]:
    """Rows of the two files joined by position, grouped by split; rows without a face are marked (votes None)."""
    pix = list(iter_csv(pixels_csv, required=("emotion", "pixels", "Usage")))
    new = list(iter_csv(votes_csv, required=("Usage", "Image name") + VOTE_COLUMNS))
    if len(pix) != len(new):
        raise DatasetError(f"{pixels_csv} has {len(pix)} data rows but {votes_csv} has {len(new)}; "
                           "they must list the same images in the same order")
    rows: dict[str, list[dict]] = {s: [] for s in FERPLUS_DIRS}
    for (pline, p), (nline, n) in zip(pix, new):
        pwhere, nwhere = f"{pixels_csv}, line {pline}", f"{votes_csv}, line {nline}"
        split = _usage(p["Usage"], pwhere)
        if _usage(n["Usage"], nwhere) != split:
            raise DatasetError(f"{nwhere}: Usage {n['Usage']!r} differs from {p['Usage']!r} at {pwhere}")
        name = n["Image name"].strip()
        rows[split].append(dict(
            id=f"{FERPLUS_DIRS[split]}/{name}", where=pwhere, image=p["pixels"], box=None, emotion=p["emotion"],
            votes=parse_votes([n[c] for c in VOTE_COLUMNS], nwhere) if name else None))
    return rows


@register_dataset("fer2013")
def read_fer2013(root: str | Path, *, mode: str = "plurality", num_classes: int = 8, image_size: int | None = 48,
                 channels: int = 1, pixels_csv: str = "fer2013.csv", votes_csv: str = "fer2013new.csv",
                 progress: bool = False):
    """Read ``fer2013.csv`` with FERPlus labels from ``fer2013new.csv``.

    Parameters
    ----------
    root : str or Path
        Folder holding both CSV files.
    mode : {"plurality", "majority", "original"}
        Vote-to-label rule, see :func:`~ferlib.data.ferplus.votes_to_labels` (default plurality, as FERPlus), or
        ``"original"``: FER2013's own ``emotion`` column (:data:`FER2013_EMOTIONS`, mapped by name), on the faces
        FERPlus kept (a non-empty ``Image name``), whatever their votes; no FER2013 label is contempt.
    num_classes : {7, 8}
        8 keeps contempt; 7 drops contempt images (vote modes) and the contempt vote column.
    image_size : int or None
        Side of the square output images (bilinear resize); None or 48 keeps 48x48.
    channels : {1, 3}
        1 = grayscale, 3 = RGB (gray replicated).
    pixels_csv, votes_csv : str
        File names (relative to ``root``) of the Kaggle file (columns ``emotion, pixels, Usage``) and of the
        FERPlus file (``Usage, Image name`` and the 10 vote columns).
    progress : bool
        Show a tqdm progress bar while converting.

    Returns
    -------
    FERData
        Same form as :func:`~ferlib.data.ferplus.read_ferplus`, with the same ids
        (``"FER2013Train/fer0000000.png"``); Usage Training/PublicTest/PrivateTest -> train/valid/test.
        Rows with an empty ``Image name`` are dropped as ``"no face (empty image name)"``.

    Raises
    ------
    DatasetError
        Missing file, different row counts, malformed row or pixels (file and line named), empty split.
    """
    root = Path(root)
    check_choice("mode", mode, MODES)
    check_choice("num_classes", num_classes, (7, 8))
    check_image_options(image_size, channels)
    dropped, samples = new_drops(), []
    for split, rows in _joined_rows(root / pixels_csv, root / votes_csv).items():
        faces = [r for r in rows if r["votes"] is not None]
        if len(faces) < len(rows):
            dropped[split]["no face (empty image name)"] += len(rows) - len(faces)
        samples += (original_samples(split, faces, num_classes) if mode == "original"
                    else vote_samples(split, faces, dropped, mode=mode, num_classes=num_classes))
    for s in samples:
        s.image = _pixels(s.image, s.where)
    options = dict(mode=mode, num_classes=num_classes, image_size=image_size, channels=channels,
                   pixels_csv=pixels_csv, votes_csv=votes_csv)
    return assemble(samples, dropped, name="fer2013", classes=class_names(num_classes), splits=list(FERPLUS_DIRS),
                    options=options, image_size=image_size, channels=channels, progress=progress, source=root)


def original_samples(split: str, rows: list[dict], num_classes: int) -> list[Sample]:
    """The rows of one split labelled by FER2013's ``emotion`` code (0-6, :data:`FER2013_EMOTIONS`), with their
    FERPlus votes over ``num_classes`` emotions kept beside (float32). A code outside 0-6 is a DatasetError
    naming the file and line."""
    samples = []
    for row in rows:
        code = row["emotion"].strip()
        if code not in {str(i) for i in range(len(FER2013_EMOTIONS))}:
            raise DatasetError(f"{row['where']}: emotion must be an integer 0-6 (FER2013 codes), got {code!r}")
        votes = np.asarray(row["votes"][:num_classes], dtype=np.float32)
        samples.append(Sample(split=split, id=row["id"], label=class_index(FER2013_EMOTIONS[int(code)], num_classes),
                              where=row["where"], image=row["image"], box=None, box_frame=BOX_FRAME, votes=votes))
    return samples
