"""Inference on finished runs: a run's model rebuilt from its folder, and its penultimate features.

The views (:mod:`ferlib.analysis`, the notebooks) and cross-dataset scoring (:mod:`ferlib.cross_eval`) read
finished runs through this module and :mod:`ferlib.rundir`; nothing here trains or writes a run folder.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from . import rundir
from .backbones import BackboneConfig, create_model
from .engine import TrainConfig, predict, prepare_model, resolve_device
from .paths import resolve_recorded

__all__ = ["load_model", "run_features"]


def load_model(run_dir: str | os.PathLike, *, device: str | None = None) -> tuple:
    """The final model of the finished run in ``run_dir``, rebuilt from its ``config.json`` (the backbone the
    run trained, the recorded class count) with the weights of ``model.pt``, for inference.

    Parameters
    ----------
    run_dir : a run directory written by :func:`ferlib.experiment.run` (its ``model.pt`` present).
    device : torch device; default the run's ``train.device`` setting.

    Returns
    -------
    (model on the device, the run's TrainConfig with ``progress`` off, torch.device). The model computes as the
    run did: the autocast dtype and layout its ``config.json`` records (``precision``); a run written before that
    record computed in float32, channels-first, on CPU (bfloat16 only on CUDA).
    """
    import torch

    config = rundir.read_config(run_dir)
    missing = [k for k in ("train", "backbone", "classes") if k not in config]
    if missing:
        raise ValueError(f"{run_dir}/{rundir.CONFIG} lacks {missing}; it was not written by ferlib.experiment.run")
    train = TrainConfig(**config["train"])
    dev = resolve_device(device or train.device)
    recorded = config.get("precision") or {"autocast": "bfloat16" if dev.type == "cuda" and train.amp
                                           else "float32", "channels_last": False}
    train = dataclasses.replace(train, progress=False, amp=recorded["autocast"] == "bfloat16",
                                channels_last=recorded["channels_last"])
    backbone = dataclasses.replace(BackboneConfig(**config["backbone"]), weights=None)  # model.pt has them all
    model = create_model(backbone, int(config["classes"]))
    model.load_state_dict(torch.load(Path(run_dir) / rundir.MODEL, map_location="cpu", weights_only=True))
    return prepare_model(model, train, dev), train, dev


def run_features(run_dir: str | os.PathLike, *, splits=("train", "test"), device: str | None = None) -> dict:
    """Penultimate features of a finished run's model: the saved ones, or recomputed from ``model.pt``.

    Parameters
    ----------
    run_dir : a run directory written by :func:`ferlib.experiment.run`.
    splits : which of ``"train"`` (rows = the read-out's ``ids``) and ``"test"`` (rows = ``test_ids``).
    device : torch device for recomputing; default the run's ``train.device`` setting.

    Returns
    -------
    dict split -> (N, D) float32 features (the ``model.embed`` output the classifier sees).
    """
    from .data import load_dataset

    bad = set(splits) - {"train", "test"}
    if bad:
        raise ValueError(f"splits must be among ('train', 'test'), got {sorted(bad)}")
    readout = rundir.read_readout(run_dir)
    saved = {s: readout[f"{s}_features"].astype(np.float32) for s in splits if f"{s}_features" in readout}
    todo = [s for s in splits if s not in saved]
    if not todo:
        return saved
    cfg = rundir.read_config(run_dir)
    model, train, dev = load_model(run_dir, device=device)
    data = load_dataset(cfg["dataset"], resolve_recorded(cfg["data"]), **(cfg.get("dataset_options") or {}))
    rows = {str(i): k for k, i in enumerate(np.asarray(data.ids).astype(str))}
    for s in todo:
        ids = readout["ids" if s == "train" else "test_ids"].astype(str)
        _, feats = predict(model, data.images[[rows[i] for i in ids]], train, dev, features=True)
        saved[s] = feats.astype(np.float32)
    return saved
