"""Tests of the LDLVA method: its equations, what carries gradient, theta's own SGD, both neighbour modes."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ferlib.augment import AugmentConfig, augment_batch
from ferlib.backbones import BackboneConfig, create_model
from ferlib.classes import CLASSES_8
from ferlib.data.dataset import FERData
from ferlib.engine import TrainConfig
from ferlib.methods import create_method, list_methods, parse_overrides
from ferlib.methods.ldlva import (
    CalibrationNet,
    aggregate_neighbours,
    balanced_class_weights,
    calibration_score,
    center_loss,
    center_pull,
    center_push,
    center_repulsion,
    local_similarity,
    target_distribution,
)

N_TRAIN, K_NB, SIZE = 40, 4, 48


def make_data(n_train=N_TRAIN, n_test=8, seed=0) -> FERData:
    rng = np.random.default_rng(seed)
    n = n_train + 2 * n_test
    return FERData(
        images=rng.integers(0, 256, size=(n, SIZE, SIZE, 1), dtype=np.uint8),
        labels=rng.integers(0, 8, size=n).astype(np.int64),
        split=np.array(["train"] * n_train + ["valid"] * n_test + ["test"] * n_test),
        ids=np.array([f"img{i:03d}" for i in range(n)]), classes=CLASSES_8, name="toy")


@pytest.fixture(scope="module")
def train():
    return make_data().subset("train")


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return create_model(BackboneConfig(), 8)


def bound(train, base_model, **overrides):
    model = copy.deepcopy(base_model)
    overrides.setdefault("num_neighbors", K_NB)
    overrides.setdefault("aux", "features")
    overrides.setdefault("neighbours", "bank")
    method = create_method("ldlva", num_classes=8, num_train=len(train), feature_dim=model.feature_dim,
                           **overrides)
    method.bind(model, train, TrainConfig(image_size=train.images.shape[1]))
    model.train()
    return model, method


def batch_of(train, idx, seed=0) -> dict:
    idx = torch.as_tensor(idx)
    x, affine = augment_batch(torch.from_numpy(train.images)[idx], SIZE, AugmentConfig(),
                              torch.Generator().manual_seed(seed))
    return {"image": x, "affine": affine, "index": idx, "label": torch.from_numpy(train.labels)[idx]}


# --------------------------------------------------------------------------- equations
def test_targets_are_distributions():
    g = torch.Generator().manual_seed(0)
    prob_nb = torch.softmax(torch.randn(6, 4, 8, generator=g), -1)
    sim = local_similarity(torch.rand(6, 4, generator=g) * 3)
    calib = torch.rand(6, 4, generator=g) * 0.8 + 0.2
    d = aggregate_neighbours(prob_nb, sim, calib)
    t = target_distribution(torch.arange(6), d, torch.rand(6, generator=g))
    for dist in (d, t):
        assert (dist >= 0).all()
        torch.testing.assert_close(dist.sum(1), torch.ones(6))
    assert ((sim > 0) & (sim <= 1)).all()
    torch.testing.assert_close(target_distribution(torch.arange(6), d, torch.ones(6)), torch.eye(8)[:6])


def test_calibration_clamp():
    net = CalibrationNet(16)
    with torch.no_grad():
        net.net[-1].bias.fill_(-50.0)
    score = calibration_score(net, torch.randn(5, 16), torch.randn(5, 3, 16), clamp=-1.3)
    assert score.shape == (5, 3)
    assert (score >= torch.sigmoid(torch.tensor(-1.3)) - 1e-6).all() and (score < 1).all()
    torch.testing.assert_close(score, torch.full((5, 3), float(torch.sigmoid(torch.tensor(-1.3)))))


def test_center_loss_pulls_and_repulsion_decreases_with_separation():
    centers = torch.randn(3, 8)
    label = torch.tensor([0, 1, 2, 1])
    weight = torch.ones(4)
    at_centers = center_loss(centers[label], label, centers, weight)
    away = center_loss(centers[label] + 1.0, label, centers, weight)
    assert at_centers == 0 and away > 0
    x = centers[label] + 1.0
    moved = center_pull(centers, x, label, weight, lr=0.5)
    assert center_loss(x, label, moved, weight) < center_loss(x, label, centers, weight)
    base = torch.randn(3, 8)
    energies = [float(center_repulsion(base * s)) for s in (0.1, 1.0, 3.0, 10.0)]
    assert all(a > b for a, b in zip(energies, energies[1:]))
    pushed = center_push(base, lr=0.5, scale=0.1)
    assert center_repulsion(pushed) < center_repulsion(base)
    assert torch.isfinite(center_push(torch.zeros(3, 8))).all()  # all centers start at 0


def test_center_pull_matches_the_official_formula():
    centers, x = torch.zeros(2, 3), torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0]])
    label, weight = torch.tensor([0, 0, 1]), torch.tensor([1.0, 0.5, 1.0])
    out = center_pull(centers, x, label, weight, lr=0.5)
    # c_0 += 0.5 * (1*1 + 0.5*3) / ((2 + 1) * 3);  c_1 += 0.5 * 2 / ((1 + 1) * 3)
    torch.testing.assert_close(out, torch.tensor([[0.5 * 2.5 / 9, 0, 0], [0, 0.5 * 2 / 6, 0]]))


def test_balanced_class_weights():
    w = balanced_class_weights(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(w, [4 / 6, 2.0, 1.0])


# --------------------------------------------------------------------------- bind
def test_bind_builds_a_knn_graph_without_self(train, base_model):
    _, method = bound(train, base_model)
    nb = method.neighbour_index.numpy()
    assert nb.shape == (N_TRAIN, K_NB) and not (nb == np.arange(N_TRAIN)[:, None]).any()
    sim = method.similarity
    assert ((sim > 0) & (sim <= 1)).all() and torch.allclose(sim.max(1).values, torch.ones(N_TRAIN))
    torch.testing.assert_close(method.bank_prob.sum(1), torch.ones(N_TRAIN))


def test_bind_reads_va_csv_with_the_official_kernel(train, base_model, tmp_path):
    va = np.random.default_rng(0).uniform(-1, 1, size=(N_TRAIN, 2)).astype(np.float32)
    pd.DataFrame({"id": train.ids, "valence": va[:, 0], "arousal": va[:, 1]}).to_csv(tmp_path / "va.csv", index=False)
    _, method = bound(train, base_model, aux=str(tmp_path / "va.csv"), neighbours="faithful")
    nb = method.neighbour_index.numpy()
    true = np.argsort(((va[:, None] - va[None]) ** 2).sum(-1) + np.diag(np.full(N_TRAIN, np.inf)), 1)[:, :K_NB]
    np.testing.assert_array_equal(np.sort(nb, 1), np.sort(true, 1))
    dist = np.abs(va[:, None] - va[nb]).sum(-1)  # 2 columns: no rescaling (official)
    expected = np.exp(-dist / 0.5) / np.exp(-dist / 0.5).max(1, keepdims=True)
    np.testing.assert_allclose(method.similarity.numpy(), expected, rtol=1e-4)


# --------------------------------------------------------------------------- steps
def test_bank_step_gradients_and_theta_sgd(train, base_model):
    model, method = bound(train, base_model)
    assert not any(p is method.theta for p in method.parameters())
    optimizer = torch.optim.Adam(list(model.parameters()) + list(method.parameters()), lr=1e-3)
    theta0 = method.theta.clone()
    idx = torch.arange(8)
    out = method.training_step(model, batch_of(train, idx))
    assert set(out) >= {"loss", "cls", "dis", "lambda"} and torch.isfinite(out["loss"])
    optimizer.zero_grad()
    out["loss"].backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.calibrator.parameters())
    optimizer.step()
    torch.testing.assert_close(method.theta, theta0)          # the main optimiser never moves theta
    method.after_step()
    lam = torch.sigmoid(method.theta)
    assert ((lam > 0) & (lam < 1)).all()
    assert (method.theta[idx] != theta0[idx]).all() and torch.equal(method.theta[8:], theta0[8:])
    assert int(method.step) == 1 and method.centers.abs().sum() > 0


def test_lambda_moves_over_steps_and_readout(train, base_model):
    model, method = bound(train, base_model, gamma=0.0)
    theta0 = method.theta.clone()
    for step in range(3):
        idx = torch.arange(8 * step, 8 * step + 8)
        out = method.training_step(model, batch_of(train, idx, seed=step))
        out["loss"].backward()
        method.after_step()
    moved = (method.theta != theta0).nonzero().flatten()
    torch.testing.assert_close(moved, torch.arange(24))
    r = method.readout()
    assert r["lambda"].shape == (N_TRAIN,) and r["target"].shape == (N_TRAIN, 8)
    np.testing.assert_allclose(r["score"], 1 - r["lambda"])
    seen = r["target"][:24]
    assert (seen >= 0).all() and np.allclose(seen.sum(1), 1, atol=1e-5)
    assert np.isnan(r["target"][24:]).all()


def test_faithful_mode_bn_and_finite_loss(train, base_model):
    model, method = bound(train, base_model, neighbours="faithful")
    counter = model.backbone.bn1.num_batches_tracked
    for bn, updates in (("train", 1), ("eval", 0)):  # official: train-mode BN, statistics updated
        method.config = dataclasses.replace(method.config, neighbour_bn=bn)
        before = counter.item()
        feat_nb, prob_nb = method._forward_neighbours(model, method.neighbour_index[:2], SIZE)
        assert counter.item() == before + updates and model.training
        assert feat_nb.shape == (2, K_NB, model.feature_dim) and prob_nb.shape == (2, K_NB, 8)
        assert not feat_nb.requires_grad
    out = method.training_step(model, batch_of(train, torch.arange(4)))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    method.after_step()
    assert torch.isfinite(method.theta).all() and int(method.step) == 1


def test_ablations_switch_their_component_off(train, base_model):
    model, method = bound(train, base_model)
    official = method.config
    step_time = {k: v for k, v in type(method).ablations.items() if "aux" not in v}  # aux is read in bind
    assert set(type(method).ablations) - set(step_time) == {"feature_space"}
    for variant, overrides in step_time.items():
        method.config = dataclasses.replace(official, **overrides)
        method.calibrator.zero_grad(set_to_none=True)
        theta0 = method.theta.clone()
        out = method.training_step(model, batch_of(train, torch.arange(4)))
        out["loss"].backward()
        method.after_step()
        assert torch.isfinite(out["loss"]), variant
        assert all(p.grad is None for p in method.calibrator.parameters()) == (variant == "no_calibration"), variant
        assert torch.equal(method.theta, theta0) == (variant == "fixed_lambda"), variant
        assert (out["loss"] == out["cls"]) == (variant == "no_discriminative"), variant


def test_registry_and_options():
    assert "ldlva" in list_methods()
    assert parse_overrides("ldlva", ["neighbours=faithful", "lamb_init=0.8"]) == {
        "neighbours": "faithful", "lamb_init": 0.8}
    with pytest.raises(ValueError, match="neighbours"):
        create_method("ldlva", num_classes=8, num_train=4, feature_dim=8, neighbours="memory")


def test_fit_end_to_end(tmp_path, base_model):
    from ferlib.engine import TrainConfig, fit
    from ferlib.rundir import RunDir

    data = make_data(n_train=16, n_test=4)
    model = copy.deepcopy(base_model)
    method = create_method("ldlva", num_classes=8, num_train=16, feature_dim=model.feature_dim, num_neighbors=3)
    cfg = TrainConfig(epochs=1, batch_size=8, progress=False, amp=False, device="cpu", eval_batch_size=64)
    summary = fit(model, method, data, cfg, RunDir(tmp_path))
    assert summary["method"] == "ldlva" and np.isfinite(summary["train_loss_last"])
    with np.load(tmp_path / "readout.npz") as z:
        assert z["method_target"].shape == (16, 8) and z["method_lambda"].shape == (16,)
    assert dataclasses.asdict(method.config)["neighbours"] == "faithful"  # the official scheme by default


def test_landmark_aux_space_on_real_faces(tmp_path, monkeypatch, base_model):
    """The default auxiliary space: dlib landmarks of real sample faces, neighbours by face geometry."""
    from ferlib.data import load_dataset

    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path))
    data = load_dataset("ferplus", Path(__file__).parents[1] / "data" / "ferplus_sample", mode="plurality")
    train = data.subset("train").select(np.arange(40))
    model, method = bound(train, base_model, aux="landmarks:dlib")
    nb = method.neighbour_index.numpy()
    assert nb.shape == (40, K_NB) and not (nb == np.arange(40)[:, None]).any()
    assert len({tuple(sorted(r)) for r in nb}) > 10  # not one shared neighbourhood: geometry differs per face


# --------------------------------------------------------------------------- the auxiliary source
def test_a_bad_aux_source_fails_when_the_config_is_built():
    """Before any data loads: the message names the parameter and lists the valid sources."""
    from ferlib.experiment import RunSpec
    from ferlib.methods import method_config

    valid = r"valid: affectnet\[:<root>\], csv:<path>, features, file:<path>, landmarks\[:<backend>\]"
    with pytest.raises(ValueError, match=r"LDLVAConfig\.aux: unknown aux source 'landmark' in 'landmark:dlib'; " + valid):
        method_config("ldlva", aux="landmark:dlib")
    with pytest.raises(ValueError, match=r"LDLVAConfig\.aux: unknown aux source 'vibes'.*" + valid):
        RunSpec(data="/nonexistent/data", method="ldlva", method_options={"aux": "vibes"})
    with pytest.raises(ValueError, match=r"LDLVAConfig\.aux: 'landmarks:hrnet': unknown landmark backend 'hrnet'"):
        method_config("ldlva", aux="landmarks:hrnet")
    with pytest.raises(ValueError, match=r"LDLVAConfig\.aux: 'oracle_votes' is an ORACLE source"):
        method_config("ldlva", aux="oracle_votes")
    with pytest.raises(ValueError, match=r"LDLVAConfig\.aux: aux source 'csv' needs its path"):
        method_config("ldlva", aux="csv")
    for spec in ("landmarks", "landmarks:mediapipe", "features", "va.npy", "file:va.csv", "onnx:m.onnx",
                 "affectnet:/data/affectnet"):
        assert method_config("ldlva", aux=spec).aux == spec  # only checked, nothing read yet


def test_a_new_aux_source_is_one_registered_function(monkeypatch, train, base_model):
    """Registered once, it is listed, LDLVA builds its neighbours from it and the data-preparation view shows it."""
    from ferlib import va
    from ferlib.analysis.dataprep import va_values

    monkeypatch.setattr(va._AUX_SOURCES, "_entries", dict(va._AUX_SOURCES._entries))  # forgotten after the test

    @va.register_aux_source("id_point")
    def _id_point(data, arg):
        """A point in the plane drawn from each sample's id."""
        return np.stack([np.random.default_rng(int(i[3:])).normal(size=2) for i in data.ids]).astype(np.float32)

    assert "id_point" in va.list_aux_sources() and "id_point" in va.aux_source_help()
    _, method = bound(train, base_model, aux="id_point")
    points = _id_point(train, None)
    dist = ((points[:, None] - points[None]) ** 2).sum(-1) + np.diag(np.full(len(train), np.inf))
    np.testing.assert_array_equal(np.sort(method.neighbour_index.numpy(), 1), np.sort(np.argsort(dist, 1)[:, :K_NB], 1))
    values, labels, message = va_values(make_data(), "id_point")
    np.testing.assert_array_equal(values, points)
    np.testing.assert_array_equal(labels, train.labels)
    assert message == "A point in the plane drawn from each sample's id (id_point)"
