"""Shared fixtures. Data: tiny image files and a tiny FERPlus tree written into tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# The tests train tiny models on tiny batches: one thread is faster there than two, and does not fight
# a training job that shares the cores.
torch.set_num_threads(1)

# Vote rows (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF) of the tiny
# FERPlus tree; the comments give the (majority, plurality) label, "-" = dropped.
TINY_FERPLUS_VOTES: dict[str, list[list[int]]] = {
    "train": [
        [0, 9, 1, 0, 0, 0, 0, 0, 0, 0],  # 1, 1
        [8, 0, 0, 2, 0, 0, 0, 0, 0, 0],  # 0, 0
        [0, 0, 7, 0, 0, 0, 3, 0, 0, 0],  # 2, 2
        [4, 0, 0, 1, 3, 2, 0, 0, 0, 0],  # -, 0  (no majority)
        [0, 0, 0, 0, 0, 0, 0, 6, 1, 3],  # 7, 7  (contempt)
        [2, 0, 0, 0, 0, 0, 0, 0, 6, 2],  # -, -  (unknown)
    ],
    "valid": [
        [0, 0, 0, 10, 0, 0, 0, 0, 0, 0],  # 3, 3
        [0, 0, 0, 0, 0, 8, 2, 0, 0, 0],  # 5, 5
    ],
    "test": [
        [0, 0, 0, 0, 9, 0, 0, 0, 1, 0],  # 4, 4
        [0, 0, 0, 0, 0, 0, 10, 0, 0, 0],  # 6, 6
        [3, 3, 0, 0, 0, 0, 0, 0, 2, 2],  # -, 0  (tie -> lowest index)
    ],
}
FERPLUS_DIRS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}


def _write_image(path: Path, value: int | np.ndarray, *, size: tuple[int, int] = (48, 48), mode: str = "L") -> Path:
    """Write a constant (or given, shape (H, W[, 3])) uint8 image of ``size`` (W, H); format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    pixels = np.broadcast_to(np.asarray(value, dtype=np.uint8), shape) if np.ndim(value) == 0 else value
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(path)
    return path


def _build_ferplus(root: Path, votes: dict[str, list[list[int]]] = TINY_FERPLUS_VOTES) -> Path:
    """Write a FERPlus tree; image ``fer{k:07d}.png`` (k counting over all splits) is filled with ``k``."""
    k = 0
    for split, rows in votes.items():
        folder = root / FERPLUS_DIRS[split]
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for row in rows:
            name = f"fer{k:07d}.png"
            _write_image(folder / name, k)
            lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, row)))
            k += 1
        (folder / "label.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def write_image():
    """The function ``write_image(path, value, *, size=(48, 48), mode="L") -> path``."""
    return _write_image


@pytest.fixture
def build_ferplus():
    """The function ``build_ferplus(root, votes={split: [[10 ints], ...]}) -> root``."""
    return _build_ferplus


@pytest.fixture
def tiny_ferplus_votes() -> dict[str, list[list[int]]]:
    """The vote rows of ``tiny_ferplus``, per split."""
    return TINY_FERPLUS_VOTES


@pytest.fixture
def tiny_ferplus(tmp_path: Path) -> Path:
    """Root of an 11-image FERPlus tree with votes ``TINY_FERPLUS_VOTES``."""
    return _build_ferplus(tmp_path / "ferplus")


def _small_votes(n: int, offset: int) -> list[list[int]]:
    """``n`` vote rows: 7 votes for class (offset + i) % 8, 3 for the next class (plurality = majority = the first)."""
    rows = []
    for i in range(n):
        c = (offset + i) % 8
        row = [0] * 10
        row[c], row[(c + 1) % 8] = 7, 3
        rows.append(row)
    return rows


@pytest.fixture(scope="session")
def small_ferplus(tmp_path_factory) -> Path:
    """Root of a 64-image FERPlus tree (48 train, 8 valid, 8 test; every class in each split): big enough to
    train a few batches end to end, small enough to evaluate in milliseconds."""
    votes = {"train": _small_votes(48, 0), "valid": _small_votes(8, 3), "test": _small_votes(8, 5)}
    return _build_ferplus(tmp_path_factory.mktemp("small") / "ferplus", votes)


@pytest.fixture
def interrupted(monkeypatch):
    """``interrupted(train, loop=ferlib.engine)``: call ``train()`` with the second call of ``loop``'s
    ``train_one_epoch`` raising KeyboardInterrupt (a simulated crash after the first epoch's checkpoint), then
    restore it. ``loop``: any module whose training loop calls its own ``train_one_epoch`` once per epoch."""
    from ferlib import engine

    def run_until_crash(train, loop=engine) -> None:
        real_epoch, calls = loop.train_one_epoch, {"n": 0}

        def crash_in_second_epoch(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt("simulated crash")
            return real_epoch(*args, **kwargs)

        monkeypatch.setattr(loop, "train_one_epoch", crash_in_second_epoch)
        try:
            with pytest.raises(KeyboardInterrupt):
                train()
        finally:
            monkeypatch.setattr(loop, "train_one_epoch", real_epoch)

    return run_until_crash


def _write_rafdb(root: Path, lines: list[str]) -> Path:
    """A RAF-DB basic tree: lines ``train_00001.jpg 5``; image i is a 100x100 RGB face filled with 20 * i mod 256."""
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for i, line in enumerate(lines):
        stem = line.split()[0].rsplit(".", 1)[0]
        _write_image(root / "Image" / "aligned" / f"{stem}_aligned.jpg", 20 * i % 256, size=(100, 100), mode="RGB")
    return root


def _write_affectnet(root: Path, rows: list[tuple[str, str, int]]) -> Path:
    """rows: (csv name, file path, expression); images 40x30 RGB, left half black, right half white."""
    img = np.zeros((30, 40, 3), np.uint8)
    img[:, 20:] = 255
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    text = {"training.csv": [header], "validation.csv": [header]}
    for i, (csv_name, rel, expr) in enumerate(rows):
        text[csv_name].append(f'{rel},20,0,20,30,"1.0;2.0",{expr},0.{i},-0.{i}')
        _write_image(root / "Manually_Annotated_Images" / rel, img, mode="RGB")
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    for name, lines in text.items():
        (lists / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def write_rafdb():
    """The function ``write_rafdb(root, lines) -> root`` (a RAF-DB basic tree)."""
    return _write_rafdb


@pytest.fixture
def write_affectnet():
    """The function ``write_affectnet(root, rows) -> root`` (an AffectNet manual-annotation tree)."""
    return _write_affectnet
