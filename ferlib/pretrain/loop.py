"""The pretraining loop: one readable epoch function and a resumable :func:`fit_ssl` around it.

It is given the train split's images and nothing else (no labels, no other split), so what it learns cannot
depend on them. A checkpoint is written after every epoch (:func:`ferlib.rundir.save_checkpoint`, as the engine's:
model with heads and momentum copies, MoCo's queue, optimiser, schedule, generator and RNG states); resuming from
it gives the same weights as an uninterrupted run, bit for bit on CPU at the same thread count.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..backbones import BackboneConfig, create_model
from ..engine import (TrainConfig, autocast, layout, prepare_model, progress_bar, resolve_device, seed_everything,
                      settle_precision)
from ..metrics import NonFiniteLossError
from ..rundir import load_checkpoint, save_checkpoint
from .config import PretrainConfig
from .methods import create_ssl
from .views import two_views

__all__ = ["fit_ssl", "train_one_epoch", "engine_config", "CHECKPOINT"]

CHECKPOINT = "checkpoint.pt"


def engine_config(cfg: PretrainConfig) -> TrainConfig:
    """The :class:`ferlib.engine.TrainConfig` whose precision, layout, input size and device are ``cfg``'s: what
    the engine's helpers (``autocast``, ``prepare_model``, ``predict``, ``resolve_precision``) read."""
    return TrainConfig(image_size=cfg.image_size, batch_size=cfg.batch_size, amp=cfg.amp,
                       channels_last=cfg.channels_last, compile=cfg.compile, device=cfg.device, progress=False)


def train_one_epoch(ssl: nn.Module, images, optimizer, scheduler, cfg: PretrainConfig, device: torch.device,
                    gen: torch.Generator, epoch: int) -> float:
    """One pass over ``images`` (N, H, W, C) uint8 in a seeded order; returns the mean loss of its steps.

    Every epoch has floor(N / batch_size) steps; each augments its faces twice on ``device``
    (:func:`~ferlib.pretrain.views.two_views`), runs the networks under the configured autocast and the loss
    in float32, then steps the optimiser, the per-step schedule and the momentum update.
    """
    ssl.train()
    steps = len(images) // cfg.batch_size
    order = torch.randperm(len(images), generator=gen)
    ecfg = engine_config(cfg)
    total = 0.0
    bar = progress_bar(range(steps), cfg, desc=f"pretrain epoch {epoch + 1}/{cfg.epochs}")
    for b in bar:
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size].numpy()
        raw = torch.from_numpy(np.asarray(images[idx])).to(device, non_blocking=True)
        x0, x1 = (layout(v, cfg) for v in two_views(raw, cfg.image_size, cfg.views, gen))
        with autocast(device, ecfg):
            outputs = ssl(x0, x1)
        loss = ssl.loss(*(o.float() for o in outputs))
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite pretraining loss {loss.item()} at epoch {epoch + 1}, step {b + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        ssl.after_step(epoch * steps + b, cfg.epochs * steps)
        total += float(loss.detach())
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / (b + 1):.3f}")
    return total / steps


def fit_ssl(images, backbone: BackboneConfig, cfg: PretrainConfig, folder: str | Path, *,
            resume: bool = True) -> tuple[nn.Module, list[dict]]:
    """Pretrain a ``backbone`` on ``images`` (N, H, W, C) uint8 with ``cfg``; checkpoint in ``folder`` each epoch.

    Parameters
    ----------
    images : the train split's images (an array, or memory-mapped images), nothing else.
    backbone : built with :func:`ferlib.backbones.create_model` (``in_chans`` must be the images' channels).
    folder : holds ``checkpoint.pt`` while the run is unfinished; the caller holds its lock.
    resume : continue from ``folder/checkpoint.pt`` when there is one (the same result as an uninterrupted run).

    Returns
    -------
    (the pretrained timm backbone on the device, the history: one ``{"epoch", "loss", "lr", "time_s"}`` per epoch,
    the precision record: :func:`ferlib.engine.settle_precision` of the backbone).
    """
    if len(images) < cfg.batch_size:
        raise ValueError(f"the train split has {len(images)} images, fewer than PretrainConfig.batch_size="
                         f"{cfg.batch_size}")
    device = resolve_device(cfg.device)
    gen = seed_everything(cfg.seed)
    ssl = create_ssl(create_model(backbone, num_classes=1).backbone, cfg)
    prepare_model(ssl, engine_config(cfg), device)
    ecfg, precision = settle_precision(ssl.backbone, images, engine_config(cfg), device)
    cfg = dataclasses.replace(cfg, amp=ecfg.amp)  # float32 where bf16 fails the probe
    steps = len(images) // cfg.batch_size
    optimizer, scheduler = _optimizer(ssl, cfg, steps)
    path, parts = Path(folder) / CHECKPOINT, {"model": ssl, "optimizer": optimizer, "scheduler": scheduler}
    start, history = load_checkpoint(path, parts, gen, device=device) if resume else (0, [])
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        loss = train_one_epoch(ssl, images, optimizer, scheduler, cfg, device, gen, epoch)
        history.append({"epoch": epoch + 1, "loss": loss, "lr": optimizer.param_groups[0]["lr"],
                        "time_s": time.perf_counter() - t0})
        save_checkpoint(path, epoch=epoch + 1, history=history, parts=parts, gen=gen)
    return ssl.backbone, history, precision


def _optimizer(ssl: nn.Module, cfg: PretrainConfig, steps: int):
    """SGD over the trainable parameters and lightly's per-step cosine schedule with linear warm-up."""
    from lightly.utils.scheduler import CosineWarmupScheduler

    params = [p for p in ssl.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=cfg.warmup_epochs * steps,
                                      max_epochs=cfg.epochs * steps)
    return optimizer, scheduler
