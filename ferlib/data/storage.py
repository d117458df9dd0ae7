"""Where decoded images live: in memory, or in a memory-mapped ``.npy`` read on demand (datasets larger than memory).

:func:`~ferlib.data.common.assemble` decodes a dataset's images ``chunk_size`` at a time and hands the chunks to
the active :class:`ImageStore`: the default one fills an in-memory array; the one the cache sets up
(:func:`ferlib.data.cache.cached`) for a large dataset writes them one after the other into a ``.npy`` file, so
the build holds one chunk, never the whole dataset. Such images come back as :class:`MappedImages`: the file
opened read-only as a memory map, read row by row when indexed; :meth:`MappedImages.select` keeps a subset lazy
(the file and an index array), and :func:`batch_images` reads one batch of either form into memory.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from ..results import atomic_write

__all__ = ["CHUNK_SIZE", "MMAP_BYTES_ENV", "DEFAULT_MMAP_BYTES", "MappedImages", "ImageStore", "ImageStoreError",
           "open_images", "select_rows", "batch_images", "iter_chunks", "mmap_threshold", "use_store",
           "current_store"]

#: Images decoded, held and written at a time while a dataset is built.
CHUNK_SIZE = 1024
#: Environment variable: images of at least this many bytes are memory-mapped when the caller leaves ``mmap`` unset.
MMAP_BYTES_ENV = "FERLIB_MMAP_BYTES"
DEFAULT_MMAP_BYTES = 2 << 30  # 2 GiB: FERPlus (81 MB) and RAF-DB (0.5 GB) stay in memory, AffectNet (11 GB) maps
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class MappedImages:
    """Read-only images (N, H, W, C) uint8 in a ``.npy`` file, read from disk only when indexed.

    Indexing picks rows, as on an array: an int gives one image (H, W, C), a slice, an index array or a boolean
    mask gives (n, H, W, C); the result is an ordinary, writable in-memory ``np.ndarray``. ``np.asarray`` reads
    every row (O(N) memory: meant for small data and tests).

    Parameters
    ----------
    array : np.memmap, shape (M, H, W, C), uint8
        The whole file, opened read-only (:func:`open_images`).
    rows : np.ndarray, shape (N,), int64, optional
        The file rows this view holds, in order; None: all M of them.
    """

    def __init__(self, array: np.memmap, rows: np.ndarray | None = None):
        self._array = array
        self.rows = rows

    @property
    def path(self) -> Path:
        """The ``.npy`` file."""
        return Path(self._array.filename)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self),) + self._array.shape[1:]

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    @property
    def ndim(self) -> int:
        return self._array.ndim

    def __len__(self) -> int:
        return len(self._array) if self.rows is None else len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        return np.array(self._array[key if self.rows is None else self.rows[key]])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def select(self, index: np.ndarray) -> "MappedImages":
        """A lazy view of some of these rows (an index array or a boolean mask over them): nothing is read."""
        rows = np.arange(len(self._array)) if self.rows is None else self.rows
        return MappedImages(self._array, rows[np.asarray(index)])


def open_images(path: str | os.PathLike) -> MappedImages:
    """Open a ``.npy`` of uint8 images (N, H, W, C) as :class:`MappedImages`, after checking that the file has
    exactly the size its header announces.

    Raises
    ------
    ValueError
        Naming the file: not a ``.npy``, not C-ordered uint8 (N, H, W, C), or truncated / padded (its size
        against the header's shape).
    """
    path = Path(path)
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in _HEADER_READERS:
            raise ValueError(f"{path} is a .npy of format version {version}; expected 1.0 or 2.0")
        shape, fortran_order, dtype = _HEADER_READERS[version](f)
        offset = f.tell()
    if fortran_order or dtype != np.uint8 or len(shape) != 4:
        raise ValueError(f"{path} holds {dtype} {shape}{' (Fortran order)' * fortran_order}; "
                         "expected C-ordered uint8 images (N, H, W, C)")
    need, size = offset + int(np.prod(shape)), path.stat().st_size
    if size != need:
        raise ValueError(f"{path} holds {size} bytes but its header (uint8 {shape}) needs {need}: truncated or corrupt")
    return MappedImages(np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=shape))


def select_rows(images: np.ndarray | MappedImages, index: np.ndarray) -> np.ndarray | MappedImages:
    """The rows ``index`` (index array or boolean mask) of images of either form; lazy for :class:`MappedImages`."""
    return images.select(index) if isinstance(images, MappedImages) else images[index]


def batch_images(images: np.ndarray | MappedImages, index) -> np.ndarray:
    """One batch in memory: the rows ``index`` (an index array or a CPU tensor, shape (B,)) of images (N, H, W, C)
    of either form, as a writable uint8 ``np.ndarray`` (B, H, W, C) that ``torch.from_numpy`` takes as it is."""
    return np.asarray(images[np.asarray(index)])


def iter_chunks(images: np.ndarray | MappedImages, chunk_size: int = CHUNK_SIZE) -> Iterator[np.ndarray]:
    """Consecutive in-memory blocks (<= chunk_size, H, W, C) of images of either form, in order."""
    for start in range(0, len(images), chunk_size):
        yield images[start:start + chunk_size]


def mmap_threshold() -> int:
    """``$FERLIB_MMAP_BYTES`` (an int >= 0; 0 maps every dataset) if set, else ``DEFAULT_MMAP_BYTES``."""
    raw = os.environ.get(MMAP_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MMAP_BYTES
    if not raw.isdigit():
        raise ValueError(f"{MMAP_BYTES_ENV} must be a number of bytes >= 0, got {raw!r}")
    return int(raw)


class ImageStoreError(OSError):
    """The store could not write its ``.npy`` file (unwritable folder, full disk); the cause is chained."""


@dataclass(frozen=True)
class ImageStore:
    """Where :func:`~ferlib.data.common.assemble` puts a dataset's decoded images.

    Attributes
    ----------
    path : Path or None
        The ``.npy`` a memory-mapped dataset is written to (atomically: a temporary file, then a rename);
        None keeps every dataset in memory.
    mmap : bool or None
        True: memory-map; False: keep in memory; None: memory-map when the images take at least ``threshold``
        bytes.
    threshold : int
        See ``mmap``.
    chunk_size : int
        Images decoded and held at a time (>= 1).
    """

    path: Path | None = None
    mmap: bool | None = False
    threshold: int = DEFAULT_MMAP_BYTES
    chunk_size: int = CHUNK_SIZE

    def __post_init__(self) -> None:
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {self.chunk_size!r}")

    def maps(self, nbytes: int) -> bool:
        """Whether images of ``nbytes`` bytes go to the ``.npy`` file."""
        return self.path is not None and (nbytes >= self.threshold if self.mmap is None else self.mmap)

    def collect(self, shape: tuple[int, int, int, int], chunks: Iterable[np.ndarray]) -> np.ndarray | MappedImages:
        """Store images (N, H, W, C) uint8 = ``shape`` arriving as consecutive chunks (c, H, W, C) summing to N rows.

        Returns an in-memory array or, when :meth:`maps`, the written file opened as :class:`MappedImages`; a
        failed write raises :class:`ImageStoreError`.
        """
        nbytes = int(np.prod(shape))
        if not self.maps(nbytes):
            return _fill(np.empty(shape, np.uint8), chunks)
        try:
            atomic_write(self.path, lambda f: _write_npy(f, shape, chunks), nbytes=nbytes)
        except OSError as exc:
            raise ImageStoreError(f"cannot write {self.path}: {exc}") from exc
        return open_images(self.path)


def _fill(out: np.ndarray, chunks: Iterable[np.ndarray]) -> np.ndarray:
    start = 0
    for chunk in chunks:
        out[start:start + len(chunk)] = chunk
        start += len(chunk)
    return out


def _write_npy(f: BinaryIO, shape: tuple[int, ...], chunks: Iterable[np.ndarray]) -> None:
    """A ``.npy`` of uint8 ``shape`` on ``f``: the header, then each chunk's bytes as it arrives."""
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
    for chunk in chunks:
        f.write(np.ascontiguousarray(chunk, dtype=np.uint8).data)
        del chunk  # freed before the next chunk is decoded


_STORE: contextvars.ContextVar[ImageStore] = contextvars.ContextVar("ferlib_image_store", default=ImageStore())


def current_store() -> ImageStore:
    """The store :func:`~ferlib.data.common.assemble` uses now (in memory unless inside :func:`use_store`)."""
    return _STORE.get()


@contextlib.contextmanager
def use_store(store: ImageStore):
    """Make ``store`` the active one inside the ``with`` block (how the cache reaches the readers' assemble)."""
    token = _STORE.set(store)
    try:
        yield store
    finally:
        _STORE.reset(token)
