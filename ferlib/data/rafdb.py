"""RAF-DB basic expressions (Li et al., CVPR 2017): 7 classes, train and test splits.

Layout: ``root/EmoLabel/list_patition_label.txt`` (sic) with lines ``train_00001.jpg 5`` and the aligned
100x100 RGB faces in ``root/Image/aligned/train_00001_aligned.jpg``.
"""
from __future__ import annotations

from pathlib import Path

from ..classes import class_index, class_names
from .common import DatasetError, Sample, assemble, check_image_options, new_drops, open_text
from .registry import register_dataset

__all__ = ["read_rafdb", "RAFDB_LABELS"]

# RAF-DB's own label ids -> class names.
RAFDB_LABELS: dict[int, str] = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger",
                                7: "neutral"}
_SPLITS = {"train": "train", "test": "test"}  # file-name prefix -> split


def _parse_line(text: str, where: str) -> tuple[str, str, int]:
    """``"train_00001.jpg 5"`` -> (file name, split, canonical label)."""
    fields = text.split()
    if len(fields) != 2:
        raise DatasetError(f"{where}: expected 2 fields (image name, label id), got {len(fields)}")
    name, raw = fields
    split = _SPLITS.get(name.split("_", 1)[0])
    if split is None:
        raise DatasetError(f"{where}: image name {name!r} must start with {' or '.join(p + '_' for p in _SPLITS)}")
    if not raw.isdigit() or int(raw) not in RAFDB_LABELS:
        valid = ", ".join(f"{k} {v}" for k, v in RAFDB_LABELS.items())
        raise DatasetError(f"{where}: label id {raw!r} out of range; valid: {valid}")
    return name, split, class_index(RAFDB_LABELS[int(raw)], 7)


@register_dataset("rafdb")
def read_rafdb(root: str | Path, *, image_size: int | None = 100, channels: int = 3, on_missing: str = "error",
               progress: bool = False):
    """Read RAF-DB basic (7 classes; ``train`` and ``test`` splits, no ``valid``).

    Parameters
    ----------
    root : str or Path
        Folder holding ``EmoLabel/list_patition_label.txt`` and ``Image/aligned/``.
    image_size : int or None
        Side of the square output images (bilinear resize); None or 100 keeps the native 100x100.
    channels : {1, 3}
        3 = RGB, 1 = grayscale.
    on_missing : {"error", "drop"}
        What to do with a listed image that does not exist.
    progress : bool
        Show a tqdm progress bar while decoding.

    Returns
    -------
    FERData
        ``images`` (N, S, S, channels) uint8, labels in the canonical 7-class order, ``votes`` None,
        ids = the list's image names (``"train_00001.jpg"``).

    Raises
    ------
    DatasetError
        Missing list file or image, corrupt image, malformed line or label id (file and line named), empty split.
    """
    root = Path(root)
    check_image_options(image_size, channels, on_missing)
    path = root / "EmoLabel" / "list_patition_label.txt"
    if not path.is_file():
        raise DatasetError(f"missing label list {path}")
    with open_text(path) as f:
        lines = f.read().splitlines()
    samples = []
    for line, text in enumerate(lines, 1):
        if text.strip():
            where = f"{path}, line {line}"
            name, split, label = _parse_line(text, where)
            image = root / "Image" / "aligned" / f"{Path(name).stem}_aligned{Path(name).suffix}"
            samples.append(Sample(split=split, id=name, label=label, where=where, image=image))
    options = dict(image_size=image_size, channels=channels, on_missing=on_missing)
    return assemble(samples, new_drops(), name="rafdb", classes=class_names(7), splits=list(_SPLITS.values()),
                    options=options, image_size=image_size, channels=channels, on_missing=on_missing,
                    progress=progress, source=root)
