"""FERPlus (Barsoum et al., ICMI 2016): FER2013 faces relabelled by 10 annotators each.

Microsoft's layout: ``root/FER2013Train|FER2013Valid|FER2013Test/`` each holding 48x48 grayscale PNGs and a
header-less ``label.csv`` with rows ``image name, face box "(left, top, right, bottom)", 10 vote counts``
(neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF).
The vote-to-label rules (:func:`votes_to_labels`) are shared with :mod:`ferlib.data.fer2013`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..classes import class_names
from .common import DatasetError, Sample, assemble, check_choice, check_image_options, iter_csv, new_drops
from .registry import register_dataset

__all__ = ["read_ferplus", "votes_to_labels", "vote_samples", "parse_votes", "VOTE_COLUMNS", "LABEL_MODES",
           "FERPLUS_DIRS"]

VOTE_COLUMNS: tuple[str, ...] = class_names(8) + ("unknown", "NF")
#: The frame a label.csv face box refers to: FER2013's 48x48 images (every box of the release is (0, 0, 48, 48)).
#: An image of another size is a rescaled copy of that frame, and its box is scaled with it.
BOX_FRAME: tuple[int, int] = (48, 48)
LABEL_MODES: tuple[str, ...] = ("majority", "plurality")
FERPLUS_DIRS: dict[str, str] = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}


def votes_to_labels(votes: np.ndarray, *, mode: str = "majority", num_classes: int = 8
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Labels from FERPlus vote counts, with the reason for every row that gets none.

    Parameters
    ----------
    votes : np.ndarray, shape (N, 10), int
        Counts in ``VOTE_COLUMNS`` order (8 emotions, unknown, NF).
    mode : {"majority", "plurality"}
        ``"majority"`` (Barsoum et al. 2016): single votes (counts of 1) are set to 0, then the column holding
        MORE than half of the remaining votes (sum over all 10 columns) is the label; rows with no such column
        are dropped as ``"no majority"``, rows whose majority is unknown/NF as ``"unknown/not-a-face"``.
        ``"plurality"``: the emotion (of the 8) with the most votes, kept only when its count is strictly
        greater than both the unknown and the NF count, else dropped as ``"unknown/not-a-face"``; ties among
        emotions go to the lowest canonical index (neutral before happiness before ...).
        Rows without any vote are dropped as ``"no votes"`` in both modes.
    num_classes : {7, 8}
        With 7, rows whose label is contempt are dropped as ``"contempt (7-class)"``.

    Returns
    -------
    labels : np.ndarray, shape (N,), int64
        Canonical label, -1 where the row is dropped.
    reasons : np.ndarray, shape (N,), object
        Drop reason, ``""`` where the row is kept.

    Notes
    -----
    On the official FERPlus files these rules give 25,045 / 3,191 / 3,137 (majority) and
    28,150 / 3,526 / 3,522 (plurality) train / valid / test images with 8 classes.
    """
    check_choice("mode", mode, LABEL_MODES)
    check_choice("num_classes", num_classes, (7, 8))
    votes = np.asarray(votes)
    if votes.ndim != 2 or votes.shape[1] != len(VOTE_COLUMNS):
        raise ValueError(f"votes must have shape (N, {len(VOTE_COLUMNS)}), got {votes.shape}")
    reasons = np.full(len(votes), "", dtype=object)
    if mode == "majority":
        counted = np.where(votes == 1, 0, votes)
        labels = counted.argmax(axis=1)
        has_majority = 2 * counted.max(axis=1) > counted.sum(axis=1)
        reasons[has_majority & (labels >= 8)] = "unknown/not-a-face"
        reasons[~has_majority] = "no majority"
    else:
        emotions = votes[:, :8]
        labels = emotions.argmax(axis=1)  # first maximum = lowest canonical index
        reasons[emotions.max(axis=1) <= votes[:, 8:].max(axis=1)] = "unknown/not-a-face"
    reasons[votes.sum(axis=1) == 0] = "no votes"
    if num_classes == 7:
        reasons[(reasons == "") & (labels == 7)] = "contempt (7-class)"
    return np.where(reasons == "", labels, -1).astype(np.int64), reasons


def parse_votes(fields: list[str], where: str) -> list[int]:
    """The 10 vote counts of one row as non-negative ints (DatasetError naming ``where`` otherwise)."""
    try:
        counts = [int(x) for x in fields]
    except ValueError:
        raise DatasetError(f"{where}: vote counts must be integers, got {fields}") from None
    if len(counts) != len(VOTE_COLUMNS) or min(counts) < 0:
        raise DatasetError(f"{where}: expected {len(VOTE_COLUMNS)} non-negative vote counts "
                           f"({', '.join(VOTE_COLUMNS)}), got {fields}")
    return counts


def vote_samples(split: str, rows: list[dict], dropped, *, mode: str, num_classes: int) -> list[Sample]:
    """Label the rows of one split by their votes; count the dropped ones in ``dropped[split]``.

    Parameters
    ----------
    split : str
        Split of every row.
    rows : list of dict
        One per listed image, with keys ``id``, ``where``, ``image``, ``box`` (as in :class:`Sample`) and
        ``votes`` (10 ints).
    dropped : dict
        ``{split: Counter}`` to add the drop reasons to.
    mode, num_classes
        See :func:`votes_to_labels`.

    Returns
    -------
    list of Sample
        The kept rows, with votes over the ``num_classes`` emotions (before single-vote removal), float32.
    """
    votes = np.array([r["votes"] for r in rows], dtype=np.int64).reshape(len(rows), len(VOTE_COLUMNS))
    labels, reasons = votes_to_labels(votes, mode=mode, num_classes=num_classes)
    samples = []
    for row, label, reason, v in zip(rows, labels, reasons, votes[:, :num_classes].astype(np.float32)):
        if reason:
            dropped[split][reason] += 1
        else:
            samples.append(Sample(split=split, id=row["id"], label=int(label), where=row["where"],
                                  image=row["image"], box=row["box"], box_frame=BOX_FRAME, votes=v))
    return samples


def _parse_box(text: str, where: str) -> tuple[int, int, int, int]:
    """``"(left, top, right, bottom)"`` -> tuple of 4 ints."""
    try:
        box = tuple(int(x) for x in text.strip().strip("()").split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
        raise DatasetError(f"{where}: bad face box {text!r}; expected \"(left, top, right, bottom)\"")
    return box  # type: ignore[return-value]


def _read_label_csv(folder: Path) -> list[dict]:
    """The rows of ``folder/label.csv`` (see :func:`vote_samples` for their keys)."""
    path = folder / "label.csv"
    rows = []
    for line, (name, box, *votes) in iter_csv(path, ncols=2 + len(VOTE_COLUMNS)):
        where = f"{path}, line {line}"
        if not name.strip():
            raise DatasetError(f"{where}: empty image name")
        rows.append(dict(id=f"{folder.name}/{name.strip()}", where=where, image=folder / name.strip(),
                         box=_parse_box(box, where), votes=parse_votes(votes, where)))
    return rows


@register_dataset("ferplus")
def read_ferplus(root: str | Path, *, mode: str = "plurality", num_classes: int = 8, image_size: int | None = 48,
                 channels: int = 1, on_missing: str = "error", progress: bool = False):
    """Read FERPlus in Microsoft's layout (all three splits).

    Parameters
    ----------
    root : str or Path
        Folder holding ``FER2013Train/``, ``FER2013Valid/`` and ``FER2013Test/``, each with PNGs and
        ``label.csv``.
    mode : {"plurality", "majority"}
        Vote-to-label rule, see :func:`votes_to_labels` (plurality ties go to the lowest canonical index).
        Default plurality: every face with an emotion vote keeps a label (the study profiles' choice).
    num_classes : {7, 8}
        8 keeps contempt; 7 drops contempt images and the contempt vote column.
    image_size : int or None
        Side of the square output images (bilinear resize); None or 48 keeps the native 48x48.
    channels : {1, 3}
        1 = grayscale, 3 = RGB (gray replicated).
    on_missing : {"error", "drop"}
        What to do with a ``label.csv`` row whose PNG does not exist.
    progress : bool
        Show a tqdm progress bar while decoding.

    Returns
    -------
    FERData
        ``images`` (N, S, S, channels) uint8; ``votes`` (N, num_classes) float32 raw vote counts (before
        single-vote removal); ids like ``"FER2013Train/fer0000000.png"``; ``dropped[split]`` counts
        ``"no majority"``, ``"unknown/not-a-face"``, ``"no votes"``, ``"contempt (7-class)"``,
        ``"missing image"``.

    Raises
    ------
    DatasetError
        Missing folder/label file or image, corrupt image, malformed row (file and line named), empty split.
    """
    root = Path(root)
    check_choice("mode", mode, LABEL_MODES)
    check_choice("num_classes", num_classes, (7, 8))
    check_image_options(image_size, channels, on_missing)
    dropped, samples = new_drops(), []
    for split, folder in FERPLUS_DIRS.items():
        if not (root / folder).is_dir():
            raise DatasetError(f"missing folder {root / folder}; FERPlus root must hold "
                               f"{', '.join(FERPLUS_DIRS.values())}")
        samples += vote_samples(split, _read_label_csv(root / folder), dropped, mode=mode, num_classes=num_classes)
    options = dict(mode=mode, num_classes=num_classes, image_size=image_size, channels=channels,
                   on_missing=on_missing)
    return assemble(samples, dropped, name="ferplus", classes=class_names(num_classes), splits=list(FERPLUS_DIRS),
                    options=options, image_size=image_size, channels=channels, on_missing=on_missing,
                    progress=progress, source=root)
