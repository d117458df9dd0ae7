"""AffectNet manually annotated subset (Mollahosseini et al., 2017).

Layout: ``training.csv`` and ``validation.csv`` (in ``root/Manually_Annotated_file_lists/`` or ``root/``) with
columns ``subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks, expression,
valence, arousal``, and the images under ``root/Manually_Annotated_Images/``. The official validation set is
ferlib's ``test`` split (AffectNet's test set is not public); there is no ``valid`` split.
"""
from __future__ import annotations

from pathlib import Path

from ..classes import class_index, class_names
from .common import DatasetError, Sample, assemble, check_choice, check_image_options, iter_csv, new_drops
from .registry import register_dataset

__all__ = ["read_affectnet", "affectnet_va", "AFFECTNET_LABELS", "AFFECTNET_CSVS"]

# AffectNet expression ids -> class name (0-7) or drop reason (8-10).
AFFECTNET_LABELS: dict[int, str] = {0: "neutral", 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear",
                                    5: "disgust", 6: "anger", 7: "contempt"}
AFFECTNET_DROPS: dict[int, str] = {8: "none (8)", 9: "uncertain (9)", 10: "no face (10)"}
AFFECTNET_CSVS: dict[str, str] = {"train": "training.csv", "test": "validation.csv"}
IMAGE_DIR = "Manually_Annotated_Images"
_LIST_DIRS = ("Manually_Annotated_file_lists", ".")
_BOX = ("face_x", "face_y", "face_width", "face_height")
_REQUIRED = ("subDirectory_filePath",) + _BOX + ("expression",)


def _csv_path(root: Path, split: str) -> Path:
    """The label CSV of one split (first of ``root/Manually_Annotated_file_lists/`` and ``root/``)."""
    tried = [root / d / AFFECTNET_CSVS[split] for d in _LIST_DIRS]
    for path in tried:
        if path.is_file():
            return path
    raise DatasetError(f"missing AffectNet label file; tried {', '.join(map(str, tried))}")


def _expression(row: dict, where: str) -> int:
    raw = row["expression"].strip()
    if not raw.isdigit() or int(raw) not in AFFECTNET_LABELS.keys() | AFFECTNET_DROPS.keys():
        raise DatasetError(f"{where}: expression {raw!r} out of range; valid ids 0-10 "
                           f"({', '.join(f'{k} {v}' for k, v in {**AFFECTNET_LABELS, **AFFECTNET_DROPS}.items())})")
    return int(raw)


def _box(row: dict, where: str) -> tuple[int, int, int, int] | None:
    """Face box (left, top, right, bottom) from x, y, width, height; None when the columns are empty."""
    values = [row[c].strip() for c in _BOX]
    if not any(values):
        return None
    try:
        x, y, w, h = (int(float(v)) for v in values)
    except ValueError:
        raise DatasetError(f"{where}: face box {values} must be numbers (or all empty)") from None
    if w <= 0 or h <= 0:
        raise DatasetError(f"{where}: face box width and height must be positive, got {w}, {h}")
    return x, y, x + w, y + h


@register_dataset("affectnet")
def read_affectnet(root: str | Path, *, num_classes: int = 8, image_size: int | None = 112, channels: int = 3,
                   crop: bool = True, on_missing: str = "error", progress: bool = False):
    """Read AffectNet's manually annotated images (train = training.csv, test = validation.csv).

    Parameters
    ----------
    root : str or Path
        Folder holding ``Manually_Annotated_Images/`` and the two CSVs (see module docstring).
    num_classes : {7, 8}
        8 keeps contempt; 7 drops it as ``"contempt (7-class)"``.
    image_size : int or None
        Side of the square output images (bilinear resize after the crop); None keeps the native size (all
        images must then have the same size).
    channels : {1, 3}
        3 = RGB, 1 = grayscale.
    crop : bool
        Crop to the face box (``face_x, face_y, face_width, face_height``) where the row gives one.
    on_missing : {"error", "drop"}
        What to do with a listed image that does not exist.
    progress : bool
        Show a tqdm progress bar while decoding.

    Returns
    -------
    FERData
        ``images`` (N, S, S, channels) uint8; ids = ``subDirectory_filePath``; ``votes`` None. Expression ids
        8, 9, 10 are dropped as ``"none (8)"``, ``"uncertain (9)"``, ``"no face (10)"``. Valence and arousal:
        :func:`affectnet_va`.

    Raises
    ------
    DatasetError
        Missing CSV or image, corrupt image, malformed row or expression id (file and line named), empty split.
    """
    root = Path(root)
    check_choice("num_classes", num_classes, (7, 8))
    check_image_options(image_size, channels, on_missing)
    dropped, samples = new_drops(), []
    for split in AFFECTNET_CSVS:
        path = _csv_path(root, split)
        for line, row in iter_csv(path, required=_REQUIRED):
            where = f"{path}, line {line}"
            expr = _expression(row, where)
            reason = AFFECTNET_DROPS.get(expr) or ("contempt (7-class)" if expr == 7 and num_classes == 7 else "")
            if reason:
                dropped[split][reason] += 1
                continue
            rel = row["subDirectory_filePath"].strip()
            samples.append(Sample(split=split, id=rel, label=class_index(AFFECTNET_LABELS[expr], num_classes),
                                  where=where, image=root / IMAGE_DIR / rel, box=_box(row, where) if crop else None))
    options = dict(num_classes=num_classes, image_size=image_size, channels=channels, crop=crop,
                   on_missing=on_missing)
    return assemble(samples, dropped, name="affectnet", classes=class_names(num_classes),
                    splits=list(AFFECTNET_CSVS), options=options, image_size=image_size, channels=channels,
                    on_missing=on_missing, progress=progress, source=root)


def affectnet_va(root: str | Path):
    """Valence and arousal of every annotated AffectNet image, keyed by the ids of :func:`read_affectnet`.

    Parameters
    ----------
    root : str or Path
        Same root as :func:`read_affectnet`.

    Returns
    -------
    pandas.DataFrame
        Columns ``id`` (str), ``split`` (``"train"``/``"test"``), ``valence``, ``arousal`` (float, in [-1, 1];
        AffectNet uses -2 for "not annotated"), one row per CSV row, including rows the reader drops.
        Join with ``FERData.ids``.
    """
    import pandas as pd

    root, records = Path(root), []
    for split in AFFECTNET_CSVS:
        path = _csv_path(root, split)
        for line, row in iter_csv(path, required=("subDirectory_filePath", "valence", "arousal")):
            try:
                va = float(row["valence"]), float(row["arousal"])
            except ValueError:
                raise DatasetError(f"{path}, line {line}: valence/arousal must be numbers, "
                                   f"got {row['valence']!r}, {row['arousal']!r}") from None
            records.append((row["subDirectory_filePath"].strip(), split, *va))
    return pd.DataFrame(records, columns=["id", "split", "valence", "arousal"])
