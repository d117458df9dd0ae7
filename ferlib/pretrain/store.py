"""Pretrained checkpoints, cached: one folder per (train images, backbone, pretraining config), found again by
the same three and never trained twice.

``<cache>/pretrain/<method>-<key>/`` (``<cache>``: :func:`ferlib.data.default_cache_dir`, ``$FERLIB_CACHE``)
holds ``weights.pt`` (the backbone's state dict: ``--weights PATH`` / :func:`ferlib.backbones.load_weights`
load it), ``provenance.json`` (written after the weights; its presence marks the entry finished: the command
that reproduces it, the data's fingerprints, the configs, the per-epoch loss curve, the precision, the
evaluation) and, while the run is unfinished, ``checkpoint.pt``. ``<key>`` hashes the content of the train
split's images (not their labels, not the other splits), the backbone's architecture (:class:`BackboneConfig`
without ``weights`` and ``drop_rate``, ``in_chans`` from the images) and :meth:`PretrainConfig.key_fields`;
a change to any of them is another folder. The folder is locked while written (:func:`ferlib.rundir.lock`), so
two processes never pretrain the same entry at once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .. import rundir
from ..backbones import BackboneConfig, WeightsError, create_model
from ..data.cache import data_fingerprint, default_cache_dir
from ..engine import resolve_device
from ..paths import portable_path
from ..results import atomic_write, nbytes_of, read_json, write_json
from .config import PretrainConfig
from .loop import CHECKPOINT, engine_config, fit_ssl
from .probe import evaluate_representation
from .views import ViewConfig

__all__ = ["SSL", "pretrain", "ssl_weights", "pretrain_jobs", "pretrain_command", "images_fingerprint",
           "checkpoint_key", "WEIGHTS", "PROVENANCE"]

#: The ``BackboneConfig.weights`` (``--weights``) value that names the cached self-supervised checkpoint.
SSL = "ssl"
WEIGHTS, PROVENANCE = "weights.pt", "provenance.json"
KEY_VERSION = 1  # bump when the same settings would train differently


def images_fingerprint(images) -> str:
    """Hash of the shape and pixels of uint8 ``images`` (N, H, W, C) (arrays or memory-mapped, read in chunks)."""
    h = hashlib.sha1(str(tuple(images.shape)).encode())
    for start in range(0, len(images), 4096):
        h.update(np.ascontiguousarray(images[start:start + 4096]).tobytes())
    return h.hexdigest()[:16]


def checkpoint_key(train_fingerprint: str, backbone: BackboneConfig, config: PretrainConfig) -> str:
    """The cache key of a pretraining: train images' fingerprint, backbone architecture, config's key fields."""
    key = json.dumps({"version": KEY_VERSION, "images": train_fingerprint, "backbone": asdict(backbone),
                      "config": config.key_fields()}, sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _entry(train_images, backbone: BackboneConfig, config: PretrainConfig, cache_dir) -> tuple[BackboneConfig, Path]:
    """(the backbone as pretrained: ``in_chans`` from the images, no weights or dropout; the entry's folder)."""
    backbone = dataclasses.replace(backbone, in_chans=train_images.shape[-1], weights=None, drop_rate=0.0)
    key = checkpoint_key(images_fingerprint(train_images), backbone, config)
    return backbone, Path(cache_dir or default_cache_dir()) / "pretrain" / f"{config.method}-{key}"


def _dataset(data, dataset: str, dataset_options: dict | None):
    from ..data import load_dataset

    return load_dataset(dataset, data, **(dataset_options or {}))


def pretrain(data: str | os.PathLike, *, dataset: str = "ferplus", dataset_options: dict | None = None,
             backbone: BackboneConfig | None = None, config: PretrainConfig | None = None, resume: bool = True,
             evaluate: bool = True, cache_dir: str | os.PathLike | None = None) -> dict:
    """Pretrain (or find the cached) backbone for the train split of a dataset; evaluate it.

    Parameters
    ----------
    data, dataset, dataset_options : the dataset root, its reader and the reader's options
        (:func:`ferlib.data.load_dataset`). Pretraining reads only the train split's images.
    backbone : the architecture (its ``weights`` and ``drop_rate`` are ignored; ``in_chans`` follows the data).
    config : :class:`PretrainConfig` (default: the CPU-budget defaults).
    resume : a finished entry is returned without training, an unfinished one continues from its checkpoint.
        False: the entry's files are removed first and it is trained from the start.
    evaluate : score the representation (:func:`~ferlib.pretrain.probe.evaluate_representation`: linear probe
        and k-NN on the clean labels of valid / test) unless ``provenance.json`` holds a score for these exact
        data (:meth:`FERData.fingerprint`: ids, labels and images).
    cache_dir : default :func:`ferlib.data.default_cache_dir`.

    Returns
    -------
    The provenance (``provenance.json``) with ``weights``: the absolute path of ``weights.pt``.
    """
    backbone, config = backbone or BackboneConfig(), config or PretrainConfig()
    device = resolve_device(config.device)  # an unavailable device fails before any data loads
    full = _dataset(data, dataset, dataset_options)
    train_images = full.subset("train").images  # the only thing training sees
    arch, folder = _entry(train_images, backbone, config, cache_dir)
    with rundir.lock(folder):
        if not resume:
            for name in (PROVENANCE, WEIGHTS, CHECKPOINT):
                (folder / name).unlink(missing_ok=True)
        provenance = _finished(folder) or _train(
            train_images, arch, config, folder, device, resume=resume,
            record=_record(data, dataset, dataset_options, arch, config, train_images, folder))
        if evaluate and provenance.get("evaluation", {}).get("data") != full.fingerprint():
            provenance = _evaluate(full, arch, config, folder, device, provenance)
    return {**provenance, "weights": str((folder / WEIGHTS).absolute())}


def _record(data, dataset: str, dataset_options: dict | None, arch: BackboneConfig, config: PretrainConfig,
            train_images, folder: Path) -> dict:
    """What an entry records of its making: the command that reproduces it, the data and its fingerprints (the
    root's files, :func:`ferlib.data.data_fingerprint`; the train images'), the backbone and the config."""
    return {"key": folder.name, "method": config.method,
            "command": pretrain_command(data, dataset=dataset, dataset_options=dataset_options, backbone=arch,
                                        config=config),
            "data": portable_path(data), "dataset": dataset,
            "dataset_options": dataset_options or {}, "data_fingerprint": data_fingerprint(data),
            "train_images": {"count": len(train_images), "shape": list(train_images.shape[1:]),
                             "fingerprint": images_fingerprint(train_images)},
            "backbone": asdict(arch), "config": asdict(config)}


def _finished(folder: Path) -> dict | None:
    """The provenance of a finished entry (weights and a readable provenance.json); None otherwise."""
    if not (folder / PROVENANCE).is_file() or not (folder / WEIGHTS).is_file():
        return None
    try:
        return read_json(folder / PROVENANCE)
    except ValueError as exc:
        warnings.warn(f"{folder / PROVENANCE} cannot be read ({exc}); pretraining again", UserWarning, stacklevel=3)
        return None


def _train(train_images, arch: BackboneConfig, config: PretrainConfig, folder: Path, device, *, resume: bool,
           record: dict) -> dict:
    """Run :func:`~ferlib.pretrain.loop.fit_ssl`; write ``weights.pt``, then ``provenance.json``; drop the
    checkpoint."""
    import lightly
    import timm

    from .. import __version__

    backbone, history, precision = fit_ssl(train_images, arch, config, folder, resume=resume)
    weights = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda f: torch.save(weights, f), nbytes=nbytes_of(weights))
    provenance = {**record, "epochs": config.epochs, "device": str(device), "threads": torch.get_num_threads(),
                  "precision": precision,
                  "loss_first": history[0]["loss"], "loss_last": history[-1]["loss"],
                  "train_time_s": sum(r["time_s"] for r in history), "history": history,
                  "versions": {"ferlib": __version__, "torch": torch.__version__, "timm": timm.__version__,
                               "lightly": lightly.__version__}}
    provenance = _write_provenance(folder, provenance)
    (folder / CHECKPOINT).unlink(missing_ok=True)
    return provenance


def _evaluate(full, arch: BackboneConfig, config: PretrainConfig, folder: Path, device, provenance: dict) -> dict:
    """Score the cached weights (loaded as a fine-tuning run loads them) on ``full``; record it in the
    provenance."""
    backbone = create_model(dataclasses.replace(arch, weights=str(folder / WEIGHTS)), num_classes=1).backbone
    scores = evaluate_representation(backbone, full, engine_config(config), device)
    return _write_provenance(folder, {**provenance, "evaluation": {"data": full.fingerprint(), **scores}})


def _write_provenance(folder: Path, provenance: dict) -> dict:
    """Write ``provenance.json`` atomically; return it as read back (JSON types: a fresh and a cached entry
    compare equal)."""
    write_json(folder / PROVENANCE, provenance)
    return read_json(folder / PROVENANCE)


def ssl_weights(data: str | os.PathLike, *, dataset: str = "ferplus", dataset_options: dict | None = None,
                backbone: BackboneConfig | None = None, config: PretrainConfig | None = None,
                cache_dir: str | os.PathLike | None = None) -> str:
    """The ``weights.pt`` that ``weights: ssl`` names: the finished cached pretraining of this dataset's train
    images, ``backbone`` and ``config`` (default :class:`PretrainConfig`).

    Raises
    ------
    WeightsError naming the command that creates it, when there is none.
    """
    backbone, config = backbone or BackboneConfig(), config or PretrainConfig()
    train_images = _dataset(data, dataset, dataset_options).subset("train").images
    _, folder = _entry(train_images, backbone, config, cache_dir)
    if _finished(folder) is None:
        command = pretrain_command(data, dataset=dataset, dataset_options=dataset_options, backbone=backbone,
                                   config=config)
        raise WeightsError(f"weights 'ssl': no finished self-supervised pretraining of these train images, "
                           f"backbone and pretraining config in {folder.parent}; create it with: {command}")
    return str(folder / WEIGHTS)


def pretrain_jobs(run_specs) -> dict[str, dict]:
    """The distinct pretrainings that runs (:class:`ferlib.experiment.RunSpec`) with ``backbone.weights: ssl``
    start from, as :func:`pretrain` keyword arguments, each under a name ``<method>-<hash of its settings>``
    that is the same in every process and invocation."""
    jobs = {}
    for spec in run_specs:
        if spec.backbone.weights != SSL:
            continue
        job = {"data": spec.data, "dataset": spec.dataset, "dataset_options": spec.dataset_options,
               "backbone": dataclasses.replace(spec.backbone, weights=None, drop_rate=0.0),
               "config": PretrainConfig(**spec.pretrain)}
        text = json.dumps({**job, "backbone": asdict(job["backbone"]), "config": job["config"].key_fields()},
                          sort_keys=True, default=str)
        jobs[f"{job['config'].method}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"] = job
    return jobs


def pretrain_command(data: str | os.PathLike, *, dataset: str = "ferplus", dataset_options: dict | None = None,
                     backbone: BackboneConfig | None = None, config: PretrainConfig | None = None) -> str:
    """The ``python -m ferlib pretrain`` command line that pretrains exactly this entry, to run from the repository
    root (``data`` relative to it where possible, :func:`ferlib.paths.portable_path`; settings left at their
    defaults are not spelled out)."""
    backbone, config = backbone or BackboneConfig(), config or PretrainConfig()
    args = ["python", "-m", "ferlib", "pretrain", "--data", portable_path(data)]
    if dataset != "ferplus":
        args += ["--dataset", dataset]
    args += [a for k, v in (dataset_options or {}).items() for a in ("--dataset-opt", f"{k}={_text(v)}")]
    if backbone.name != BackboneConfig.name:
        args += ["--backbone", backbone.name]
    args += [a for k, v in backbone.model_kwargs.items() for a in ("--backbone-opt", f"{k}={_text(v)}")]
    args += ["--small-input"] if backbone.small_input else []
    args += _changed_flags(config, PretrainConfig(), skip=("views", "device", "progress"))
    args += [a for k, v in _changed(config.views, ViewConfig()).items() for a in ("--view-opt", f"{k}={_text(v)}")]
    return shlex.join(args)


def _changed(config, default) -> dict:
    return {k: v for k, v in asdict(config).items() if v != getattr(default, k)}


def _changed_flags(config, default, *, skip: tuple[str, ...]) -> list[str]:
    flags = []
    for key, value in _changed(config, default).items():
        flag = "--" + key.replace("_", "-")
        if key not in skip:
            flags += [flag if value else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, _text(value)]
    return flags


def _text(value) -> str:
    """A command-line value: strings as they are, everything else as JSON (lists for tuples)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
