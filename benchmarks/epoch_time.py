"""Training throughput of each method through the one engine: images/s, seconds per epoch, ratio to ``ce``.

    python benchmarks/epoch_time.py --data ../shared/data/ferplus --methods ce nla ldlva lanet --steps 30
    python benchmarks/epoch_time.py --methods ce ldlva:neighbours=bank     # NAME:KEY=VALUE[,KEY=VALUE]

A method's options are typed from its config (:func:`ferlib.methods.parse_overrides`, as ``--method-opt``);
they are split at the commas outside brackets (:func:`ferlib.options.split_options`), so a list or tuple value
keeps its commas.

Times ``train_one_epoch`` on the first ``steps`` batches of the (plurality, 8-class) train split after one
warm-up batch, then extrapolates to a full epoch of the train split. ``bind`` (kNN graphs, landmark
extraction, bank initialisation) is timed separately: it runs once per run, not per epoch.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ferlib.backbones import BackboneConfig, create_model
from ferlib.data import load_dataset
from ferlib.engine import TrainConfig, build_optimizer, build_scheduler, resolve_device, seed_everything, train_one_epoch
from ferlib.methods import create_method, parse_overrides
from ferlib.options import split_options


def time_method(label: str, data, steps: int, cfg: TrainConfig) -> dict:
    device = resolve_device(cfg.device)
    train_full = data.subset("train")
    train = train_full.select(np.arange(min(len(train_full), (steps + 1) * cfg.batch_size)))
    model = create_model(BackboneConfig(in_chans=train.image_shape[2]), data.num_classes).to(device)
    name, _, opts = label.partition(":")
    method = create_method(name, num_classes=data.num_classes, num_train=len(train), feature_dim=model.feature_dim,
                           **parse_overrides(name, split_options(opts)))
    method.to(device)
    t0 = time.perf_counter()
    method.bind(model, train, cfg)
    bind_s = time.perf_counter() - t0
    params = list(model.parameters()) + list(method.parameters())
    opt = build_optimizer([p for p in params if p.requires_grad], cfg)
    sched = build_scheduler(opt, cfg, steps + 1)
    gen = seed_everything(0)
    warm = train.select(np.arange(cfg.batch_size))
    method.on_epoch_start(0, cfg.epochs)
    train_one_epoch(model, method, warm, opt, sched, cfg, device, gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_one_epoch(model, method, train, opt, sched, cfg, device, gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_image = (time.perf_counter() - t0) / (len(train) // cfg.batch_size * cfg.batch_size)
    return {"method": label, "images_per_s": 1 / per_image, "epoch_s": per_image * len(train_full),
            "bind_s": bind_s, "train_images": len(train_full)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/ferplus_sample")
    p.add_argument("--methods", nargs="+", default=["ce", "nla", "ldlva", "lanet"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    data = load_dataset("ferplus", args.data)
    cfg = TrainConfig(batch_size=args.batch_size, image_size=args.image_size, device=args.device, progress=False)
    print(f"device={resolve_device(args.device)} threads={torch.get_num_threads()} batch={args.batch_size} "
          f"size={args.image_size}px")
    rows = [time_method(m, data, args.steps, cfg) for m in args.methods]
    base = next((r["epoch_s"] for r in rows if r["method"] == "ce"), None)
    print(f"{'method':8s} {'img/s':>8s} {'s/epoch':>9s} {'x ce':>6s} {'bind s':>7s}  (epoch = {rows[0]['train_images']} images)")
    for r in rows:
        ratio = f"{r['epoch_s'] / base:6.2f}" if base else "     -"
        print(f"{r['method']:8s} {r['images_per_s']:8.1f} {r['epoch_s']:9.1f} {ratio} {r['bind_s']:7.1f}")


if __name__ == "__main__":
    main()
