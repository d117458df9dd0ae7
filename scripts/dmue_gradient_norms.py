"""Per-term gradient norms of DMUE's loss at a training checkpoint of a dmue run, with the faithful weights (SP-KD
on, gamma 1000, w 0.5), on five class-balanced batches (seeded). Each term's gradient is taken alone: the target
CE, the soft loss and SP-KD at full target ramp (r_up 1, r_down 0; the soft and SP-KD terms as the difference from
CE's, under the same dropout masks), the auxiliary CE at full auxiliary ramp (r_up 0, r_down 1).

    python scripts/dmue_gradient_norms.py runs/cpu_full/dmue-symmetric0.3-s0-<id>

The run folder needs its ``checkpoint.pt`` (not committed). The committed output,
``reports/evidence/cpu_full/dmue_gradient_norms.txt``, is of the cpu_full ``--method-opt use_spkd=false`` cell of
``reports/evidence/cpu_full/README.md`` after epoch 12.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from ferlib import rundir
from ferlib.engine import autocast, make_batch, prepare_model, settle_precision
from ferlib.experiment import RunSpec, build, prepare_data
from ferlib.methods.dmue_parts import class_balanced_order

BATCHES = 5
#: (r_up, r_down, DMUEConfig overrides) of each term taken alone: w weighs the soft loss, gamma SP-KD.
TERMS = {"ce": ((1.0, 0.0), {"w": 0.0, "gamma": 0.0}), "soft": ((1.0, 0.0), {"gamma": 0.0}),
         "spkd": ((1.0, 0.0), {"w": 0.0}), "aux": ((0.0, 1.0), {"w": 0.0, "gamma": 0.0})}


def load_run(run_dir: Path):
    """The run's train split, its model and DMUE method (faithful config: the run's method options dropped) with
    the weights and state of its checkpoint, the train config it computes with on this CPU (bf16 only where
    :func:`ferlib.engine.settle_precision` finds it sound, as in training) and the checkpoint's epoch."""
    spec = dataclasses.replace(RunSpec.from_run(run_dir), method_options={})
    data, _ = prepare_data(spec)
    train = data.subset("train")
    model, method = build(spec, data)
    model = prepare_model(model, spec.train, torch.device("cpu"))
    cfg, _ = settle_precision(model, train.images, spec.train, torch.device("cpu"))
    method.bind(model, train, cfg)
    epoch, _ = rundir.load_checkpoint(run_dir / rundir.CHECKPOINT, {"model": model, "method": method},
                                      torch.Generator())
    if epoch == 0:
        raise FileNotFoundError(f"{run_dir / rundir.CHECKPOINT} is missing: this script needs a training checkpoint")
    return cfg, train, model, method, epoch


def parameter_groups(model, method) -> dict[str, list]:
    return {"trunk (stem..layer3)": [p for n, p in model.backbone.named_parameters() if not n.startswith("layer4")],
            "target layer4": list(model.backbone.layer4.parameters()), "head": list(model.head.parameters()),
            "aux branches": list(method.branches.parameters())}


def term_gradient(model, method, batch, cfg, ramps, overrides, groups) -> tuple[dict, dict]:
    """The flattened gradient per parameter group of the loss at ``ramps`` with ``overrides`` of the method's
    config, under fixed dropout masks (torch seed 123), and the step's logged terms."""
    base = method.config
    method.config = dataclasses.replace(base, **overrides)
    method.ramps = lambda: ramps  # DMUE's ramp weights, pinned for this step
    try:
        model.zero_grad()
        method.zero_grad()
        torch.manual_seed(123)
        with autocast(torch.device("cpu"), cfg):
            out = method.training_step(model, batch)
        out["loss"].backward()
    finally:
        method.config = base
        del method.ramps
    grads = {g: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in ps]).clone()
             for g, ps in groups.items()}
    return grads, {k: float(v) for k, v in out.items() if k != "loss"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a dmue run folder holding checkpoint.pt")
    run_dir = parser.parse_args(argv).run_dir
    torch.set_num_threads(1)
    cfg, train, model, method, epoch = load_run(run_dir)
    print("checkpoint epoch", epoch)
    model.train()
    method.train()
    gen = torch.Generator().manual_seed(0)
    order = class_balanced_order(np.asarray(train.labels), gen)
    images, labels = torch.from_numpy(train.images), torch.from_numpy(np.asarray(train.labels))
    groups = parameter_groups(model, method)
    rows = []
    for b in range(BATCHES):
        batch = make_batch(images, labels, None, order[b * 64:(b + 1) * 64], (), cfg, torch.device("cpu"), gen)
        g, logged = {}, None
        for term, (ramps, overrides) in TERMS.items():
            g[term], terms = term_gradient(model, method, batch, cfg, ramps, overrides, groups)
            logged = logged or terms
        rows.append({k: (g["ce"][k].norm().item(), (g["soft"][k] - g["ce"][k]).norm().item(),
                         (g["spkd"][k] - g["ce"][k]).norm().item(), g["aux"][k].norm().item(),
                         torch.nn.functional.cosine_similarity(g["spkd"][k] - g["ce"][k], g["ce"][k] + g["aux"][k],
                                                               dim=0).item())
                     for k in groups})
        print("batch", b, {k: round(v, 5) for k, v in logged.items()})
    print("median grad norm per term (ce / w*soft / gamma*spkd / aux) and cos(spkd, ce+aux):")
    for k in groups:
        m = np.median([r[k] for r in rows], 0)
        print(f"  {k:22s} ce {m[0]:.4f}  soft {m[1]:.5f}  spkd {m[2]:.4f}  aux {m[3]:.4f}  cos {m[4]:+.3f}")


if __name__ == "__main__":
    main()
