"""A class-per-folder tree (torchvision ImageFolder style): ``root/<split>/<class name>/<image>``."""
from __future__ import annotations

from pathlib import Path

from ..classes import CLASSES_8, class_index, class_names
from .common import DatasetError, Sample, assemble, check_choice, check_image_options, new_drops
from .dataset import SPLITS
from .registry import register_dataset

__all__ = ["read_folder", "SPLIT_DIRS", "IMAGE_EXTENSIONS"]

SPLIT_DIRS: dict[str, str] = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")


def _split_dirs(root: Path) -> dict[str, Path]:
    """{split: folder} of the split folders under ``root`` (``val`` read as ``valid``)."""
    if not root.is_dir():
        raise DatasetError(f"missing folder {root}")
    found: dict[str, Path] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        split = SPLIT_DIRS.get(d.name.lower())
        if split is None:
            raise DatasetError(f"unknown split folder {d}; valid names: {', '.join(SPLIT_DIRS)}")
        if split in found:
            raise DatasetError(f"both {found[split]} and {d} give split {split!r}; keep one")
        found[split] = d
    if not found:
        raise DatasetError(f"no split folder in {root}; expected some of {', '.join(SPLIT_DIRS)}")
    return found


def _class_of(folder: Path) -> int:
    """Canonical 8-class index of a class folder, or DatasetError naming it and the valid names."""
    try:
        return class_index(folder.name, 8)
    except KeyError:
        raise DatasetError(f"unknown class folder {folder}; valid names (any case): {', '.join(CLASSES_8)} "
                           "or a synonym in ferlib.classes.SYNONYMS") from None


def _split_samples(split: str, folder: Path, dropped, num_classes: int) -> list[Sample]:
    """Samples of one split folder; non-image files and (with 7 classes) contempt images counted as dropped."""
    samples = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = _class_of(class_dir)
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                dropped[split]["not an image file"] += 1
            elif label >= num_classes:
                dropped[split][f"{CLASSES_8[label]} ({num_classes}-class)"] += 1
            else:
                rel = path.relative_to(folder.parent).as_posix()
                samples.append(Sample(split=split, id=rel, label=label, where=str(path), image=path))
    return samples


@register_dataset("folder")
def read_folder(root: str | Path, *, num_classes: int = 8, image_size: int | None = None, channels: int = 3,
                progress: bool = False):
    """Read a ``root/<split>/<class>/<image>`` tree.

    Parameters
    ----------
    root : str or Path
        Folder holding split folders ``train``, ``valid`` (or ``val``) and/or ``test``; each split present
        must keep at least one image.
    num_classes : {7, 8}
        Class space; with 7, images in a contempt folder are dropped as ``"contempt (7-class)"``.
    image_size : int or None
        Side of the square output images (bilinear resize); None keeps the native size, which must then be
        the same for all images.
    channels : {1, 3}
        3 = RGB, 1 = grayscale.
    progress : bool
        Show a tqdm progress bar while decoding.

    Returns
    -------
    FERData
        ids = paths relative to ``root`` (``"train/happy/img1.png"``); ``votes`` None. Class folders are
        matched by name through :func:`ferlib.classes.class_index` (synonyms, any case); files with other
        extensions than ``IMAGE_EXTENSIONS`` are dropped as ``"not an image file"``.

    Raises
    ------
    DatasetError
        Unknown split or class folder (valid names listed), corrupt image, mixed sizes without
        ``image_size``, empty split.
    """
    root = Path(root)
    check_choice("num_classes", num_classes, (7, 8))
    check_image_options(image_size, channels)
    dropped, samples = new_drops(), []
    found = _split_dirs(root)
    splits = [s for s in SPLITS if s in found]
    for split in splits:
        samples += _split_samples(split, found[split], dropped, num_classes)
    options = dict(num_classes=num_classes, image_size=image_size, channels=channels)
    return assemble(samples, dropped, name="folder", classes=class_names(num_classes), splits=splits,
                    options=options, image_size=image_size, channels=channels, progress=progress, source=root)
