"""Per-term gradient norms of DMUE's loss at a checkpoint of a cpu_full dmue run, with the faithful weights
(SP-KD on, gamma 1000, w 0.5) at full ramp (r_up = r_down = 1), on five class-balanced batches (seeded).

    python reports/evidence/cpu_full/dmue_gradient_norms.py runs/cpu_full/dmue-symmetric0.3-s0-<id>

where the run is the `--method dmue --method-opt use_spkd=false` cell of this folder's README (its checkpoint.pt,
not committed, after epoch 12). Output of that run: `dmue_gradient_norms.txt`. Each term's gradient is taken alone
(the soft and SP-KD terms as the difference from CE's, under the same dropout masks).
"""
import dataclasses
import sys

import numpy as np
import torch

from ferlib.experiment import RunSpec, prepare_data, build
from ferlib.engine import make_batch, prepare_model, autocast
from ferlib.methods.dmue_parts import class_balanced_order
torch.set_num_threads(1)
run = sys.argv[1]
spec = dataclasses.replace(RunSpec.from_run(run), method_options={})      # faithful config: SP-KD on
data, _ = prepare_data(spec)
train = data.subset("train")
model, method = build(spec, data)
cfg, dev = spec.train, torch.device("cpu")
model = prepare_model(model, cfg, dev)
method.bind(model, train, cfg)
st = torch.load(f"{run}/checkpoint.pt", map_location="cpu", weights_only=False)
model.load_state_dict(st["model"]); method.load_state_dict(st["method"])
print("checkpoint epoch", st["epoch"])
model.train(); method.train()
gen = torch.Generator().manual_seed(0)
order = class_balanced_order(np.asarray(train.labels), gen)
imgs, labels = torch.from_numpy(train.images), torch.from_numpy(np.asarray(train.labels))
groups = {"trunk (stem..layer3)": [p for n, p in model.backbone.named_parameters() if not n.startswith("layer4")],
          "target layer4": list(model.backbone.layer4.parameters()), "head": list(model.head.parameters()),
          "aux branches": list(method.branches.parameters())}
base = method.config
def grads(ramps, **cfg_over):
    method.config = dataclasses.replace(base, **cfg_over)
    method.ramps = lambda: ramps
    model.zero_grad(); method.zero_grad()
    torch.manual_seed(123)
    with autocast(dev, cfg):
        out = method.training_step(model, batch)
    out["loss"].backward()
    return {g: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in ps]).clone()
            for g, ps in groups.items()}, {k: float(v) for k, v in out.items() if k != "loss"}
rows = []
for b in range(5):
    batch = make_batch(imgs, labels, None, order[b * 64:(b + 1) * 64], (), cfg, dev, gen)
    g_ce, terms = grads((1.0, 0.0), w=0.0, gamma=0.0)
    g_soft, _ = grads((1.0, 0.0), gamma=0.0)
    g_sp, _ = grads((1.0, 0.0), w=0.0)
    g_aux, _ = grads((0.0, 1.0), w=0.0, gamma=0.0)
    rows.append({g: (g_ce[g].norm().item(), (g_soft[g] - g_ce[g]).norm().item(), (g_sp[g] - g_ce[g]).norm().item(),
                     g_aux[g].norm().item(),
                     torch.nn.functional.cosine_similarity(g_sp[g] - g_ce[g], g_ce[g] + g_aux[g], dim=0).item())
                 for g in groups})
    print("batch", b, {k: round(v, 5) for k, v in terms.items()})
print("median grad norm per term (ce / w*soft / gamma*spkd / aux) and cos(spkd, ce+aux):")
for g in groups:
    m = np.median([r[g] for r in rows], 0)
    print(f"  {g:22s} ce {m[0]:.4f}  soft {m[1]:.5f}  spkd {m[2]:.4f}  aux {m[3]:.4f}  cos {m[4]:+.3f}")
