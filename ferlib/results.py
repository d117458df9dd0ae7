"""Atomic writes and the tidy results tables.

Every run writes its own files (``result.json``, ``epochs.csv``) atomically; tables over many runs are
collected from those files, so an interrupted run can never corrupt another run's numbers.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_text", "atomic_savez", "flatten", "write_json", "read_json", "write_table", "collect_results", "collect_epochs"]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_savez(path: str | os.PathLike, **arrays) -> Path:
    """``numpy.savez`` (uncompressed) to ``path`` via a temporary file and an atomic rename."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    """Atomic JSON dump (NaN written as null-safe ``NaN`` literals, as Python's json does)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike):
    with open(path) as f:
        return json.load(f)


def write_table(path: str | os.PathLike, frame) -> Path:
    """Atomic CSV write of a pandas DataFrame."""
    return atomic_write_text(path, frame.to_csv(index=False))


def collect_results(runs_dir: str | os.PathLike):
    """One row per finished run under ``runs_dir`` (every ``*/result.json``), as a pandas DataFrame."""
    import pandas as pd

    from .rundir import finished_runs, read_result

    rows = [read_result(p) for p in finished_runs(runs_dir)]
    return pd.DataFrame([{k: v for k, v in flatten(r).items() if not isinstance(v, list)} for r in rows])


def collect_epochs(runs_dir: str | os.PathLike):
    """All per-epoch rows of all runs under ``runs_dir`` (every ``*/epochs.csv``), as one DataFrame."""
    import pandas as pd

    from .rundir import EPOCHS_CSV

    frames = [pd.read_csv(p) for p in sorted(Path(runs_dir).glob(f"*/{EPOCHS_CSV}"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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
