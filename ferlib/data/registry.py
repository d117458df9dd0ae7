"""The single entry point :func:`load_dataset`: a name -> reader registry plus the on-disk cache.

A reader is a function ``read_<name>(root, *, <options>) -> FERData`` registered where it is defined::

    @register_dataset("rafdb")
    def read_rafdb(root, *, image_size: int | None = 100, channels: int = 3, ...) -> FERData: ...

Its keyword-only parameters are the dataset's options: their defaults are the harness's defaults (and the
cache key), their type hints type the CLI's ``--dataset-opt KEY=VALUE`` (:func:`ferlib.options.parse_options`).
The reader's module must be imported by :mod:`ferlib.data` (its ``__init__``) so that it registers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .._registry import Registry, full_options
from .cache import cached
from .dataset import FERData
from .storage import CHUNK_SIZE

__all__ = ["READERS", "register_dataset", "list_datasets", "dataset_reader", "load_dataset", "cache_dataset"]

_DATASETS: Registry[Callable[..., FERData]] = Registry("dataset")
#: Dataset name -> reader; a live read-only view of the registry.
READERS = _DATASETS.view()
_NOT_IN_KEY = ("progress",)  # options that do not change the data


def register_dataset(name: str) -> Callable[[Callable[..., FERData]], Callable[..., FERData]]:
    """Decorator registering a reader function as dataset ``name`` (a name registered twice raises ValueError)."""
    return _DATASETS.register(name)


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return _DATASETS.names()


def dataset_reader(name: str) -> Callable[..., FERData]:
    """The reader of dataset ``name``; an unknown name raises ValueError listing the valid ones."""
    return _DATASETS.get(name)


def load_dataset(name: str, root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 cache: bool = True, mmap: bool | None = None, chunk_size: int = CHUNK_SIZE, **options) -> FERData:
    """Read a dataset by name, through the on-disk cache.

    Parameters
    ----------
    name : str
        One of :func:`list_datasets`: ``"affectnet"``, ``"fer2013"``, ``"ferplus"``, ``"folder"``, ``"rafdb"``.
    root : str or PathLike
        The dataset's root folder (see each reader).
    cache_dir : str or PathLike, optional
        Cache folder; default ``$FERLIB_CACHE`` or ``~/.cache/ferlib`` (:func:`ferlib.data.cache.default_cache_dir`).
    cache : bool
        False reads the files every time and writes no cache (the images then always stay in memory).
    mmap : bool or None
        How the cache stores the images (:mod:`ferlib.data.cache`): True memory-maps them (``FERData.images``
        is then a :class:`~ferlib.data.storage.MappedImages`, read from disk on demand: datasets larger than
        memory), False keeps them in memory, None (default) memory-maps images of at least
        ``$FERLIB_MMAP_BYTES`` bytes (default 2 GiB).
    chunk_size : int
        Images decoded and held at a time while a memory-mapped entry is built.
    **options
        Keyword options of the reader (e.g. ``mode="plurality"``, ``num_classes=7``, ``image_size=64``).

    Returns
    -------
    FERData
        All splits of the dataset.

    Raises
    ------
    ValueError
        Unknown dataset name (valid names listed); :class:`~ferlib.data.common.DatasetError` for bad files.
    TypeError
        An option the reader does not take (valid options listed).
    """
    reader = dataset_reader(name)
    key = _cache_key(name, options)
    if not cache:
        return reader(root, **options)
    return cached(name, Path(root), key, lambda: reader(root, **options), cache_dir=cache_dir, mmap=mmap,
                  chunk_size=chunk_size)


def cache_dataset(data: FERData, name: str, root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  **options) -> FERData:
    """Store ``data`` as the cache entry that ``load_dataset(name, root, **options)`` reads, without reading the
    files under ``root`` (a dataset decoded on another machine: ``scripts/pack_ferplus.py``); an entry already
    there is kept and returned. The entry's key holds ``root``'s file signature (:func:`ferlib.data.cache.cache_path`),
    so files changed afterwards make ``load_dataset`` read them again."""
    return cached(name, Path(root), _cache_key(name, options), lambda: data, cache_dir=cache_dir)


def _cache_key(name: str, options: dict) -> dict:
    """The reader options of the cache key: every option, defaults filled in (unknown names raise), but those that
    do not change the data."""
    full = full_options(dataset_reader(name), options, what=f"dataset {name!r}")
    return {k: v for k, v in full.items() if k not in _NOT_IN_KEY}
