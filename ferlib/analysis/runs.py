"""Finished runs: load run directories and their readouts, their datasets and saved features (read only).

A runs folder may hold a corrupted run (a truncated ``result.json``, an unreadable ``readout.npz``):
:func:`load_runs` on a folder skips it with a :class:`ferlib.rundir.RunWarning` naming the folder and the
reason, so one bad run never stops an analysis of the others; :func:`load_run` on that folder raises
:class:`ferlib.rundir.CorruptRunError` saying what is wrong.
"""
from __future__ import annotations

import functools
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import rundir
from ..paths import resolve_recorded
from ..results import read_json

__all__ = [
    "RunRecord", "list_runs", "load_run", "load_runs", "one_per_method", "run_dataset", "images_by_id",
    "saved_features", "class_names_for", "start_name", "run_start",
]


@dataclass
class RunRecord:
    """Everything one finished run directory holds, loaded.

    Attributes
    ----------
    path : Path
        The run directory.
    result : dict
        ``result.json``: the run's summary (run_id, method, oracle, noise, seed, last/best metrics ...).
    epochs : pandas.DataFrame
        ``epochs.csv``: one row per epoch (epoch, lr, train_<term>, valid_acc, test_acc, ...).
    readout : dict of str to np.ndarray
        ``readout.npz``: per-sample arrays of the train split (``ids``, ``given``, ``clean`` (N,),
        ``train_logits`` (N, K), ``method_score`` (N,), ...) and ``test_logits`` (M, K), ``test_ids``,
        ``test_labels`` (M,).
    history : list of dict
        ``epochs.jsonl``: every epoch with the per-class accuracy and confusion of valid and test.
    config : dict
        ``config.json``: the resolved configuration (train, method_config, backbone, dataset ...).
    noise : dict or None
        ``noise.json``: :func:`ferlib.noise.apply_noise`'s report.
    """

    path: Path
    result: dict
    epochs: "object"
    readout: dict
    history: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    noise: dict | None = None

    def __iter__(self):
        """``result, epochs, readout = load_run(path)`` also works."""
        return iter((self.result, self.epochs, self.readout))

    @property
    def run_id(self) -> str:
        return str(self.result.get("run_id", self.path.name))

    @property
    def label(self) -> str:
        """``method`` plus ``(oracle)`` when the method sees what noisy-label methods must not."""
        return f"{self.result['method']}{' (oracle)' if self.result.get('oracle') else ''}"

    @property
    def flipped(self) -> np.ndarray:
        """(N,) bool: the train samples whose given label differs from the clean one."""
        return np.asarray(self.readout["given"]) != np.asarray(self.readout["clean"])


def list_runs(runs_dir: str | os.PathLike) -> list[Path]:
    """Finished run directories directly under ``runs_dir``, sorted (:func:`ferlib.rundir.finished_runs`)."""
    return rundir.finished_runs(runs_dir)


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """Load a finished run directory.

    Parameters
    ----------
    run_dir : folder written by :func:`ferlib.engine.fit`.

    Returns
    -------
    RunRecord
        ``result``, ``epochs`` (DataFrame), ``readout`` (dict of arrays), plus ``history``, ``config``, ``noise``.

    Raises
    ------
    FileNotFoundError
        ``result.json`` or ``readout.npz`` is missing (the run has not finished).
    ferlib.rundir.CorruptRunError
        A file is there but unusable (:func:`ferlib.rundir.read_result`, :func:`ferlib.rundir.read_readout`;
        an unreadable ``epochs.csv`` / ``epochs.jsonl`` / ``noise.json`` too), naming the folder and the file.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    result, readout = rundir.read_result(run_dir), rundir.read_readout(run_dir)
    csv, jsonl, noise = run_dir / rundir.EPOCHS_CSV, run_dir / rundir.EPOCHS_JSONL, run_dir / rundir.NOISE
    try:
        epochs = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
        history = ([json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
                   if jsonl.is_file() else [])
        noise_report = read_json(noise) if noise.is_file() else None
    except (ValueError, OSError) as exc:  # pandas' parser errors and JSONDecodeError are ValueErrors
        raise rundir.CorruptRunError(run_dir, f"a history or noise file cannot be read ({type(exc).__name__}: "
                                              f"{exc})") from None
    return RunRecord(path=run_dir, result=result, epochs=epochs, readout=readout, history=history,
                     config=rundir.read_config(run_dir), noise=noise_report)


def load_runs(runs) -> list[RunRecord]:
    """Every finished run of a runs folder (or one run folder, or a list of RunRecords / run folders), loaded.

    A run of a runs folder that cannot be loaded (:func:`ferlib.rundir.find_problem` finds a fault, or a file of
    it cannot be read) is skipped with a :class:`ferlib.rundir.RunWarning` naming it and why. One run folder, or
    a run named in a list, is loaded or raises (:func:`load_run`): the caller asked for that run.

    Returns
    -------
    list of RunRecord, in :func:`list_runs` order for a folder.
    """
    if isinstance(runs, RunRecord):
        return [runs]
    if isinstance(runs, (str, os.PathLike)):
        path = Path(runs)
        if (path / rundir.RESULT).is_file():  # a run folder itself
            return [load_run(path)]
        loaded = []
        for p in rundir.run_folders(path):
            try:
                loaded.append(load_run(p))
            except (rundir.CorruptRunError, OSError) as exc:
                warnings.warn(f"skipped run {p}: {getattr(exc, 'reason', exc)}", rundir.RunWarning, stacklevel=2)
        return loaded
    return [r if isinstance(r, RunRecord) else load_run(r) for r in runs]


def one_per_method(runs) -> list[RunRecord]:
    """One run per method label for figures that show one run each: its first run trained on flipped labels
    (in the given order), else its first run."""
    runs = load_runs(runs)
    seen: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: not r.flipped.any()):  # stable: noisy runs first, order kept
        seen.setdefault(run.label, run)
    return sorted(seen.values(), key=runs.index)


@functools.lru_cache(maxsize=4)
def _load_dataset_cached(dataset: str, data: str, options_json: str):
    from ..data import load_dataset

    return load_dataset(dataset, data, **json.loads(options_json))


def run_dataset(run):
    """The full dataset (all splits, clean labels, votes) a run was trained on, read through the cache.

    ``run`` is a RunRecord, a run directory or a ``result.json`` dict. A relative data path is relative to the
    repository root, where runs record it (:func:`ferlib.paths.resolve_recorded`). Loaded datasets are memoised.
    """
    result = run if isinstance(run, dict) else load_runs(run)[0].result
    return _load_dataset_cached(result["dataset"], str(resolve_recorded(result["data"])),
                                json.dumps(result.get("dataset_options") or {}, sort_keys=True))


def images_by_id(data, ids: Sequence[str]) -> np.ndarray:
    """Rows of ``data`` for sample ``ids``, in the order given.

    Parameters
    ----------
    data : FERData
    ids : (n,) sample ids (``FERData.ids`` spelling, e.g. a readout's ``ids``).

    Returns
    -------
    (n,) int64 row indices into ``data``.

    Raises
    ------
    KeyError
        Some ids are not in ``data`` (count and first few named).
    """
    pos = {str(i): k for k, i in enumerate(np.asarray(data.ids).astype(str))}
    ids = np.asarray(ids).astype(str)
    missing = [i for i in ids if i not in pos]
    if missing:
        raise KeyError(f"{len(missing)} of {len(ids)} id(s) not in dataset {data.name or '?'!r}, e.g. {missing[:3]}")
    return np.array([pos[i] for i in ids], dtype=np.int64)


def class_names_for(run_or_k) -> tuple[str, ...]:
    """Class names of a run (or of a class count): canonical names for 7/8 classes, else ``"0".."K-1"``."""
    from ..classes import class_names

    k = run_or_k if isinstance(run_or_k, (int, np.integer)) else None
    if k is None:
        run = load_runs(run_or_k)[0]
        k = int(run.result.get("classes") or run.readout["train_logits"].shape[1])
    try:
        return class_names(int(k))
    except ValueError:
        return tuple(str(i) for i in range(int(k)))


def saved_features(run) -> dict[str, np.ndarray]:
    """The penultimate features a run saved in its read-out (``train.save_features``): split -> (N, D) float32;
    empty when none were saved (:func:`ferlib.inference.run_features` recomputes them from ``model.pt``)."""
    run = load_runs(run)[0]
    return {s: run.readout[f"{s}_features"].astype(np.float32) for s in ("train", "test")
            if f"{s}_features" in run.readout}


def start_name(weights) -> str:
    """A start as the tables name it: ``"random"`` for ``backbone.weights`` None (NaN in a DataFrame), else the
    weights (``"ssl"``, a file)."""
    return "random" if weights is None or (isinstance(weights, float) and math.isnan(weights)) else str(weights)


def run_start(run) -> str:
    """The start of a run (:class:`RunRecord` or its ``result.json`` dict): :func:`start_name` of its
    ``backbone.weights``."""
    result = run.result if isinstance(run, RunRecord) else run
    return start_name((result.get("backbone") or {}).get("weights"))
