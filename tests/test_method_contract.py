"""The method contract, checked for every registered method and each of its ablation variants (as timm tests
every model in its registry): a newly registered method is covered here with no new test code.

For each (method, variant), on a 64-image FERPlus tree (``small_ferplus``) with a tiny backbone:
- the loss of a training step is a finite scalar, on a model that exposes only the parts the method declares
  (``model_parts``);
- a gradient reaches every trainable parameter of the model and of the method, and none reaches a parameter
  or buffer that must not train (momentum encoders, banks);
- the read-out is a :class:`~ferlib.methods.Readout` and its ``score`` is (N,) and finite after training;
- every ablation key is a config field;
- every numeric option declares its range (:func:`ferlib.options.ranged`) and the config refuses, on construction,
  the values just outside it (and NaN and +-inf), naming the option;
- two epochs interrupted after the first and resumed equal two uninterrupted epochs, bit for bit;
- two identical runs through the public entry point (:func:`ferlib.experiment.run`) are identical;
- the model a method trains (after ``bind``) has the plain model's weights: inference is backbone + classifier.

Methods that read an external per-sample source get a stub file (:data:`ferlib.bench.synthetic.STUB_SOURCES`, which
the bench uses too), so no landmark detector runs here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from ferlib.backbones import BackboneConfig, FERModel
from ferlib.bench.synthetic import STUB_SOURCES
from ferlib.data.dataset import FERData
from ferlib.engine import TrainConfig, make_batch
from ferlib.experiment import RunSpec, build, prepare_data, run
from ferlib.methods import Readout, create_method, list_methods, method_class
from ferlib.options import Interval, field_hints

BATCH = 16
TINY = BackboneConfig(model_kwargs={"channels": [8, 16, 32, 64], "stem_width": 8})


def cases() -> list[tuple[str, str | None]]:
    return [(name, variant) for name in list_methods()
            for variant in (None, *method_class(name).ablations)]


def _ids(case) -> str:
    return f"{case[0]}-{case[1] or 'default'}"


@pytest.fixture(scope="module")
def stub_dir(tmp_path_factory, small_ferplus) -> Path:
    """The data root, and one stub file per source field aligned with its train split, in a folder."""
    folder = tmp_path_factory.mktemp("stubs")
    data, _ = prepare_data(RunSpec(data=str(small_ferplus)))
    n = data.split_counts()["train"]
    for field, make in STUB_SOURCES.items():
        np.save(folder / f"{field}.npy", make(n, np.random.default_rng(0)))
    (folder / "data").symlink_to(small_ferplus)
    return folder


def spec_of(method: str, variant: str | None, stubs: Path, out: Path, epochs: int = 2) -> RunSpec:
    cls = method_class(method)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    options = {f: str(stubs / f"{f}.npy") for f in STUB_SOURCES if f in fields}
    options.update(cls.ablations.get(variant, {}) if variant else {})
    return RunSpec(data=str((stubs / "data").resolve()), noise="symmetric:0.3", method=method,
                   method_options=options, backbone=TINY, out=str(out),
                   train=TrainConfig(epochs=epochs, batch_size=BATCH, image_size=32, progress=False, device="cpu",
                                     eval_batch_size=64, select_on="valid"))


class PartsOnly:
    """``model`` with only ``parts`` of :data:`FERModel.PARTS` reachable: using another part fails the test."""

    def __init__(self, model: FERModel, parts: tuple[str, ...]) -> None:
        self._model, self._parts = model, parts

    def __getattr__(self, name: str):
        if name in FERModel.PARTS and name not in self._parts:
            raise AssertionError(f"the training step uses model.{name}, not in the method's model_parts")
        return getattr(self._model, name)

    def __call__(self, x):
        return self.forward(x)


@pytest.mark.parametrize("name", list_methods())
def test_every_ablation_key_is_a_config_field(name):
    cls = method_class(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    for variant, overrides in cls.ablations.items():
        assert overrides, f"{name} ablation {variant!r} changes nothing"
        assert set(overrides) <= fields, f"{name} ablation {variant!r} names {set(overrides) - fields}"
        cls.Config(**overrides)  # valid values


def numeric_options() -> list[tuple[str, str]]:
    """(method, option) for every int or float option of every config (``X | None`` and tuples of X too)."""
    return [(name, key) for name in list_methods() for key, hint in field_hints(method_class(name).Config).items()
            if {int, float} & set(typing.get_args(hint) or (hint,))]


def outside(rng: Interval, integer: bool) -> list:
    """The values just outside ``rng`` at each finite end, and NaN and +-inf unless ``integer``."""
    step = (lambda x, d: int(x) + d) if integer else (lambda x, d: math.nextafter(x, d * math.inf))
    values = [] if integer else [math.nan, math.inf, -math.inf]
    if math.isfinite(rng.lo):
        values.append(rng.lo if rng.lo_open else step(rng.lo, -1))
    if math.isfinite(rng.hi):
        values.append(rng.hi if rng.hi_open else step(rng.hi, 1))
    return values


@pytest.mark.parametrize("name, key", numeric_options(), ids=lambda v: v)
def test_every_numeric_option_has_a_range_and_a_value_outside_it_is_refused_naming_it(name, key):
    config = method_class(name).Config
    f = next(f for f in dataclasses.fields(config) if f.name == key)
    rng = f.metadata.get("range")
    assert isinstance(rng, Interval), f"{config.__name__}.{key} declares no range (ferlib.options.ranged)"
    hint = field_hints(config)[key]
    for bad in outside(rng, integer=float not in (typing.get_args(hint) or (hint,))):
        values = [tuple(bad if j == i else v for j, v in enumerate(f.default)) for i in range(len(f.default))] \
            if isinstance(f.default, tuple) else [bad]
        for value in values:
            text = re.escape(f"{config.__name__}.{key} must be ") + r"(finite and )?" + re.escape(
                f"{rng}, got {value!r}")
            with pytest.raises(ValueError, match=text):
                config(**{key: value})


def _train_split(n: int, k: int) -> FERData:
    return FERData(images=np.zeros((n, 4, 4, 1), np.uint8), labels=np.arange(n) % k, split=np.array(["train"] * n),
                   ids=np.array([f"f{i}" for i in range(n)]), classes=tuple("abcdefgh"[:k]))


@pytest.mark.parametrize("name", list_methods())
def test_a_model_or_train_split_that_does_not_fit_the_method_is_refused(name):
    parts = method_class(name).model_parts
    assert parts and set(parts) <= set(FERModel.PARTS)
    method = create_method(name, num_classes=3, num_train=4, feature_dim=8)
    lacking = [p for p in parts if not hasattr(torch.nn.Identity(), p)]
    if lacking:
        with pytest.raises(ValueError, match=rf"method '{name}' uses the model's \{lacking}, which a Identity lacks"):
            method.check_binding(torch.nn.Identity(), _train_split(4, 3))
    model = SimpleNamespace(**{**dict.fromkeys(FERModel.PARTS), "feature_dim": 8})
    method.check_binding(model, _train_split(4, 3))  # fits
    for n, k in ((5, 3), (4, 4)):
        with pytest.raises(ValueError, match=rf"method '{name}' was built for 4 samples / 3 classes, bound to "
                                             rf"{n} / {k}"):
            method.check_binding(model, _train_split(n, k))
    model.feature_dim = 16
    with pytest.raises(ValueError, match=rf"model.feature_dim = 16 but method '{name}' was built with 8"):
        method.check_binding(model, _train_split(4, 3))


@pytest.mark.parametrize("name", list_methods())
def test_inference_is_the_plain_model_whatever_the_method(name, stub_dir, tmp_path):
    """A method's extra modules live in the method, never in the model: the model it trains has ce's weights
    (names and shapes), so ``model.pt`` of any run loads into a plain backbone + classifier."""
    spec = spec_of(name, None, stub_dir, tmp_path)
    data, _ = prepare_data(spec)
    model, method = build(spec, data)
    method.bind(model, data.subset("train"), spec.train)
    plain, _ = build(dataclasses.replace(spec, method="ce", method_options={}), data)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(model) == shapes(plain)


@pytest.mark.parametrize("case", cases(), ids=_ids)
def test_loss_is_finite_and_gradients_reach_exactly_the_trainable_parameters(case, stub_dir, tmp_path):
    spec = spec_of(*case, stub_dir, tmp_path)
    data, _ = prepare_data(spec)
    train = data.subset("train")
    model, method = build(spec, data)
    method.bind(model, train, spec.train)
    method.on_epoch_start(1, 2)
    model.train()
    method.train()
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(BATCH)
    votes = None if train.votes is None else torch.from_numpy(train.votes)
    batch = make_batch(torch.from_numpy(train.images), torch.from_numpy(train.labels), votes, idx,
                        method.views, spec.train, torch.device("cpu"), gen)
    out = method.training_step(PartsOnly(model, method.model_parts), batch)
    loss = out["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss), f"loss {loss}"
    loss.backward()
    named = [(f"model.{n}", p) for n, p in model.named_parameters()]
    named += [(f"method.{n}", p) for n, p in method.named_parameters()]
    trainable = [(n, p) for n, p in named if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"trainable parameters without gradient: {no_grad[:5]}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
    frozen = [n for n, p in named if not p.requires_grad and p.grad is not None]
    assert not frozen, f"frozen parameters received a gradient: {frozen[:5]}"
    buffers = [n for n, b in method.named_buffers() if b.requires_grad or b.grad is not None]
    assert not buffers, f"buffers that carry gradients: {buffers}"
    readout = method.readout()
    assert isinstance(readout, Readout) and readout.score.shape == (len(train),)


def _metrics(run_dir: Path) -> tuple[dict, pd.DataFrame, dict]:
    result = json.loads((run_dir / "result.json").read_text())
    result.pop("time_per_epoch_s")
    epochs = pd.read_csv(run_dir / "epochs.csv").drop(columns=["epoch_time_s"])
    with np.load(run_dir / "readout.npz") as z:
        readout = {k: z[k] for k in z.files}
    return result, epochs, readout


def _assert_identical(a: Path, b: Path) -> None:
    ra, ea, oa = _metrics(a)
    rb, eb, ob = _metrics(b)
    assert ra == rb
    pd.testing.assert_frame_equal(ea, eb, check_exact=True)
    assert oa.keys() == ob.keys()
    for k in oa:
        np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)
    wa, wb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
@pytest.mark.parametrize("case", cases(), ids=_ids)
def test_runs_are_reproducible_resumable_and_score_every_sample(case, stub_dir, tmp_path, interrupted):
    first = run(spec_of(*case, stub_dir, tmp_path / "a"))
    second = run(spec_of(*case, stub_dir, tmp_path / "b"))
    rid = first["run_id"]
    assert second["run_id"] == rid
    _assert_identical(tmp_path / "a" / rid, tmp_path / "b" / rid)

    with np.load(tmp_path / "a" / rid / "readout.npz") as z:
        score = z["method_score"]
    n = first["split_counts"]["train"]
    assert score.shape == (n,) and np.isfinite(score).all()

    interrupted(lambda: run(spec_of(*case, stub_dir, tmp_path / "c")))
    assert not (tmp_path / "c" / rid / "result.json").exists()
    run(spec_of(*case, stub_dir, tmp_path / "c"))
    _assert_identical(tmp_path / "a" / rid, tmp_path / "c" / rid)
