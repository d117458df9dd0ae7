"""One measurement of a method's training step and inference (:func:`measure`), and the grid of methods x devices
x options behind ``python -m ferlib bench`` (:func:`run_bench`). The quantities are defined in :mod:`ferlib.bench`."""
from __future__ import annotations

import ctypes
import dataclasses
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..backbones import BackboneConfig, create_model
from ..engine import (TrainConfig, autocast, build_optimizer, build_scheduler, make_batch, predict, prepare_model,
                      resolve_precision, seed_everything, settle_precision, train_one_epoch)
from ..methods import create_method, method_config, parse_overrides
from ..options import split_options
from . import BASELINE, GRIDS
from .synthetic import stub_source_options, synthetic_data

__all__ = ["OPTION_KEYS", "RATIO_KEYS", "parse_methods", "option_grid", "measure", "paired_steps", "add_ratios",
           "run_bench"]

#: The TrainConfig switches measured on and off.
OPTION_KEYS = ("amp", "channels_last", "compile")
#: The metrics given as a ratio to ``ce``'s (the method overhead is not: ce's own is ~0 by definition).
RATIO_KEYS = ("train_images_per_s", "step_s", "data_s", "forward_s", "backward_s", "peak_memory_bytes",
              "infer_images_per_s")


def parse_methods(specs: list[str]) -> list[tuple[str, str, dict]]:
    """``["nla", "ldlva:neighbours=bank"]`` -> ``[(label, name, typed overrides), ...]``, led by the baseline
    ``ce`` (added when absent; a repeated label is measured once).

    A label is ``NAME`` or ``NAME:KEY=VALUE[,KEY=VALUE]``; the options are typed from the method's config
    (:func:`ferlib.methods.parse_overrides`) and split at the commas outside brackets
    (:func:`ferlib.options.split_options`), so a list value keeps its commas. An unknown method or option raises
    ValueError naming it and the valid choices.
    """
    out = []
    for label in dict.fromkeys([BASELINE, *specs]):
        name, _, opts = label.partition(":")
        overrides = parse_overrides(name, split_options(opts) if opts else [])
        method_config(name, **overrides)  # values checked now, not after an hour of measuring
        out.append((label, name, overrides))
    return out


def option_grid(label: str, device: torch.device, grid: str) -> list[dict]:
    """The ``{amp, channels_last, compile}`` settings to measure method ``label`` under on ``device``.

    grid : ``all``: every combination (8); ``default``: TrainConfig's defaults only (amp and channels-last on,
        compile off); ``auto``: every combination on CUDA and, on CPU, every combination for ``ce`` and the
        defaults plus the defaults with amp off for the other methods (the full grid of every method is too slow
        there).

    A setting that computes like an earlier one (amp on where ``device`` has no native bf16:
    :func:`ferlib.engine.resolve_precision`) is left out.
    """
    if grid not in GRIDS:
        raise ValueError(f"options grid {grid!r}: valid: {', '.join(GRIDS)}")
    default = {k: getattr(TrainConfig(), k) for k in OPTION_KEYS}
    if grid == "all" or (grid == "auto" and (device.type == "cuda" or label == BASELINE)):
        settings = [dict(zip(OPTION_KEYS, v)) for v in itertools.product((True, False), repeat=len(OPTION_KEYS))]
    else:
        settings = [default] if grid == "default" else [default, {**default, "amp": False}]
    computed = {tuple(resolve_precision(TrainConfig(**s), device).values()): s for s in reversed(settings)}
    return [s for s in settings if s in computed.values()]


def measure(name: str, overrides: dict, train, cfg: TrainConfig, backbone: BackboneConfig, *, warmup: int,
            steps: int) -> dict:
    """Time method ``name`` on ``cfg.device`` through the engine; returns ``{metric: value}``.

    Parameters
    ----------
    train : FERData train split of at least ``max(warmup, steps) * cfg.batch_size`` and ``cfg.eval_batch_size``
        rows; its first rows are used.
    backbone : the model's BackboneConfig (its ``in_chans`` matching ``train``'s channels).
    warmup, steps : training steps before the measurement (compilation, allocator, caches) and measured (>= 1).

    Returns
    -------
    ``step_s``, the median time of ``steps`` engine steps (:func:`ferlib.engine.train_one_epoch` over one batch,
    timed whole), and ``train_images_per_s`` = batch size / step_s; ``data_s``, ``forward_s``, ``backward_s`` and
    ``plain_forward_s``, medians over ``steps`` steps timed phase by phase, alternating with the engine steps, and
    ``overhead_s`` = forward_s - plain_forward_s; ``peak_memory_bytes`` over all those steps (None where
    unavailable); ``infer_images_per_s``: ``cfg.eval_batch_size`` images over the median time of
    ``max(1, steps // 5)`` :func:`ferlib.engine.predict` calls on them. For a method other than ``ce`` also
    ``paired_step_s`` and ``paired_ce_step_s``: medians of ``steps`` engine steps of the method and of a ``ce``
    model built alike, taken in turn on the same batches after the rest (:func:`paired_steps`), the ratio that a
    busy machine's changing load does not skew. Medians, so that a busy machine's stalls do not decide the figures.
    """
    device = torch.device(cfg.device)
    run = _warm(name, overrides, train, cfg, backbone, warmup)
    model, method, optimizer, _, gen = run
    size = cfg.batch_size
    batches = [train.select(np.arange(i * size, (i + 1) * size)) for i in range(steps)]
    tensors = [None if a is None else torch.from_numpy(a) for a in (train.images, train.labels, train.votes)]
    order = torch.randperm(len(train), generator=gen)[:steps * size].view(steps, size)
    whole, phased = [], []
    baseline = _reset_peak(device)
    for rows, idx in zip(batches, order):  # alternating, so that both see the same load on the machine
        whole.append(_engine_step(run, rows, cfg, device))
        phased.append(_timed_step(model, method, optimizer, tensors, idx, cfg, device, gen))
    peak = _peak(device, baseline)
    images = train.images[:cfg.eval_batch_size]
    predict(model, images, cfg, device)  # warm-up: eval mode, another batch size (a recompile under compile)
    infer = []
    for _ in range(max(1, steps // 5)):
        start = _clock(device)
        predict(model, images, cfg, device)
        infer.append(_clock(device) - start)
    step_s = float(np.median(whole))
    data_s, forward_s, backward_s, plain_s = map(float, np.median(phased, 0))
    out = {"train_images_per_s": cfg.batch_size / step_s, "step_s": step_s, "data_s": data_s,
           "forward_s": forward_s, "backward_s": backward_s, "plain_forward_s": plain_s,
           "overhead_s": forward_s - plain_s, "peak_memory_bytes": peak,
           "infer_images_per_s": len(images) / float(np.median(infer))}
    if name != BASELINE:
        out["paired_step_s"], out["paired_ce_step_s"] = paired_steps(
            run, _warm(BASELINE, {}, train, cfg, backbone, warmup, fresh_compile=False), batches, cfg, device)
    return out


def paired_steps(run, ce_run, batches, cfg: TrainConfig, device: torch.device) -> tuple[float, float]:
    """Median engine-step times (s) of a method and of ``ce``, one step of each in turn on the same batches.

    run, ce_run : ``(model, method, optimizer, scheduler, gen)`` as :func:`_warm` builds them. Taking the steps in
    turn puts both under the same load, so their ratio holds on a machine whose load changes between one
    measurement and the next (where ce's own measurement, taken minutes earlier, would not)."""
    times = [(_engine_step(run, rows, cfg, device), _engine_step(ce_run, rows, cfg, device)) for rows in batches]
    step, ce_step = np.median(times, 0)
    return float(step), float(ce_step)


def _warm(name: str, overrides: dict, train, cfg: TrainConfig, backbone: BackboneConfig, warmup: int, *,
          fresh_compile: bool = True):
    """Method ``name``'s model, method, optimiser, schedule and generator, after ``warmup`` engine steps.
    ``fresh_compile`` False keeps the compiled code of a model built before (the paired ce beside it)."""
    device = torch.device(cfg.device)
    if cfg.compile and fresh_compile:
        torch.compiler.reset()  # a fresh compile per model, never a cache-limit fallback to eager
    gen = seed_everything(cfg.seed)
    model = prepare_model(create_model(backbone, train.num_classes), cfg, device)
    method = create_method(name, num_classes=train.num_classes, num_train=len(train),
                           feature_dim=model.feature_dim, **overrides).to(device)
    method.check_binding(model, train)
    method.bind(model, train, cfg)
    optimizer = build_optimizer([p for p in (*model.parameters(), *method.parameters()) if p.requires_grad], cfg)
    scheduler = build_scheduler(optimizer, cfg, 10 ** 6)  # a near-constant lr: the timing does not depend on it
    method.on_epoch_start(0, cfg.epochs)
    train_one_epoch(model, method, train.select(np.arange(warmup * cfg.batch_size)), optimizer, scheduler, cfg,
                    device, gen)
    return model, method, optimizer, scheduler, gen


def _settled(cfg: TrainConfig, backbone: BackboneConfig, train, device: torch.device) -> tuple[TrainConfig, dict]:
    """``cfg`` as the engine runs it with this backbone on ``train``'s images, and its precision record
    (:func:`ferlib.engine.settle_precision`: bf16 only where the probe finds it computes as float32 does)."""
    model = prepare_model(create_model(backbone, train.num_classes), cfg, device)
    return settle_precision(model, train.images, cfg, device)


def _engine_step(run, rows, cfg: TrainConfig, device: torch.device) -> float:
    """Seconds of one engine step of ``run`` (as :func:`_warm` returns it): :func:`ferlib.engine.train_one_epoch`
    over the one batch ``rows``."""
    model, method, optimizer, scheduler, gen = run
    start = _clock(device)
    train_one_epoch(model, method, rows, optimizer, scheduler, cfg, device, gen)
    return _clock(device) - start


def _timed_step(model, method, optimizer, tensors, idx, cfg, device, gen) -> tuple[float, float, float, float]:
    """One training step as the engine takes it, timed phase by phase (data, the method's training_step,
    backward + optimiser step), then a plain ``model(x)`` forward on the same batch under the same autocast."""
    t0 = _clock(device)
    batch = make_batch(*tensors, idx, method.views, cfg, device, gen)
    t1 = _clock(device)
    with autocast(device, cfg):
        loss = method.training_step(model, batch)["loss"]
    t2 = _clock(device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    method.after_step()
    t3 = _clock(device)
    with autocast(device, cfg):
        model(batch["image"])
    return t1 - t0, t2 - t1, t3 - t2, _clock(device) - t3


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _status_kib(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {key}")


def _reset_peak(device: torch.device) -> int | None:
    """Start a peak-memory window; returns the baseline :func:`_peak` subtracts, None where no peak is available.
    CUDA: resets the allocator's peak. CPU (Linux): the C heap's freed pages go back to the system first (glibc
    ``malloc_trim``; else freed memory of earlier measurements would be reused unseen), then writing ``5`` to
    ``/proc/self/clear_refs`` resets the process's RSS high-water mark (``VmHWM``) to its RSS, the baseline."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may miss memory reused from earlier measurements
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except OSError:
        return None


def _peak(device: torch.device, baseline: int | None) -> int | None:
    """Bytes: CUDA ``max_memory_allocated`` since the reset; CPU the RSS high-water above the baseline RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return None if baseline is None else (_status_kib("VmHWM") - baseline) * 1024


def add_ratios(records: list[dict]) -> list[dict]:
    """Give each measured record ``ratio_to_ce``: each of :data:`RATIO_KEYS` over ``ce``'s on the same device
    under the same options (ce's own: 1.0); None where ce's is missing, failed or not positive. The training
    throughput and step time of a method measured with ``paired_ce_step_s`` are over that ce, taken in turn with
    it (:func:`paired_steps`), instead."""
    base = {(r["device"], tuple(r["options"].values())): r["metrics"] for r in records
            if r["method"] == BASELINE and "metrics" in r}
    for r in records:
        if "metrics" in r:
            x = r["metrics"]
            ce = base.get((r["device"], tuple(r["options"].values())), {})
            r["ratio_to_ce"] = {k: x[k] / ce[k] if x[k] is not None and (ce.get(k) or 0) > 0 else None
                                for k in RATIO_KEYS}
            if x.get("paired_ce_step_s"):
                r["ratio_to_ce"]["step_s"] = x["paired_step_s"] / x["paired_ce_step_s"]
                r["ratio_to_ce"]["train_images_per_s"] = x["paired_ce_step_s"] / x["paired_step_s"]
    return records


def run_bench(methods: list[str], devices: list[torch.device], *, grid: str = "auto", data=None,
              backbone: BackboneConfig | None = None, batch_size: int = 64, image_size: int = 48,
              warmup: int = 5, steps: int = 30, log=None) -> dict:
    """Measure each method (labels as :func:`parse_methods` takes them; ``ce`` always) on each device under each
    of its :func:`option_grid` settings.

    backbone : the model (default: BackboneConfig's, a full-width ResNet-18); ``in_chans`` is set from the data.
    data : a FERPlus root whose train split (plurality labels) to draw batches from; None:
        :func:`~ferlib.bench.synthetic.synthetic_data` at ``image_size``. Source files a method reads and its
        options leave unset are stubbed (:func:`~ferlib.bench.synthetic.stub_source_options`), so no landmark
        detector runs.
    log : ``log(line)`` after each measurement (default: to stderr).

    Returns ``{"settings": {...}, "measurements": [record, ...]}``; a record holds ``method``, ``device``,
    ``options``, ``precision`` (:func:`ferlib.engine.settle_precision`: what was used), and ``metrics`` (:func:`measure`) with
    ``ratio_to_ce`` (:func:`add_ratios`), or ``error`` (``"Type: message"``) when that measurement failed: the
    others still run.
    """
    parsed = parse_methods(methods)
    if warmup < 1 or steps < 1:
        raise ValueError(f"warmup and steps must be >= 1, got warmup={warmup}, steps={steps}")
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    rows = max(max(warmup, steps) * batch_size, TrainConfig.eval_batch_size)
    if data is None:
        train = synthetic_data(rows, image_size=image_size)
    else:
        from ..data import load_dataset

        train = load_dataset("ferplus", data).subset("train")
    if len(train) < rows:
        raise ValueError(f"the train split has {len(train)} images; the bench needs {rows} "
                         f"(max(warmup, steps) x batch size, at least eval_batch_size)")
    train = train.select(np.arange(rows))
    backbone = dataclasses.replace(backbone or BackboneConfig(), in_chans=train.image_shape[2])
    records = []
    with tempfile.TemporaryDirectory(prefix="ferlib-bench-") as stubs:
        for (label, name, overrides), device in itertools.product(parsed, devices):
            options = {**overrides, **stub_source_options(name, rows, stubs, given=overrides)}
            for switches in option_grid(label, device, grid):
                cfg, precision = _settled(TrainConfig(batch_size=batch_size, image_size=image_size,
                                                      device=str(device), progress=False, **switches),
                                          backbone, train, device)
                record = {"method": label, "device": str(device), "options": switches, "precision": precision}
                try:
                    record["metrics"] = measure(name, options, train, cfg, backbone, warmup=warmup, steps=steps)
                except Exception as exc:  # one failed setting (a compiler missing, out of memory) spares the rest
                    record["error"] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
                records.append(record)
                log(f"{label} {device} {switches}: "
                    + (f"{record['metrics']['train_images_per_s']:.0f} img/s" if "metrics" in record
                       else record["error"]))
    settings = {"backbone": dataclasses.asdict(backbone), "batch_size": batch_size, "image_size": image_size,
                "warmup": warmup, "steps": steps, "eval_batch_size": TrainConfig.eval_batch_size,
                "augment": dataclasses.asdict(TrainConfig().augment), "threads": torch.get_num_threads(),
                "data": "synthetic" if data is None else str(data), "grid": grid}
    return {"settings": settings, "measurements": add_ratios(records)}
