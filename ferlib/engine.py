"""The one training engine every method uses (in the shape of torchvision's reference ``train.py``).

``fit`` builds the optimiser and schedule, resumes from a checkpoint when there is one, and composes
``train_one_epoch`` and ``evaluate``; a method only supplies its loss, targets and per-sample state through
:class:`ferlib.methods.Method`. Images stay uint8 in host memory and are augmented on the training device batch by
batch (:mod:`ferlib.augment`), so no DataLoader workers are needed. Every file of the run goes through the
:class:`ferlib.rundir.RunDir` that ``fit`` is given, which its caller owns (:func:`ferlib.experiment.run`).

Several processes (``torchrun --nproc_per_node W -m ferlib train ...``) run the same loop on one global batch
(:mod:`ferlib.distributed`): each process takes its shard of every batch, the gradients are averaged over the
processes after ``backward``, and only rank 0 evaluates and writes the run folder. Single-process runs are
unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed
from .augment import AugmentConfig, augment_batch, make_view, prepare_batch
from .data.storage import batch_images
from .metrics import NonFiniteLossError, classification_metrics, health_flags
from .options import AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT_OPEN, check_ranges, check_types
from .rundir import RunDir

__all__ = ["TrainConfig", "fit", "train_one_epoch", "evaluate", "predict", "seed_everything",
           "build_optimizer", "build_scheduler", "resolve_device", "resolve_precision", "prepare_model", "make_batch",
           "train_arrays", "autocast", "layout", "progress_bar", "cpu_native_bf16", "cuda_bf16",
           "probe_bf16", "known_bf16_defect", "settle_precision", "check_processes"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "exponential", "step", "multistep", "cosine", "linear")


@dataclass
class TrainConfig:
    """Optimisation and evaluation settings shared by every method.

    optimizer : ``adam`` | ``adamw`` | ``sgd`` (SGD uses ``momentum``, Nesterov off).
    scheduler : ``exponential`` (lr * gamma^epoch, SCN/RUL/EAC/NLA), ``step`` (lr * gamma^(epoch // step_size)),
        ``multistep`` (lr * gamma^(number of ``milestones`` <= epoch), LDLVA), ``cosine`` (to 0 over the run),
        ``linear`` (to 0 over the run, per iteration, as LA-Net) or ``none``.
        Every schedule is evaluated per iteration, so resuming mid-run is exact.
    batch_size : the global batch: under ``torchrun`` each of the W processes trains on batch_size / W of its
        samples (it must divide by W) and the methods' batch-level operations see all of them
        (:mod:`ferlib.distributed`), so a run gives the one-process result at any W (on CUDA, where BatchNorm
        is synchronised).
    image_size : side in pixels the network sees (images are resized on the device).
    amp : bfloat16 autocast wherever the device computes it natively (:func:`resolve_precision`): a CUDA device
        with bf16 support, or a CPU with AVX-512 BF16 or AMX (read from ``/proc/cpuinfo``) whose bf16 kernels
        compute the model's layers as float32 does at the run's shapes (:func:`probe_bf16`, at the start of
        each run); elsewhere float32.
        Measured on a 2-core EPYC with AVX-512 BF16 (``python -m ferlib bench``): 1.5-1.8x the float32 training
        throughput, and a same-seed CE run on FERPlus within seed noise of float32 (docs/findings.md). False: float32.
        What a run used is recorded in its ``config.json`` (``precision``).
    channels_last : model and input batches in the channels-last memory layout (faster convolutions on CPU and
        on CUDA tensor cores; numerically a different summation order, not a different model).
    compile : ``torch.compile`` the model's forward (``nn.Module.compile``, state-dict keys unchanged). Default
        off: it gives nothing on CPU here (bench), and its first steps compile. Not part of the run id.
    select_on : split whose overall accuracy picks the "best" epoch: ``valid`` (default; never the test set)
        or ``test`` (only to reproduce papers that select on test; results are then labelled so).
        The primary number is always the LAST epoch's; best-epoch numbers are recorded beside it.
    keep_checkpoint : keep ``checkpoint.pt`` (model, optimizer, scheduler, method state and RNG states of the
        last epoch) once the run has finished. Default False: a finished run keeps ``model.pt`` and
        ``readout.npz`` but drops the checkpoint (about 3x the model's size with Adam), which only serves to
        resume an unfinished run; the checkpoint is written every epoch and exists until the run finishes,
        so resume after a crash is unaffected. Not part of the run id.
    """

    epochs: int = 12
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: str = "cosine"
    gamma: float = 0.9
    step_size: int = 10
    milestones: tuple[int, ...] = ()
    image_size: int = 48
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 512
    select_on: str = "valid"
    progress: bool = True
    save_features: bool = False
    keep_checkpoint: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in self.augment.items()})
        for key, valid in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS), ("select_on", ("valid", "test"))):
            if getattr(self, key) not in valid:
                raise ValueError(f"TrainConfig.{key} must be one of {valid}, got {getattr(self, key)!r}")
        check_types(self, where="TrainConfig")
        if not all(isinstance(m, int) for m in self.milestones):
            raise ValueError(f"TrainConfig.milestones must be epochs (integers >= 0), got {self.milestones!r}")
        check_ranges(self, _RANGES, where="TrainConfig")


#: The values TrainConfig accepts (checked on construction, so a bad one fails before any data loads).
_RANGES = {"epochs": AT_LEAST_1, "batch_size": AT_LEAST_1, "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
           "momentum": UNIT_OPEN, "gamma": POSITIVE, "step_size": AT_LEAST_1, "milestones": NON_NEGATIVE,
           "image_size": (lambda v: v >= 8, ">= 8 (pixels)"), "seed": NON_NEGATIVE, "eval_batch_size": AT_LEAST_1}


# --------------------------------------------------------------------------- building the run's objects
def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. A malformed name, or CUDA asked for where none is available,
    raises ValueError naming the setting."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"TrainConfig.device {name!r} is not a torch device ({str(exc).splitlines()[0]})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device {name!r}: no CUDA device is available on this machine; use 'cpu' or "
                         "'auto'")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the CPU generator that drives data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """A per-iteration ``LambdaLR`` implementing ``cfg.scheduler``."""
    total = cfg.epochs * steps_per_epoch
    factor = {
        "none": lambda s: 1.0,
        "exponential": lambda s: cfg.gamma ** (s // steps_per_epoch),
        "step": lambda s: cfg.gamma ** ((s // steps_per_epoch) // cfg.step_size),
        "multistep": lambda s: cfg.gamma ** sum(s // steps_per_epoch >= m for m in cfg.milestones),
        "cosine": lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
        "linear": lambda s: max(0.0, 1 - s / total),
    }[cfg.scheduler]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@functools.lru_cache(maxsize=None)
def cpu_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (x86 flags ``avx512_bf16`` or ``amx_bf16``). oneDNN also
    runs bf16 on plain AVX-512 by emulation, which is slower than float32, so its own check is not enough."""
    try:
        flags = Path(cpuinfo).read_text(errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(cfg: TrainConfig, device: torch.device) -> dict:
    """What a run on ``device`` computes in: ``{"autocast": "bfloat16" | "float32", "channels_last": bool,
    "compile": bool, "cpu_native_bf16": bool | None}`` (the last None on CUDA). Recorded in ``config.json``."""
    if device.type == "cuda":
        native, bf16 = None, cfg.amp and cuda_bf16()
    else:
        native = cpu_native_bf16() if device.type == "cpu" else False
        bf16 = cfg.amp and native
    return {"autocast": "bfloat16" if bf16 else "float32", "channels_last": cfg.channels_last,
            "compile": cfg.compile, "cpu_native_bf16": native}


#: The probe's tolerance: an output or gradient of one layer under bf16 autocast further than this share of the
#: float32 tensor's largest magnitude from it fails. Measured on an EPYC with AVX-512 BF16: one convolution, BatchNorm
#: or linear layer of the ResNet-18s at 16-112 px differs by at most 0.012 (bf16's 8-bit mantissa); the kernel
#: defect the probe exists for leaves entries holding stale memory (seen: up to 1e35, inf, NaN).
BF16_PROBE_TOL = 0.05
#: The layers the probe checks: those whose CPU kernels have a bf16 path of their own.
PROBED_LAYERS = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


#: Each layer's probe error, by (layer, input shape, layout, dtype, device type, repeats): once per process.
_PROBED: dict[tuple, float] = {}


def probe_bf16(net: nn.Module, x: torch.Tensor, *, repeats: int = 3) -> dict:
    """Whether bfloat16 autocast computes each layer of ``net`` as float32 does, at the shapes ``x`` gives it.

    Some CPU kernels of torch's bf16 path are wrong for some shapes: torch 2.14.1's CPU convolution weight
    gradient, for a 3x3 stride-2 convolution over a 1x1 map (a ResNet's ``layer4.0.conv1`` on 16-px images),
    leaves gradient entries unwritten; they hold whatever memory held before, so a training step turns into NaN
    or not depending on what ran earlier in the process. The cpuinfo flags cannot tell; this probe does. A layer
    of a shape known to be at risk (:func:`known_bf16_defect`) fails without being run, since what its unwritten
    entries hold depends on the allocator; every other distinct layer (:data:`PROBED_LAYERS`) at the input
    shape, memory layout and dtype it meets in one bf16 forward of ``net`` is run alone on seeded random input,
    forward and backward, under bf16 autocast and in float32, ``repeats`` times, after freeing NaN-filled
    tensors of its gradients' sizes (so that memory a kernel leaves unwritten shows as NaN), and its output,
    input gradient and parameter gradients are compared. A layer at a shape is probed once per process.

    Parameters
    ----------
    net : the model, on its device and in its memory layout; left untouched (copies of its layers are run, the
        global random state is restored).
    x : an input batch (B, C, H, W) as the model sees it.

    Returns
    -------
    ``{"passed": bool, "max_rel_err": float, "worst": "<layer name> <input shape>", "layers": int}``: the largest
    max|bf16 - float32| / max|float32| over layers, tensors and passes (inf where not finite), against
    :data:`BF16_PROBE_TOL`; ``layers`` the number of distinct layers checked.
    """
    seen: dict[tuple, tuple[str, nn.Module]] = {}  # (layer, input shape, layout, dtype) -> (name, layer)

    def record(name):
        def hook(module, args):
            inp = args[0]
            channels_last = inp.dim() == 4 and not inp.is_contiguous() \
                and inp.is_contiguous(memory_format=torch.channels_last)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            seen.setdefault((repr(module), tuple(inp.shape), fmt, inp.dtype), (name, module))
        return hook

    worst, where = 0.0, ""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        shadow = copy.deepcopy(net).train()
        hooks = [m.register_forward_pre_hook(record(n)) for n, m in shadow.named_modules()
                 if isinstance(m, PROBED_LAYERS)]
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16):
            shadow(x)
        for h in hooks:
            h.remove()
        for key, (name, module) in seen.items():
            key = (*key, x.device.type, repeats)
            if key not in _PROBED:
                _PROBED[key] = math.inf if known_bf16_defect(module, key[1]) else \
                    max(_layer_error(module, *key[1:4], seed=r) for r in range(repeats))
            if not _PROBED[key] <= worst:
                worst, where = _PROBED[key], f"{name} {list(key[1])}"
    return {"passed": worst <= BF16_PROBE_TOL, "max_rel_err": worst, "worst": where, "layers": len(seen)}


def known_bf16_defect(module: nn.Module, shape: tuple) -> bool:
    """Whether ``module`` at input ``shape`` (B, C, H, W) is a strided convolution with a kernel tap that meets
    only padding: the shapes where torch 2.14.1's CPU bf16 weight gradient may leave entries unwritten.

    Measured on an EPYC with AVX-512 BF16 (20 trials each, freed memory filled with 1e30): the taps that meet
    only padding are left unwritten in every trial when the input is one pixel wide and the width stride exceeds
    1 (3x3 and 5x5 kernels, strides 2 and 3, inputs 1x1 and 2x1); never at stride 1, a width of 2 or more, a 1x1
    kernel or a stride of (2, 1). The other strided shapes with such a tap (a 3x3 stride-2 convolution over a
    2x2 map) were right there, but another kernel (AMX) may take another path, so the rule covers them all:
    they occur only on tiny inputs (a ResNet at 16 or 32 px, none at 48). What unwritten entries hold depends on
    the allocator, so a numerical check alone is a lottery at these shapes; this rule decides them without one.
    """
    if not isinstance(module, nn.Conv2d) or len(shape) != 4 or isinstance(module.padding, str):
        return False
    for size, k, stride, pad, dil in zip(shape[2:], module.kernel_size, module.stride, module.padding,
                                         module.dilation):
        outputs = range((size + 2 * pad - dil * (k - 1) - 1) // stride + 1)
        if stride > 1 and any(all(not 0 <= o * stride - pad + j * dil < size for o in outputs) for j in range(k)):
            return True
    return False


def _layer_error(module: nn.Module, shape: tuple, fmt, dtype: torch.dtype, *, seed: int) -> float:
    """max|bf16 - float32| / max|float32| over the output, input gradient and parameter gradients of a copy of
    ``module`` run on seeded random input of ``shape`` (``dtype`` under autocast, as it met it); inf where a
    bf16 value is not finite or float32's is 0 where bf16's is not."""
    results = []
    for bf16 in (False, True):
        layer = copy.deepcopy(module).float().train()
        torch.manual_seed(seed)
        x = torch.randn(shape, device=next(layer.parameters()).device).contiguous(memory_format=fmt)
        x = (x.to(dtype) if bf16 else x.to(dtype).float()).requires_grad_()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = layer(x)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(10_000 + seed)).to(out.device)
        if bf16:  # freed NaN-filled blocks of the gradients' sizes: memory a kernel leaves unwritten shows as NaN
            _ = [torch.full_like(p, math.nan, dtype=d) for p in layer.parameters()
                 for d in (p.dtype, torch.bfloat16) for _ in range(8)]
            del _
        (out.float() * weight).sum().backward()  # a fixed random projection: no gradient cancels (BatchNorm's would)
        results.append([out.detach(), x.grad, *(p.grad for p in layer.parameters() if p.grad is not None)])
    worst = 0.0
    for ref, got in zip(*results):
        ref, got = ref.double(), got.double()
        scale, diff = ref.abs().max().item(), (got - ref).abs().max().item()
        err = diff / scale if scale > 0 else (math.inf if diff > 0 else 0.0)
        worst = max(worst, err if math.isfinite(err) else math.inf)
    return worst


def settle_precision(net: nn.Module, images, cfg: TrainConfig, device: torch.device) -> tuple[TrainConfig, dict]:
    """The config a run computes with, and its precision record for ``config.json``.

    Where :func:`resolve_precision` gives bf16 on a CPU, :func:`probe_bf16` checks it on ``net`` and the first
    ``cfg.batch_size`` of ``images`` (N, H, W, C uint8, as the model sees them): when it fails, the run computes
    in float32 (``amp`` off in the returned config; the caller keeps ``cfg`` for the run's identity), a warning
    names the parameter, and the record's ``bf16_probe`` says why. Elsewhere ``cfg`` is returned unchanged.
    """
    precision = resolve_precision(cfg, device)
    if precision["autocast"] != "bfloat16" or device.type != "cpu":
        return cfg, precision
    raw = torch.from_numpy(np.asarray(images[:cfg.batch_size])).to(device)
    probe = probe_bf16(net, layout(prepare_batch(raw, cfg.image_size, cfg.augment), cfg))
    if probe["passed"]:
        return cfg, {**precision, "bf16_probe": probe}
    warnings.warn(f"bf16 autocast fails the layer check (ferlib.engine.probe_bf16) at {probe['worst']}: computing "
                  "in float32 (config.json: precision.bf16_probe)", RuntimeWarning, stacklevel=2)
    cfg = dataclasses.replace(cfg, amp=False)
    return cfg, {**resolve_precision(cfg, device), "bf16_probe": probe}


@functools.lru_cache(maxsize=None)
def cuda_bf16() -> bool:
    """``torch.cuda.is_bf16_supported()``, asked once per process (autocast asks every step)."""
    return torch.cuda.is_bf16_supported()


def autocast(device: torch.device, cfg: TrainConfig):
    """The run's autocast context on ``device`` (bfloat16 where :func:`resolve_precision` says so)."""
    bf16 = resolve_precision(cfg, device)["autocast"] == "bfloat16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def layout(x: torch.Tensor, cfg) -> torch.Tensor:
    """An image batch (B, C, H, W) in the run's memory layout (``cfg.channels_last``: a TrainConfig, or any
    config with that field, e.g. pretraining's)."""
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last and x.dim() == 4 else x


def prepare_model(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """``model`` on ``device``, in the run's memory layout, its forward compiled when ``cfg.compile``."""
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()
    return model


# --------------------------------------------------------------------------- one epoch, evaluation
def train_one_epoch(model: nn.Module, method, train, optimizer, scheduler, cfg: TrainConfig,
                    device: torch.device, gen: torch.Generator, arrays: dict | None = None) -> dict[str, float]:
    """One pass over the train split; returns the mean of each loss term.

    The order is the method's :meth:`~ferlib.methods.Method.epoch_order` (e.g. LA-Net's progressive class
    balancing) or, by default, a seeded random permutation. Every epoch has floor(N / batch_size) steps.
    Under ``torchrun`` every process draws the same order and augments the same global batch, trains on its
    shard (:func:`ferlib.distributed.shard`) and averages the gradients; the returned means are over all
    processes. ``arrays``: :func:`train_arrays` of ``train`` computed once per run (default: computed here).
    """
    model.train()
    method.train()
    images, labels, votes = (arrays or train_arrays(train, device)).values()
    n_batches = len(train) // cfg.batch_size or 1  # drop the last partial batch (BatchNorm, batch graphs)
    order = method.epoch_order(train.labels, gen)
    if order is None:
        order = torch.randperm(len(train), generator=gen)
    elif len(order) < len(train):
        raise ValueError(f"{type(method).__name__}.epoch_order returned {len(order)} indices for a train split "
                         f"of {len(train)}; it must return at least {len(train)}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums: dict[str, float] = {}
    bar = progress_bar(range(n_batches), cfg, desc=f"epoch {method.epoch + 1}/{cfg.epochs}")
    for b in bar:
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        batch = distributed.shard(make_batch(images, labels, votes, idx, method.views, cfg, device, gen))
        with autocast(device, cfg):
            out = method.training_step(model, batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss {loss.item()} at epoch {method.epoch + 1}, batch {b + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(params)
        optimizer.step()
        scheduler.step()
        method.after_step()
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{sums['loss'] / (b + 1):.3f}")
    return {k: v / n_batches for k, v in distributed.average(sums).items()}


#: The share of a CUDA device's free memory the uint8 train images may take to be kept resident on it.
RESIDENT_SHARE = 0.25


def train_arrays(train, device: torch.device) -> dict:
    """The train split's ``images`` (N, H, W, C) uint8, ``labels`` (N,) and ``votes`` (N, K) or None, where the
    batches are read from: on a CUDA device, tensors resident on it when the images take at most
    :data:`RESIDENT_SHARE` of its free memory (a batch is then a gather on the device: no host-to-device copy
    per step); otherwise the host arrays (``images`` possibly memory-mapped, read a batch at a time)."""
    votes = train.votes
    if device.type == "cuda" and train.images.nbytes <= RESIDENT_SHARE * torch.cuda.mem_get_info(device)[0]:
        return {"images": torch.from_numpy(np.asarray(train.images)).to(device),
                "labels": torch.from_numpy(train.labels).to(device),
                "votes": None if votes is None else torch.from_numpy(votes).to(device)}
    return {"images": train.images, "labels": torch.from_numpy(train.labels),
            "votes": None if votes is None else torch.from_numpy(votes)}


def _rows(array, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows ``idx`` of a tensor (on any device) or of a host array (possibly memory-mapped), on ``device`` (a
    plain copy: host memory here is pageable, not pinned, so an asynchronous copy would not overlap anyway)."""
    if isinstance(array, torch.Tensor):
        return array[idx.to(array.device)].to(device)
    return torch.from_numpy(batch_images(array, idx.numpy())).to(device)


def make_batch(images, labels, votes, idx, views, cfg, device, gen) -> dict:
    """The batch dict a method's ``training_step`` gets: rows ``idx`` (a CPU index tensor) of the uint8
    ``images`` (N, H, W, C; a tensor on any device or a host array, see :func:`train_arrays`) augmented on
    ``device`` (``image``, ``affine``, ``index``, ``label``, ``votes`` when given, one ``image_<view>`` per
    view the method asks for), images in the run's memory layout."""
    raw = _rows(images, idx, device)
    x, affine = augment_batch(raw, cfg.image_size, cfg.augment, gen)
    batch = {"image": layout(x, cfg), "affine": affine, "index": idx.to(device), "label": _rows(labels, idx, device)}
    if votes is not None:
        batch["votes"] = _rows(votes, idx, device)
    for view in views:
        batch[f"image_{view}"] = layout(make_view(view, x, raw, cfg.image_size, cfg.augment, gen), cfg)
    return batch


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, cfg: TrainConfig, device: torch.device,
            features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (N, K) float32 of uint8 images (N, H, W, C), and the (N, D) features when asked."""
    model.eval()
    logits, feats = [], []
    for start in range(0, len(images), cfg.eval_batch_size):
        x = layout(prepare_batch(torch.from_numpy(images[start:start + cfg.eval_batch_size]).to(device),
                                  cfg.image_size, cfg.augment), cfg)
        with autocast(device, cfg):
            f = model.embed(x)
            logits.append(model.head(f).float().cpu())
        if features:
            feats.append(f.float().cpu())
    out = torch.cat(logits).numpy() if logits else np.zeros((0, model.head.out_features), np.float32)
    return out, (torch.cat(feats).numpy() if features and feats else None)


def evaluate(model: nn.Module, data, cfg: TrainConfig, device: torch.device) -> dict:
    """Metrics of ``model`` on a split (:func:`ferlib.metrics.classification_metrics`) against its true labels."""
    logits, _ = predict(model, data.images, cfg, device)
    return classification_metrics(data.true_labels, logits.argmax(1), num_classes=data.num_classes)


# --------------------------------------------------------------------------- the run
def fit(model: nn.Module, method, data, cfg: TrainConfig, run: RunDir, *, meta: dict | None = None) -> dict:
    """Train ``model`` with ``method`` on ``data``'s train split; evaluate each epoch on valid and test.

    Parameters
    ----------
    data : FERData with a train and a test split (valid optional; needed for ``select_on="valid"``).
        Train labels may be noisy (``clean_labels`` kept); methods see only the given labels.
    run : the run folder (:class:`ferlib.rundir.RunDir`) every file goes to: the config, each epoch's history
        and checkpoint, then the weights, the read-out and, last, the result. The caller owns the folder
        (:func:`ferlib.experiment.run`: one writer, and the generation begun); a checkpoint in it is resumed
        from, giving the same result as an uninterrupted run.
    meta : extra fields (dataset, noise report, method options ...) copied into ``config.json`` and
        ``result.json``.

    Under ``torchrun`` every process calls ``fit`` with the same arguments: each trains its shard
    (:mod:`ferlib.distributed`) and reads the checkpoint to resume; rank 0 alone evaluates and writes, so the
    folder must be on a file system every process sees (one machine: any local folder).

    Returns
    -------
    The summary written to ``result.json`` (on every process).
    """
    meta = meta or {}
    device = distributed.local_device(resolve_device(cfg.device))
    splits = {s: data.subset(s) for s in ("train", "valid", "test") if data.split_counts()[s]}
    _check_data(splits, method, cfg)
    train = splits["train"]
    gen = seed_everything(cfg.seed)
    prepare_model(model, cfg, device)
    run_cfg, precision = settle_precision(model, train.images, cfg, device)  # cfg stays the run's identity
    method.to(device)
    method.check_binding(model, train)
    method.bind(model, train, cfg)
    distributed.prepare_modules(model, method, device=device)
    params = [p for p in list(model.parameters()) + list(method.parameters()) if p.requires_grad]
    optimizer = build_optimizer(params, cfg)
    scheduler = build_scheduler(optimizer, cfg, max(len(train) // cfg.batch_size, 1))
    parts = {"model": model, "method": method, "optimizer": optimizer, "scheduler": scheduler}
    start, history = run.load_checkpoint(parts, gen, device=device)
    distributed.on_main(run.write_config, {
        "train": asdict(cfg), "method": method.name, "method_config": asdict(method.config),
        "precision": precision, "processes": distributed.world(), **meta})
    arrays = train_arrays(train, device)
    for epoch in range(start, cfg.epochs):
        method.on_epoch_start(epoch, cfg.epochs)
        t0 = time.perf_counter()
        losses = train_one_epoch(model, method, train, optimizer, scheduler, run_cfg, device, gen, arrays)
        row = {"epoch": epoch + 1, "epoch_time_s": time.perf_counter() - t0,
               "lr": optimizer.param_groups[0]["lr"], **{f"train_{k}": v for k, v in losses.items()}}
        history = history + [distributed.on_main(_evaluated, row, splits, model, run_cfg, device)]
        distributed.on_main(run.end_epoch, history, parts, gen)
    return distributed.on_main(_finish, run, model, method, splits, history, run_cfg, device, meta)


def _evaluated(row: dict, splits: dict, model, cfg: TrainConfig, device) -> dict:
    """The epoch's ``row`` with the metrics of valid and test."""
    return {**row, **{name: evaluate(model, splits[name], cfg, device) for name in ("valid", "test")
                      if name in splits}}


def check_processes(cfg: TrainConfig, method_cls) -> None:
    """Under ``torchrun`` (several processes), raise ValueError naming the setting when the global batch does
    not split evenly over the processes or when the method (a :class:`~ferlib.methods.Method` class or
    instance) has not declared its training step exact on a sharded batch (``multi_process``). Nothing to
    check on one process."""
    processes = distributed.world()
    if processes == 1:
        return
    if cfg.batch_size % processes:
        raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} (the global batch) must be divisible by the "
                         f"number of processes ({processes}, torchrun's WORLD_SIZE)")
    if not method_cls.multi_process:
        from .methods import list_methods, method_class

        ready = [name for name in list_methods() if method_class(name).multi_process]
        raise ValueError(f"method {method_cls.name!r} does not run on several processes (its batch-level "
                         f"operations and per-sample state are not gathered); run it in one process, or use one "
                         f"of {ready}")


def _check_data(splits: dict, method, cfg: TrainConfig) -> None:
    check_processes(cfg, method)
    for name in ("train", "test"):
        if name not in splits:
            raise ValueError(f"the data has no {name!r} split (counts: {list(splits)})")
    if cfg.select_on not in splits:
        raise ValueError(f"select_on={cfg.select_on!r} but the data has no {cfg.select_on!r} split; "
                         "use select_on='test' (labelled as selecting on test) or add a validation split")
    if len(splits["train"]) < cfg.batch_size:
        raise ValueError(f"train split has {len(splits['train'])} samples, fewer than batch_size={cfg.batch_size}")
    for req in method.requires:
        if getattr(splits["train"], req, None) is None:
            raise ValueError(f"method {method.name!r} requires {req!r}, which this dataset does not have")


def _finish(run: RunDir, model, method, splits, history, cfg, device, meta) -> dict:
    """Write the final weights, the read-out and, last, the result; return the result."""
    run.write_model(model.state_dict())
    run.write_readout(_readout(model, method, splits, cfg, device))
    return run.write_result(_summary(model, method, splits["train"], history, cfg, device, meta),
                            keep_checkpoint=cfg.keep_checkpoint)


def _readout(model, method, splits, cfg, device) -> dict:
    """The per-sample read-out: the method's (``method_*``), the train and test logits with ids and labels,
    and the penultimate features when ``cfg.save_features`` (float16)."""
    train, test = splits["train"], splits["test"]
    train_logits, train_feats = predict(model, train.images, cfg, device, features=cfg.save_features)
    test_logits, test_feats = predict(model, test.images, cfg, device, features=cfg.save_features)
    readout = {f"method_{k}": v for k, v in method.readout().arrays().items()}
    readout.update(ids=train.ids.astype(str), given=train.labels, clean=train.true_labels,
                   train_logits=train_logits, test_logits=test_logits, test_ids=test.ids.astype(str),
                   test_labels=test.true_labels, test_given=test.labels)
    if cfg.save_features:
        readout.update(train_features=train_feats.astype(np.float16), test_features=test_feats.astype(np.float16))
    return readout


def _summary(model, method, train, history, cfg, device, meta) -> dict:
    """What ``result.json`` records of the run (:class:`ferlib.rundir.Result`): ``meta``, then the last epoch's
    test metrics (the primary number) and those of the epoch with the best ``cfg.select_on`` accuracy."""
    last, best = history[-1], max(history, key=lambda r: r[cfg.select_on]["acc"])
    return {
        **meta, "method": method.name, "oracle": method.oracle, "epochs": cfg.epochs, "seed": cfg.seed,
        "device": str(device), "params": sum(p.numel() for p in model.parameters()),
        "time_per_epoch_s": float(np.mean([r["epoch_time_s"] for r in history])),
        "selection": f"primary = last epoch; best = epoch with the highest {cfg.select_on} accuracy"
                     + (" (SELECTED ON TEST, as the reproduced paper does)" if cfg.select_on == "test" else ""),
        "best_epoch": best["epoch"],
        "last": _scalars(last["test"]), "best": _scalars(best["test"]),
        "last_valid": _scalars(last["valid"]) if "valid" in last else {},
        "train_loss_first": history[0]["train_loss"], "train_loss_last": last["train_loss"],
        "flags": "; ".join(health_flags(history, train.classes)),
    }


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not isinstance(v, list)}


def progress_bar(it, cfg, desc: str):
    """``it`` wrapped in a tqdm bar when ``cfg.progress`` (any config with that field) and this is the main
    process; else ``it``."""
    if not (cfg.progress and distributed.is_main()):
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False, mininterval=2.0)
