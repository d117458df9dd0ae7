"""The single entry point :func:`load_dataset`: a name -> reader registry plus the on-disk cache."""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Callable

from .affectnet import read_affectnet
from .cache import cached
from .dataset import FERData
from .fer2013 import read_fer2013
from .ferplus import read_ferplus
from .folder import read_folder
from .rafdb import read_rafdb

__all__ = ["READERS", "list_datasets", "load_dataset"]

READERS: dict[str, Callable[..., FERData]] = {
    "ferplus": read_ferplus, "rafdb": read_rafdb, "affectnet": read_affectnet, "folder": read_folder,
    "fer2013": read_fer2013,
}
_NOT_IN_KEY = ("progress",)  # options that do not change the data


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(READERS)


def _reader(name: str) -> Callable[..., FERData]:
    try:
        return READERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(list_datasets())}") from None


def _full_options(name: str, reader: Callable[..., FERData], options: dict) -> dict:
    """``options`` with the reader's defaults filled in (the cache key); unknown names raise TypeError."""
    params = {k: p.default for k, p in inspect.signature(reader).parameters.items() if p.kind == p.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; "
                        f"valid: {', '.join(params)}")
    return {k: options.get(k, d) for k, d in params.items() if k not in _NOT_IN_KEY}


def load_dataset(name: str, root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 cache: bool = True, **options) -> FERData:
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
        False reads the files every time and writes no cache.
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
    reader = _reader(name)
    key = _full_options(name, reader, options)
    if not cache:
        return reader(root, **options)
    return cached(name, Path(root), key, lambda: reader(root, **options), cache_dir=cache_dir)
