"""On-disk cache of decoded datasets: one ``.npz`` per reader + root + options + file signature.

The key hashes the reader name, the resolved root, the reader options and a cheap signature of the files
under the root (relative path, size and mtime of every file: label files and the image listing), so editing a
label file or adding/removing/replacing an image makes a new entry. Old entries are never deleted
automatically; remove the folder to reclaim space.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable

from .dataset import FERData

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
    """The cache file for reader ``name`` on ``root`` with ``options`` (all options, defaults filled in)."""
    root = Path(root).resolve()
    key = json.dumps(dict(version=CACHE_VERSION, name=name, root=str(root), options=options,
                          files=tree_signature(root)), sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:20]
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{name}-{digest}.npz"


def cached(name: str, root: str | os.PathLike, options: dict, build: Callable[[], FERData], *,
           cache_dir: str | os.PathLike | None = None) -> FERData:
    """Load the cached FERData for (name, root, options) or build it with ``build()`` and store it.

    A cache file that cannot be read (truncated, older format) is rebuilt. The cache is only a speed-up: when
    its folder cannot be read or written (permissions, a read-only or full disk, ``$FERLIB_CACHE`` naming a
    file), the data are built and returned uncached, with one warning per cache folder and process naming the
    folder and the reason.
    """
    path = cache_path(name, root, options, cache_dir=cache_dir)
    try:
        hit = path.is_file()
    except OSError as exc:  # e.g. a cache folder this user may not list
        _warn_unusable(path.parent, exc)
        hit = False
    if hit:
        try:
            return FERData.load(path)
        except Exception:  # corrupt or incompatible entry: fall through and rebuild it
            pass
    data = build()
    try:
        data.save(path)
    except OSError as exc:
        _warn_unusable(path.parent, exc)
    return data


_WARNED: set[str] = set()


def _warn_unusable(folder: Path, exc: OSError) -> None:
    if str(folder) in _WARNED:
        return
    _WARNED.add(str(folder))
    warnings.warn(f"dataset cache {folder} is not usable ({exc.strerror or exc}); continuing without a cache. "
                  "Set FERLIB_CACHE to a writable folder to cache decoded datasets.", UserWarning, stacklevel=3)
