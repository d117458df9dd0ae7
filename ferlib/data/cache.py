"""On-disk cache of decoded datasets: one entry per reader + root + options + file signature + storage form.

The key hashes the reader name, the resolved root, the reader options and a cheap signature of the files
under the root (relative path, size and mtime of every file: label files and the image listing), so editing a
label file or adding/removing/replacing an image makes a new entry. Old entries are never deleted
automatically; remove the folder to reclaim space.

An entry takes one of two storage forms, told apart by its file names (the same key, another form: another
entry):

- **in memory**: ``<name>-<digest>.npz`` holds everything; loading reads it all into memory.
- **memory-mapped** (datasets larger than memory, e.g. AffectNet's ~290k faces: 11 GB at 112 px RGB):
  ``<name>-<digest>.mmap.npy`` holds the images (N, H, W, C) uint8 as a plain ``.npy``, ``<name>-<digest>.mmap.npz``
  everything else. The images are decoded ``chunk_size`` at a time and written straight into the ``.npy``
  (:mod:`ferlib.data.storage`), so building holds one chunk, never the dataset; loading opens the ``.npy``
  read-only as a memory map (``FERData.images`` is then a :class:`~ferlib.data.storage.MappedImages`, read
  from disk when indexed; subsets stay lazy). The images are written first, the ``.mmap.npz`` last.

``mmap=None`` (the default) memory-maps a dataset whose images take at least ``$FERLIB_MMAP_BYTES`` bytes
(default 2 GiB; 0 maps every dataset) and reuses an entry of either form; ``mmap=True`` / ``False`` asks for one
form. Every file is written through a temporary file and renamed. An entry that cannot be read (truncated,
corrupt, older format; a ``.npy`` whose size differs from what its header announces) is rebuilt, with a warning.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable

from .common import check_choice
from .dataset import FERData
from .storage import (CHUNK_SIZE, ImageStore, ImageStoreError, MappedImages, mmap_threshold, open_images,
                      use_store)

__all__ = ["default_cache_dir", "tree_signature", "data_fingerprint", "cache_path", "cached"]

CACHE_VERSION = 1  # bump when a reader's output changes for the same files and options


def default_cache_dir() -> Path:
    """``$FERLIB_CACHE`` if set, else ``~/.cache/ferlib``."""
    return Path(os.environ.get("FERLIB_CACHE") or Path.home() / ".cache" / "ferlib")


def tree_signature(root: str | os.PathLike) -> str:
    """Hash of (relative path, size, mtime) of every file under ``root`` (a file root: of that file)."""
    root = Path(root)
    h = hashlib.sha1()
    if root.is_file():
        st = root.stat()
        h.update(f"{root.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            h.update(f"{rel}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _fingerprint(root: Path) -> str:
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            h.update(f"{rel}/{name}\0{os.stat(os.path.join(dirpath, name)).st_size}\n".encode())
    return h.hexdigest()[:16]


def data_fingerprint(root: str | os.PathLike) -> str:
    """What a dataset root holds, not where it is: a hash of the relative path and size of every file under it
    (of the file itself for a file root). A copied, moved or freshly cloned dataset keeps its fingerprint;
    adding, removing or resizing a file changes it. Memoised per resolved path for the process.

    Raises FileNotFoundError naming ``root`` when it does not exist.
    """
    path = Path(root).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    if path.is_file():
        return hashlib.sha1(f"{path.name}\0{path.stat().st_size}".encode()).hexdigest()[:16]
    return _fingerprint(path)


def cache_path(name: str, root: str | os.PathLike, options: dict, *, cache_dir: str | os.PathLike | None = None
               ) -> Path:
    """The in-memory cache entry (``.npz``) for reader ``name`` on ``root`` with ``options`` (all options, defaults
    filled in); the memory-mapped entry of the same key is ``.mmap.npz`` + ``.mmap.npy`` beside it."""
    root = Path(root).resolve()
    key = json.dumps(dict(version=CACHE_VERSION, name=name, root=str(root), options=options,
                          files=tree_signature(root)), sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:20]
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{name}-{digest}.npz"


def cached(name: str, root: str | os.PathLike, options: dict, build: Callable[[], FERData], *,
           cache_dir: str | os.PathLike | None = None, mmap: bool | None = None,
           chunk_size: int = CHUNK_SIZE) -> FERData:
    """Load the cached FERData for (name, root, options) or build it with ``build()`` and store it.

    Parameters
    ----------
    mmap : bool or None
        Storage form (module docstring): True memory-maps the images, False keeps them in memory, None decides
        by their size (``$FERLIB_MMAP_BYTES``) and reuses an entry of either form.
    chunk_size : int
        Images decoded and held at a time while building (>= 1).

    A cache entry that cannot be read (truncated, older format) is rebuilt with a warning. The cache is only a
    speed-up: when its folder cannot be read or written (permissions, a read-only or full disk,
    ``$FERLIB_CACHE`` naming a file), the data are built and returned uncached, in memory, with one warning per
    cache folder and process naming the folder and the reason.
    """
    check_choice("mmap", mmap, (None, True, False))
    path = cache_path(name, root, options, cache_dir=cache_dir)
    entries = {True: [_mapped(path)], False: [path], None: [_mapped(path), path]}[mmap]
    for entry in entries:
        data = _read_entry(entry)
        if data is not None:
            return data
    store = ImageStore(path=_mapped(path).with_suffix(".npy"), mmap=mmap, threshold=mmap_threshold(),
                       chunk_size=chunk_size)
    try:
        data = _build(build, store)
    except ImageStoreError as exc:
        _warn_unusable(path.parent, exc.__cause__)
        return _build(build, ImageStore(chunk_size=chunk_size))
    try:
        if isinstance(data.images, MappedImages):
            data.save(_mapped(path), images=False)
        else:
            data.save(path)
    except OSError as exc:
        _warn_unusable(path.parent, exc)
    return data


def _mapped(path: Path) -> Path:
    """The ``.mmap.npz`` of the memory-mapped entry with the key of ``path`` (its images: ``.mmap.npy``)."""
    return path.with_suffix(".mmap.npz")


def _build(build: Callable[[], FERData], store: ImageStore) -> FERData:
    with use_store(store):
        return build()


def _read_entry(path: Path) -> FERData | None:
    """The FERData of a cache entry; None when there is none, or (with a warning) when it cannot be read."""
    try:
        if not path.is_file():
            return None
    except OSError as exc:  # e.g. a cache folder this user may not list
        _warn_unusable(path.parent, exc)
        return None
    try:
        if path.name.endswith(".mmap.npz"):
            return FERData.load(path, images=open_images(path.with_suffix(".npy")))
        return FERData.load(path)
    except Exception as exc:  # corrupt or incompatible entry: rebuild it
        warnings.warn(f"dataset cache entry {path} cannot be read ({exc}); rebuilding it", UserWarning,
                      stacklevel=4)
        return None


_WARNED: set[str] = set()


def _warn_unusable(folder: Path, exc: OSError) -> None:
    if str(folder) in _WARNED:
        return
    _WARNED.add(str(folder))
    warnings.warn(f"dataset cache {folder} is not usable ({exc.strerror or exc}); continuing without a cache. "
                  "Set FERLIB_CACHE to a writable folder to cache decoded datasets.", UserWarning, stacklevel=3)
