"""Atomic writes, and the small JSON and table helpers built on them.

Every run writes its own files (``result.json``, ``epochs.csv``, ``model.pt``, ``checkpoint.pt``) atomically:
each writer writes a temporary file of its own (``tempfile.mkstemp`` in the target's folder, so two writers of
one file never share a temporary name), flushes it to disk and renames it over the target. An interrupted or
failed write leaves the old file as it was and removes its temporary file. Large writes first check the free
space (:func:`ensure_free_space`), and a write that runs out of space mid-way says so with the path and size.
The table over many runs is :func:`ferlib.rundir.collect_results`.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_text", "atomic_savez", "ensure_free_space", "nbytes_of", "flatten",
           "write_json", "read_json", "write_table"]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, nbytes: int | None = None) -> Path:
    """Call ``write(f)`` on a binary file that becomes ``path`` by an atomic rename once it is complete.

    Parameters
    ----------
    path : the target; its folder is created if missing.
    write : writes the whole content to the open binary file it is given.
    nbytes : the size about to be written; when given, :func:`ensure_free_space` checks it first, so a full disk
        is reported before anything is written.

    The temporary file is ``.<name>.<random>.tmp`` beside the target (unique per writer), made readable by
    all (0644) like an ordinary file; on any failure it is removed and the old ``path`` is left untouched. A
    write that fails for lack of space (``ENOSPC``, or torch's "file write failed" on a full disk) is raised as
    ``OSError(ENOSPC)`` naming ``path``, the bytes needed and the bytes free.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if nbytes is not None:
        ensure_free_space(path, nbytes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and _out_of_space(exc):
            free = _free_bytes(path.parent)
            raise OSError(errno.ENOSPC, f"disk full while writing {path}"
                          + (f" (about {_size(nbytes)} needed)" if nbytes else "")
                          + (f"; {_size(free)} free on {path.parent}" if free is not None else "")
                          + "; the old file, if any, is unchanged and the partial temporary file was removed") from exc
        raise
    return path


def ensure_free_space(path: str | os.PathLike, nbytes: int) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``path``, the bytes needed and the bytes free when the file system of
    ``path``'s folder has less than ``nbytes`` free (``shutil.disk_usage``). A folder whose usage cannot be read
    is not checked."""
    path = Path(path)
    free = _free_bytes(path.parent)
    if free is not None and free < nbytes:
        raise OSError(errno.ENOSPC, f"not enough disk space to write {path}: it needs about {_size(nbytes)}, "
                                    f"{path.parent} has {_size(free)} free ({nbytes} and {free} bytes)")


def nbytes_of(obj) -> int:
    """Bytes of the tensors and arrays in ``obj`` (nested dicts, lists, tuples), plus 1% and 64 KiB for the
    container: what :func:`atomic_write` should be told before saving ``obj`` with torch or numpy."""
    def raw(o) -> int:
        if isinstance(o, dict):
            return sum(raw(v) for v in o.values())
        if isinstance(o, (list, tuple)):
            return sum(raw(v) for v in o)
        if hasattr(o, "element_size") and hasattr(o, "numel"):  # torch.Tensor, without importing torch
            return int(o.numel()) * int(o.element_size())
        return int(getattr(o, "nbytes", 0) or 0)
    n = raw(obj)
    return n + n // 100 + 64 * 1024


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _out_of_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left" in text or "file write failed" in text  # torch's PytorchStreamWriter on a full disk


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file in the same folder and an atomic rename."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def atomic_savez(path: str | os.PathLike, *, compress: bool = False, **arrays) -> Path:
    """``numpy.savez`` to ``path`` via a temporary file and an atomic rename, the free space checked first.
    ``compress``: ``numpy.savez_compressed`` (deflate; for files that are committed, such as read-outs; a cache
    that is memory-mapped must stay uncompressed)."""
    import numpy as np

    save = np.savez_compressed if compress else np.savez
    return atomic_write(path, lambda f: save(f, **arrays), nbytes=nbytes_of(arrays))


def write_json(path: str | os.PathLike, obj) -> Path:
    """Atomic JSON dump (NaN written as null-safe ``NaN`` literals, as Python's json does)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike):
    with open(path) as f:
        return json.load(f)


def write_table(path: str | os.PathLike, frame) -> Path:
    """Atomic CSV write of a pandas DataFrame."""
    return atomic_write_text(path, frame.to_csv(index=False))


def flatten(d: dict, *, sep: str = ".", prefix: str = "") -> dict:
    """Nested dicts -> one level, keys joined with ``sep`` (``{"last": {"acc": 1}}`` -> ``{"last.acc": 1}``)."""
    out = {}
    for k, v in d.items():
        out.update(flatten(v, sep=sep, prefix=f"{prefix}{k}{sep}") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
