"""One run directory: the names of its files, when it counts as finished, reading and listing runs.

Every module that writes or reads a run directory goes through these names and functions::

    config.json    CONFIG        resolved configuration (the spec's fields, train, method config)
    noise.json     NOISE         the realised noise (:func:`ferlib.noise.apply_noise`'s report)
    checkpoint.pt  CHECKPOINT    last finished epoch, for resume
    epochs.csv     EPOCHS_CSV    one row per epoch (all scalar metrics)
    epochs.jsonl   EPOCHS_JSONL  every epoch with per-class accuracy and confusion of valid and test
    model.pt       MODEL         final weights (backbone + head)
    readout.npz    READOUT       per-sample read-outs (train: ids, given, clean, logits, method_*; test: ...)
    result.json    RESULT        the run's summary (:class:`Result`), written last: its presence = finished
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

from .results import read_json

__all__ = ["CONFIG", "NOISE", "CHECKPOINT", "EPOCHS_CSV", "EPOCHS_JSONL", "MODEL", "READOUT", "RESULT", "Result",
           "is_finished", "finished_runs", "read_result", "read_config", "read_readout"]

CONFIG, NOISE, CHECKPOINT = "config.json", "noise.json", "checkpoint.pt"
EPOCHS_CSV, EPOCHS_JSONL, MODEL = "epochs.csv", "epochs.jsonl", "model.pt"
READOUT, RESULT = "readout.npz", "result.json"


class Result(TypedDict, total=False):
    """What ``result.json`` holds (:func:`ferlib.engine.fit` writes it; :func:`ferlib.experiment.run` adds the
    spec's fields). Metrics are fractions in [0, 1]; ``last`` (the primary number) and ``best`` (the epoch
    chosen on ``select_on``, validation by default) are test metrics: ``acc``, ``mean_acc``, ``macro_f1``, ...
    """

    run_id: str
    method: str
    oracle: bool
    variant: str                # ablation variant ("full" or a key of the method's ablations); "" otherwise
    fold: list[int] | None      # [i, k] of a cross-fitting cell; None otherwise
    dataset: str
    data: str
    dataset_options: dict
    noise: str
    noise_rate: float           # realised share of flipped train labels
    noise_seed: int
    train_subset: int | None
    recipe: str
    method_options: dict
    seed: int
    epochs: int
    best_epoch: int
    selection: str
    last: dict
    best: dict
    last_valid: dict
    time_per_epoch_s: float
    train_loss_first: float
    train_loss_last: float


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True once the run wrote ``result.json`` (its last file)."""
    return (Path(run_dir) / RESULT).is_file()


def finished_runs(root: str | os.PathLike) -> list[Path]:
    """Finished run directories directly under ``root``, sorted; [] for a missing folder (sub-folders such as
    ``ablations/`` and ``cleanlab/`` are runs folders of their own, not descended into)."""
    return sorted(p.parent for p in Path(root).glob(f"*/{RESULT}"))


def read_result(run_dir: str | os.PathLike) -> Result:
    """``result.json`` of a finished run (FileNotFoundError naming the folder when it has not finished)."""
    path = Path(run_dir) / RESULT
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {RESULT}; the run has not finished (or this is not a run folder)")
    return read_json(path)


def read_config(run_dir: str | os.PathLike) -> dict:
    """``config.json`` of a run; ``{}`` when it has none."""
    path = Path(run_dir) / CONFIG
    return read_json(path) if path.is_file() else {}


def read_readout(run_dir: str | os.PathLike) -> dict:
    """``readout.npz`` of a finished run as ``{name: array}`` (FileNotFoundError naming the folder if absent)."""
    import numpy as np

    path = Path(run_dir) / READOUT
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {READOUT}; the run has not finished (or this is not a run folder)")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
