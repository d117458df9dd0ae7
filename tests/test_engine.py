"""The training engine: a real short CE run, exact resume, atomic run files, schedules, augmentation."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ferlib.augment import AugmentConfig, augment_batch, prepare_batch
from ferlib.backbones import BackboneConfig, create_model
from ferlib.data.dataset import FERData
from ferlib.engine import TrainConfig, build_scheduler, fit
from ferlib.experiment import RunSpec, run, run_id, stratified_subset
from ferlib.methods import create_method
from ferlib.methods.ce import CE, CEConfig
from ferlib.results import write_json
from ferlib.rundir import RunDir, collect_results, write_results

from stubs import synthetic

SAMPLE = Path(__file__).parents[1] / "data" / "ferplus_sample"
QUIET = dict(progress=False, device="cpu")


def tiny_fit(data: FERData, run_dir: Path, epochs=2, **kw) -> dict:
    torch.manual_seed(0)
    model = create_model(BackboneConfig(), data.num_classes)
    method = create_method("ce", num_classes=data.num_classes, num_train=data.split_counts()["train"],
                           feature_dim=model.feature_dim)
    cfg = TrainConfig(epochs=epochs, batch_size=16, image_size=24, **QUIET, **kw)
    return fit(model, method, data, cfg, RunDir(run_dir))


@pytest.mark.slow
def test_ce_on_shipped_sample_lowers_loss_and_beats_majority_class(tmp_path, monkeypatch):
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "cache"))
    spec = RunSpec(data=str(SAMPLE), noise="none", out=str(tmp_path / "runs"),
                   train=TrainConfig(epochs=6, batch_size=32, lr=2e-3, **QUIET))
    result = run(spec)
    assert result["train_loss_last"] < 0.9 * result["train_loss_first"]
    test_labels = np.load(tmp_path / "runs" / result["run_id"] / "readout.npz")["test_labels"]
    majority_rate = np.bincount(test_labels).max() / len(test_labels)
    assert result["last"]["acc"] > majority_rate  # better than always answering the most frequent class
    assert result["last"]["mean_acc"] > 1 / 8 + 0.05
    assert not (tmp_path / "runs" / "results.csv").exists()  # rebuilt once by the command or study, not per run
    table = pd.read_csv(write_results(tmp_path / "runs"))
    assert table["run_id"].tolist() == [result["run_id"]]
    assert table["last.acc"][0] == pytest.approx(result["last"]["acc"])


@pytest.mark.slow
def test_run_files_describe_the_run(tmp_path):
    result = tiny_fit(synthetic(), tmp_path, epochs=2)
    for name in ("config.json", "epochs.csv", "epochs.jsonl", "model.pt", "readout.npz", "result.json"):
        assert (tmp_path / name).is_file(), name
    epochs = (tmp_path / "epochs.csv").read_text().splitlines()
    assert len(epochs) == 3 and "test_acc" in epochs[0] and "valid_mean_acc" in epochs[0]
    readout = np.load(tmp_path / "readout.npz")
    assert readout["method_score"].shape == (96,) and np.isfinite(readout["method_score"]).all()
    assert readout["train_logits"].shape == (96, 4)
    assert 0.0 <= result["last"]["acc"] <= 1.0 and result["best_epoch"] in (1, 2)
    assert "valid" in result["selection"] and "TEST" not in result["selection"]


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, interrupted):
    data = synthetic()
    full = tiny_fit(data, tmp_path / "full", epochs=3)

    interrupted(lambda: tiny_fit(data, tmp_path / "resumed", epochs=3))
    assert not (tmp_path / "resumed" / "result.json").exists()
    resumed = tiny_fit(data, tmp_path / "resumed", epochs=3)

    assert resumed["last"] == full["last"]
    a = torch.load(tmp_path / "full" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    write_json(target, {"acc": 0.5})

    def boom(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_json(target, {"acc": 0.9})
    assert json.loads(target.read_text()) == {"acc": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind


def test_collect_results_one_row_per_finished_run(tmp_path):
    write_json(tmp_path / "a" / "result.json", {"run_id": "a", "method": "ce", "last": {"acc": 0.5}})
    write_json(tmp_path / "b" / "result.json", {"run_id": "b", "method": "ce", "last": {"acc": 0.7}})
    (tmp_path / "c").mkdir()  # unfinished run: no result.json
    table = collect_results(tmp_path)
    assert sorted(table["run_id"]) == ["a", "b"] and list(table["last.acc"]) == [0.5, 0.7]


@pytest.mark.parametrize("name,at_half,at_end", [
    ("cosine", 0.5, 0.0), ("linear", 0.5, 0.0), ("none", 1.0, 1.0), ("exponential", 0.5 ** 2, 0.5 ** 4),
    ("multistep", 0.5, 0.5 ** 2),  # milestones 1 and 3: x0.5 from epoch 1 (step 10), again from epoch 3
])
def test_schedules(name, at_half, at_end):
    cfg = TrainConfig(epochs=4, scheduler=name, gamma=0.5, lr=1.0, milestones=(1, 3))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[19] == pytest.approx(at_half, abs=0.06)
    assert lrs[-1] == pytest.approx(at_end, abs=1e-6)


def test_bad_train_config_names_the_field():
    with pytest.raises(ValueError, match="optimizer.*sgd"):
        TrainConfig(optimizer="lamb")


def test_select_on_valid_without_valid_split_is_an_error(tmp_path):
    data = synthetic()
    data = data.select(data.split != "valid")
    with pytest.raises(ValueError, match="no 'valid' split"):
        tiny_fit(data, tmp_path)


def test_flip_augmentation_mirrors_the_image():
    img = torch.zeros(1, 8, 8, 1, dtype=torch.uint8)
    img[0, :, :2] = 255  # bright left edge
    cfg = AugmentConfig(flip=1.0, crop="none", erase=0.0, brightness=0.0, contrast=0.0)
    x, affine = augment_batch(img, 8, cfg, torch.Generator().manual_seed(0))
    assert affine[0, 0, 0] == -1  # x_in = -x_out
    assert x[0, 0, :, -2:].min() > 0.9 and x[0, 0, :, :2].max() < -0.9


def test_augmentation_is_reproducible_and_prepare_resizes():
    img = torch.randint(0, 255, (4, 48, 48, 1), dtype=torch.uint8)
    a, _ = augment_batch(img, 40, AugmentConfig(crop="resized"), torch.Generator().manual_seed(3))
    b, _ = augment_batch(img, 40, AugmentConfig(crop="resized"), torch.Generator().manual_seed(3))
    assert a.shape == (4, 1, 40, 40) and torch.equal(a, b)
    assert prepare_batch(img, 64, AugmentConfig()).shape == (4, 1, 64, 64)


def test_stratified_subset_keeps_class_shares():
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    idx = stratified_subset(labels, 100, seed=0)
    assert np.bincount(labels[idx]).tolist() == [60, 30, 10]


def test_run_id_depends_on_results_relevant_fields_only(tmp_path):
    base = RunSpec(data=str(tmp_path))
    assert run_id(base) == run_id(dataclasses.replace(base, out="elsewhere"))
    assert run_id(base) != run_id(dataclasses.replace(base, noise="symmetric:0.3"))
    assert run_id(base).startswith("ce-none-s0-")


def test_backbone_model_kwargs_reach_timm_and_bad_ones_are_named(tmp_path):
    half = create_model(BackboneConfig(model_kwargs={"channels": [32, 64, 128, 256], "stem_width": 32}), 8)
    assert half.feature_dim == 256 and half(torch.zeros(2, 1, 48, 48)).shape == (2, 8)
    with pytest.raises(ValueError, match="model_kwargs"):
        create_model(BackboneConfig(model_kwargs={"no_such_option": 1}), 8)
    base = RunSpec(data=str(tmp_path))
    wide = dataclasses.replace(base, backbone=BackboneConfig(model_kwargs={"stem_width": 32}))
    assert run_id(base) != run_id(wide)


class _FirstClassOnly(CE):
    """CE that visits only the samples of class 0 (each several times): exercises the epoch_order hook."""

    def epoch_order(self, labels, gen):
        members = torch.from_numpy(np.flatnonzero(labels == 0))
        return members.repeat(len(labels) // len(members) + 1)


def test_engine_visits_the_order_a_method_gives(tmp_path):
    data = synthetic(n_train=48, k=3)
    model = create_model(BackboneConfig(), data.num_classes)
    method = _FirstClassOnly(CEConfig(), num_classes=3, num_train=48, feature_dim=model.feature_dim)
    fit(model, method, data, TrainConfig(epochs=1, batch_size=16, image_size=24, **QUIET), RunDir(tmp_path))
    seen = np.isfinite(method.sample_loss.numpy())
    assert seen.any() and (data.subset("train").labels[seen] == 0).all()


def test_too_short_epoch_order_is_a_clear_error(tmp_path):
    data = synthetic(n_train=48, k=3)
    model = create_model(BackboneConfig(), data.num_classes)
    method = CE(CEConfig(), num_classes=3, num_train=48, feature_dim=model.feature_dim)
    method.epoch_order = lambda labels, gen: torch.arange(10)
    with pytest.raises(ValueError, match="epoch_order returned 10 indices"):
        fit(model, method, data, TrainConfig(epochs=1, batch_size=16, image_size=24, **QUIET), RunDir(tmp_path))
