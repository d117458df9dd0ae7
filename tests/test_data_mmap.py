"""The memory-mapped dataset cache: built chunk by chunk, equal to the in-memory form, lazy subsets, repaired."""
from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ferlib.data import FERData, MappedImages, batch_images, load_dataset
from ferlib.data import common, storage

N, CHUNK, SIDE = 50, 8, 96  # more images than a chunk; 27 kB each, 1.4 MB in all
SPLIT_SIZES = {"train": 30, "valid": 10, "test": 10}
CLASSES = ("neutral", "happy", "surprise", "sad", "angry")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Never write the user's cache from tests."""
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(storage.MMAP_BYTES_ENV, raising=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A class-per-folder tree of N distinct random RGB images (SIDE x SIDE), spread over splits and classes."""
    from PIL import Image

    root, rng, k = tmp_path_factory.mktemp("mmap") / "faces", np.random.default_rng(0), 0
    for split, n in SPLIT_SIZES.items():
        for i in range(n):
            path = root / split / CLASSES[i % len(CLASSES)] / f"img{k:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(path)
            k += 1
    return root


def _load(root: Path, **kwargs) -> FERData:
    return load_dataset("folder", root, chunk_size=CHUNK, **kwargs)


def _mmap_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").glob("folder-*.mmap.*"))


def _assert_same(a: FERData, b: FERData) -> None:
    for attr in ("labels", "split", "ids"):
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    assert (a.classes, a.dropped, a.options) == (b.classes, b.dropped, b.options)


def test_the_memmap_cache_round_trips_the_in_memory_dataset(tree, tmp_path, monkeypatch):
    plain = _load(tree, mmap=False)
    built = _load(tree, mmap=True)
    assert isinstance(plain.images, np.ndarray) and isinstance(built.images, MappedImages)
    assert [p.name.split(".", 1)[1] for p in _mmap_files(tmp_path)] == ["mmap.npy", "mmap.npz"]
    monkeypatch.setattr(common, "decode", lambda *a, **k: pytest.fail("image decoded despite the cache"))
    again = _load(tree, mmap=True)
    assert isinstance(again.images, MappedImages) and again.images.shape == (N, SIDE, SIDE, 3)
    for data in (built, again):
        _assert_same(plain, data)
    assert np.load(again.images.path, mmap_mode="r").shape == (N, SIDE, SIDE, 3)  # a plain .npy
    assert again.fingerprint() == plain.fingerprint()


def test_the_build_holds_one_chunk_at_a_time(tree, monkeypatch):
    _load(tree, mmap=True, image_size=8)  # warm up: imports and first-call allocations are not the build's
    sizes, real = [], common._decode_batch

    def spy(*args, **kwargs):  # keeps no reference to the chunk it passes on
        chunk = real(*args, **kwargs)
        sizes.append(len(chunk))
        return chunk

    monkeypatch.setattr(common, "_decode_batch", spy)
    peaks = {}
    for mmap in (True, False):
        tracemalloc.start()
        _load(tree, mmap=mmap)
        peaks[mmap] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert sizes == 2 * ([CHUNK] * (N // CHUNK) + [N % CHUNK])
    total = N * SIDE * SIDE * 3
    assert peaks[True] < total / 2 < total <= peaks[False]


def test_subsets_stay_lazy_and_batches_read_the_right_rows(tree):
    plain, data = _load(tree, mmap=False), _load(tree, mmap=True)
    train = data.subset("train").with_labels(data.subset("train").labels)
    assert isinstance(train.images, MappedImages) and train.images.path == data.images.path
    np.testing.assert_array_equal(train.images.rows, np.flatnonzero(data.split == "train"))
    picked = train.select(train.labels == 1).select(np.array([2, 0]))
    expected = plain.subset("train").select(plain.subset("train").labels == 1).select(np.array([2, 0]))
    _assert_same(expected, picked)
    idx = torch.tensor([5, 0, 29, 5])
    for images in (train.images, plain.subset("train").images):
        batch = batch_images(images, idx)
        assert type(batch) is np.ndarray and batch.flags.writeable and batch.shape == (4, SIDE, SIDE, 3)
        np.testing.assert_array_equal(batch, plain.subset("train").images[idx.numpy()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning from torch
        block = torch.from_numpy(train.images[3:7])
    np.testing.assert_array_equal(block.numpy(), plain.subset("train").images[3:7])
    assert train.images[4].shape == (SIDE, SIDE, 3)


@pytest.mark.parametrize("damage", ["truncate", "pad", "garbage", "remove", "float"])
def test_a_damaged_memmap_is_rebuilt_with_a_warning(tree, tmp_path, damage):
    good = np.asarray(_load(tree, mmap=True).images)
    npy = _mmap_files(tmp_path)[0]
    size = npy.stat().st_size
    if damage in ("truncate", "pad"):
        with open(npy, "r+b") as f:
            f.truncate(size - 1000 if damage == "truncate" else size + 1)
    elif damage == "garbage":
        npy.write_bytes(b"not a numpy file" * 10)
    elif damage == "remove":
        npy.unlink()
    else:
        np.save(npy, np.zeros((N, SIDE, SIDE, 3), np.float32))
    reason = {"truncate": "truncated or corrupt", "pad": "truncated or corrupt", "garbage": "magic string",
              "remove": "No such file", "float": "expected C-ordered uint8"}[damage]
    with pytest.warns(UserWarning, match=rf"dataset cache entry .*\.mmap\.npz cannot be read \(.*{reason}"):
        rebuilt = _load(tree, mmap=True)
    np.testing.assert_array_equal(np.asarray(rebuilt.images), good)
    assert npy.stat().st_size == size
    assert not list(npy.parent.glob(".*.tmp"))  # built through a temporary file, renamed


def test_the_form_follows_the_size_threshold_and_any_entry_is_reused(tree, tmp_path, monkeypatch):
    monkeypatch.setenv(storage.MMAP_BYTES_ENV, str(N * SIDE * SIDE * 3 + 1))
    assert isinstance(_load(tree).images, np.ndarray) and not _mmap_files(tmp_path)
    assert isinstance(_load(tree, mmap=True).images, MappedImages)
    assert isinstance(_load(tree).images, MappedImages)  # auto reuses the memory-mapped entry
    monkeypatch.setenv(storage.MMAP_BYTES_ENV, "0")
    assert isinstance(_load(tree, image_size=32).images, MappedImages)  # another key, built memory-mapped
    monkeypatch.setenv(storage.MMAP_BYTES_ENV, "2GB")
    with pytest.raises(ValueError, match="FERLIB_MMAP_BYTES must be a number of bytes"):
        _load(tree, image_size=16)
    monkeypatch.delenv(storage.MMAP_BYTES_ENV)
    with pytest.raises(ValueError, match="mmap must be one of None, True, False"):
        _load(tree, mmap="yes")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        load_dataset("folder", tree, chunk_size=0, image_size=16, mmap=False)


def test_missing_images_are_dropped_before_the_file_is_sized(tiny_ferplus):
    (tiny_ferplus / "FER2013Train" / "fer0000001.png").unlink()
    plain = load_dataset("ferplus", tiny_ferplus, on_missing="drop", mmap=False)
    mapped = load_dataset("ferplus", tiny_ferplus, on_missing="drop", mmap=True, chunk_size=3)
    assert isinstance(mapped.images, MappedImages) and len(mapped) == 9
    assert mapped.dropped["train"]["missing image"] == 1
    _assert_same(plain, mapped)
    np.testing.assert_array_equal(plain.votes, mapped.votes)


def test_an_unwritable_cache_builds_in_memory_with_one_warning(tree, tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.warns(UserWarning, match="dataset cache .*a_file/cache is not usable"):
        data = _load(tree, mmap=True, cache_dir=tmp_path / "a_file" / "cache")
    assert isinstance(data.images, np.ndarray) and data.images.shape == (N, SIDE, SIDE, 3)
