"""bf16 on a CPU is decided by a numerical probe of the model's own layers (``ferlib.engine.probe_bf16``), not by
the cpuinfo flags alone: torch 2.14.1's CPU bf16 convolution leaves entries of a weight gradient unwritten for a
3x3 stride-2 convolution over a 1x1 map, so a step turned into NaN or not by what ran before it in the process.
The bf16 path is forced on every CPU here (``cpu_native_bf16`` patched; torch emulates bf16 where it is not
native), and the probe's per-process cache is emptied, so no test depends on the processor or on earlier tests."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from ferlib import engine
from ferlib.backbones import BackboneConfig, create_model
from ferlib.bench.synthetic import synthetic_data
from ferlib.engine import TrainConfig, fit, known_bf16_defect, probe_bf16, settle_precision
from ferlib.methods import create_method
from ferlib.rundir import RunDir

#: A quarter-width ResNet-18: at 16 px its layer4.0.conv1 meets a 1x1 map (the shape of the kernel defect).
TINY = BackboneConfig(name="resnet18", in_chans=1, model_kwargs={"channels": [8, 16, 32, 64], "stem_width": 8})
CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(engine, "cpu_native_bf16", lambda: True)
    monkeypatch.setattr(engine, "_PROBED", {})


def _fit(data, run_dir, seed: int, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    model = model or create_model(TINY, data.num_classes)
    method = create_method("ce", num_classes=data.num_classes, num_train=data.split_counts()["train"],
                           feature_dim=model.feature_dim)
    cfg = TrainConfig(epochs=1, batch_size=8, image_size=16, seed=seed, progress=False, device="cpu")
    fit(model, method, data, cfg, RunDir(run_dir))
    return model, json.loads((run_dir / "config.json").read_text())


def _data(n: int = 64):
    """Synthetic voted faces with a train, valid and test split."""
    data = synthetic_data(n, image_size=16)
    return dataclasses.replace(data, split=np.array(["train"] * (n // 2) + ["valid"] * (n // 4) + ["test"] * (n // 4)))


@pytest.mark.slow
def test_the_bf16_engine_steps_stay_finite_under_any_global_random_state(bf16_cpu, tmp_path):
    """Eight runs in one process, each after another global seed and with its own run seed: every step's loss
    (the engine raises on a non-finite one) and every weight after training are finite, whatever the probe
    decided for this CPU."""
    data = _data()
    for seed in range(8):
        torch.manual_seed(1000 + seed)
        model, config = _fit(data, tmp_path / str(seed), seed)
        assert all(torch.isfinite(p).all() for p in model.parameters()), (seed, config["precision"])
        assert config["precision"]["autocast"] in ("bfloat16", "float32")
        assert "bf16_probe" in config["precision"]


class _NaNGradient(torch.autograd.Function):
    """Zero forward, NaN gradient: what a kernel leaving its gradient unwritten over NaN-filled memory gives."""

    @staticmethod
    def forward(ctx, w):
        return torch.zeros_like(w)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.nan)


class DefectiveBF16Conv(nn.Conv2d):
    """A convolution whose weight gradient is NaN under autocast and right in float32."""

    def forward(self, x):
        w = self.weight + _NaNGradient.apply(self.weight) if torch.is_autocast_enabled(x.device.type) else self.weight
        return self._conv_forward(x, w, self.bias)


def _with_defect(num_classes: int) -> nn.Module:
    model = create_model(TINY, num_classes)
    good = model.backbone.layer2[0].conv1
    bad = DefectiveBF16Conv(good.in_channels, good.out_channels, good.kernel_size, good.stride, good.padding,
                            bias=False)
    bad.load_state_dict(good.state_dict())
    model.backbone.layer2[0].conv1 = bad
    return model


def test_a_layer_with_a_wrong_bf16_gradient_fails_the_probe_and_the_run_computes_in_float32(bf16_cpu, tmp_path):
    data = _data()
    with pytest.warns(RuntimeWarning, match="backbone.layer2.0.conv1"):
        model, config = _fit(data, tmp_path, 0, _with_defect(data.num_classes))
    precision = config["precision"]
    assert precision["autocast"] == "float32" and config["train"]["amp"] is True  # the run's identity unchanged
    assert precision["bf16_probe"]["passed"] is False and precision["bf16_probe"]["max_rel_err"] == math.inf
    assert precision["bf16_probe"]["worst"].startswith("backbone.layer2.0.conv1 ")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_probe_leaves_the_model_and_the_random_state_untouched(bf16_cpu):
    model = engine.prepare_model(create_model(TINY, 8), TrainConfig(image_size=16), CPU)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    rng = torch.get_rng_state()
    report = probe_bf16(model, x)
    assert report["layers"] > 0 and set(report) == {"passed", "max_rel_err", "worst", "layers"}
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_float32_runs_and_other_devices_skip_the_probe(bf16_cpu):
    model = create_model(TINY, 8)
    images = synthetic_data(8, image_size=16).images
    cfg = TrainConfig(amp=False, batch_size=8, image_size=16)
    assert settle_precision(model, images, cfg, CPU) == (cfg, engine.resolve_precision(cfg, CPU))


def _flagged(size: int) -> list[str]:
    """The layers of TINY that :func:`known_bf16_defect` flags at ``size`` px."""
    model, flagged = create_model(TINY, 8), []
    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: flagged.extend([n] * known_bf16_defect(m, args[0].shape)))
             for n, m in model.named_modules()]
    with torch.no_grad():
        model(torch.zeros(2, 1, size, size))
    for h in hooks:
        h.remove()
    return flagged


def test_the_known_defective_shapes_are_strided_convolutions_with_a_tap_that_meets_only_padding():
    # 16 px: layer3 meets a 2x2 map, layer4 a 1x1 one; the 1x1 downsamples and the stride-1 convs are exempt
    assert _flagged(16) == ["backbone.layer3.0.conv1", "backbone.layer4.0.conv1"]
    assert _flagged(32) == ["backbone.layer4.0.conv1"] and _flagged(48) == []  # every study runs at 48 px or more
    conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)
    assert known_bf16_defect(conv, (8, 4, 2, 1)) and known_bf16_defect(conv, (8, 4, 1, 2))
    assert not known_bf16_defect(conv, (8, 4, 3, 3))  # a 2x2 output: every tap meets a pixel
    assert known_bf16_defect(nn.Conv2d(4, 4, 3, stride=(2, 1), padding=1), (8, 4, 1, 1))  # rows: stride 2
    assert not known_bf16_defect(nn.Conv2d(4, 4, 3, stride=1, padding=1), (8, 4, 1, 1))
    assert not known_bf16_defect(nn.Conv2d(4, 4, 1, stride=2), (8, 4, 1, 1))
    assert not known_bf16_defect(nn.Linear(4, 4), (8, 4, 1, 1))


def test_a_known_defective_shape_fails_the_probe_whatever_the_allocator_holds(bf16_cpu):
    model = engine.prepare_model(create_model(TINY, 8), TrainConfig(image_size=16), CPU)
    report = probe_bf16(model, torch.randn(8, 1, 16, 16).contiguous(memory_format=torch.channels_last))
    assert report["passed"] is False and report["max_rel_err"] == math.inf
    decided = {key[1]: err for key, err in engine._PROBED.items() if key[0].startswith("Conv2d(32, 64, kernel_size=(3")}
    assert decided == {(8, 32, 1, 1): math.inf}  # layer4.0.conv1, decided by the rule, not by a lottery
