"""Tests of ferlib.methods.rul: RUL's equations against numpy translations of the official code
(``zyh-uaiaaaa/Relative-Uncertainty-Learning@63b73f2``; the ``ref_*`` functions never import ferlib), the seeded
partner permutation, inference on the plain model with ce's parameter count, and the relabel option (SCN's rule,
shared with ``scn``)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ferlib.backbones import BackboneConfig, create_model
from ferlib.engine import TrainConfig
from ferlib.experiment import RunSpec, build, prepare_data, run
from ferlib.methods import create_method
from ferlib.methods import relabel as shared_relabel
from ferlib.methods import rul as rul_module
from ferlib.methods import scn as scn_module
from ferlib.methods.rul import RULConfig, add_up_loss, mean_path, uncertainty_mixup, uncertainty_value

from stubs import RecordingDropout, StubModel as Stub, TrainLabels as Train, RunConfig as Cfg

TOL = 1e-6
TINY = BackboneConfig(model_kwargs={"channels": [8, 16, 32, 64], "stem_width": 8})


# =========================================================================== numpy translations of the code
def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_ce(logits: np.ndarray, y: np.ndarray) -> float:
    """nn.CrossEntropyLoss() (batch mean), as src/main.py:100."""
    return -np.log(np_softmax(logits))[np.arange(len(y)), y].mean()


def ref_uncertainty(logvar: np.ndarray) -> np.ndarray:
    """official: zyh-uaiaaaa/Relative-Uncertainty-Learning@63b73f2 src/rul.py:46 (logvar.exp().mean(dim=1))."""
    return np.exp(logvar).mean(1)


def ref_mixup(x: np.ndarray, att: np.ndarray, index: np.ndarray):
    """official: src/utils.py:30-40 (att1 = att / (att + att[index]); att2 = att[index] / (att + att[index]);
    mixed_x = att1 * x + att2 * x[index, :]); att is (B, 1) there."""
    att = att[:, None]
    att1 = att / (att + att[index])
    att2 = att[index] / (att + att[index])
    return att1 * x + att2 * x[index, :], att1[:, 0], att2[:, 0]


def ref_add_up(pred: np.ndarray, y_a: np.ndarray, y_b: np.ndarray) -> float:
    """official: src/utils.py:43-44 (0.5 * criterion(pred, y_a) + 0.5 * criterion(pred, y_b))."""
    return 0.5 * np_ce(pred, y_a) + 0.5 * np_ce(pred, y_b)


def ref_batchnorm_train(x: np.ndarray, eps: float, gamma=None, beta=None) -> np.ndarray:
    """nn.BatchNorm1d in training mode: batch mean and biased variance (src/rul.py:33, 37, eps 2e-5)."""
    out = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
    return out if gamma is None else out * gamma + beta


def ref_logvar_head(x: np.ndarray, w: np.ndarray, b: np.ndarray, gamma, beta, eps: float = 2e-5,
                    mask=None) -> np.ndarray:
    """official: src/rul.py:32-37 (BatchNorm2d(512, affine=False) -> Dropout -> Flatten -> Linear(512 * 7 * 7, 64)
    -> BatchNorm1d) on the (B, C, h, w) map, as src/rul.py:42-44 (ferlib's ``logvar_input="map"``); on ferlib's
    pooled (B, D) features (its default, a DEPARTURE) the same with a BatchNorm1d. ``mask``: the dropout's
    inverted mask (None: no dropout)."""
    axes = (0,) + tuple(range(2, x.ndim))        # BatchNorm's batch statistics: over N (and h, w), biased
    normed = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)
    dropped = normed if mask is None else normed * mask
    return ref_batchnorm_train(dropped.reshape(len(x), -1) @ w.T + b, eps, gamma, beta)


# =========================================================================== helpers
def make_rul(num_train: int, dim: int, classes: int, **overrides):
    return create_method("rul", num_classes=classes, num_train=num_train, feature_dim=dim, **overrides)


def d(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def expected_step(head_input: np.ndarray, mu: np.ndarray, method, model, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The code's add-up loss and u for ``method``'s latest step (src/rul.py:42-46, src/utils.py:30-44), from the
    log-variance head's input, the mean features mu, the step's partners and the head's weights and recorded
    dropout mask (none for an nn.Dropout, which the callers leave at p = 0)."""
    lin, bn, drop = method.logvar[2], method.logvar[3], method.logvar[1]
    mask = drop.masks[0] if isinstance(drop, RecordingDropout) else None
    u = ref_uncertainty(ref_logvar_head(head_input, d(lin.weight), d(lin.bias), d(bn.weight), d(bn.bias),
                                        mask=mask))
    perm = method.last_perm.numpy()
    mixed, _, _ = ref_mixup(mu, u, perm)
    return ref_add_up(mixed @ d(model.head.weight).T + d(model.head.bias), y, y[perm]), u


# =========================================================================== equations
def test_uncertainty_mixup_and_add_up_loss_match_the_code():
    rng = np.random.default_rng(0)
    b, dim, k = 9, 5, 4
    logvar, mu = rng.normal(0, 1, (b, 7)), rng.normal(0, 1, (b, dim))
    index, y = rng.permutation(b), rng.integers(0, k, b)
    u = uncertainty_value(torch.tensor(logvar))
    np.testing.assert_allclose(d(u), ref_uncertainty(logvar), rtol=TOL, atol=TOL)
    mixed, w_i, w_j = uncertainty_mixup(torch.tensor(mu), u.double(), torch.tensor(index))
    ref_mixed, att1, att2 = ref_mixup(mu, ref_uncertainty(logvar), index)
    np.testing.assert_allclose(d(mixed), ref_mixed, atol=TOL)
    np.testing.assert_allclose(d(w_i), att1, atol=TOL)
    np.testing.assert_allclose(d(w_j), att2, atol=TOL)
    logits = rng.normal(0, 2, (b, k))
    got = add_up_loss(torch.tensor(logits), torch.tensor(y), torch.tensor(y[index]))
    assert got.item() == pytest.approx(ref_add_up(logits, y, y[index]), abs=TOL)
    # A sample paired with itself keeps its own features.
    same, _, _ = uncertainty_mixup(torch.tensor(mu), u.double(), torch.arange(b))
    np.testing.assert_allclose(d(same), mu, atol=TOL)


def test_training_step_matches_the_code():
    """With dropout ON (recorded masks) in the model and in the log-variance head: the head reads the features
    before the model's dropout, and drops out after its first batch norm (src/rul.py:32-37); mu is the model's
    dropped-out features (ferlib's mean path)."""
    torch.manual_seed(0)
    b, dim, k = 10, 6, 4
    model, method = Stub(dim, k), make_rul(b, dim, k, logvar_dim=3)
    labels = torch.randint(0, k, (b,))
    method.bind(model, Train(labels.numpy()), Cfg(seed=7))
    model.dropout, method.logvar[1] = RecordingDropout(0.5, seed=1), RecordingDropout(0.4, seed=2)
    with torch.no_grad():  # non-trivial affine of the last batch norm
        method.logvar[3].weight.uniform_(0.5, 1.5)
        method.logvar[3].bias.uniform_(-0.5, 0.5)
    x = torch.randn(b, dim)
    out = method.training_step(model, {"image": x, "index": torch.arange(b), "label": labels})
    perm = method.last_perm.numpy()
    assert sorted(perm) == list(range(b)) and (perm != np.arange(b)).any()
    assert len(model.dropout.masks) == 1 and len(method.logvar[1].masks) == 1
    mu = d(x) * model.dropout.masks[0]
    y = labels.numpy()
    loss, u = expected_step(d(x), mu, method, model, y)
    assert out["loss"].item() == pytest.approx(loss, abs=TOL)
    assert out["u"].item() == pytest.approx(u.mean(), rel=TOL)
    readout = method.readout()
    np.testing.assert_allclose(readout.score, u, rtol=1e-5)                # score = u
    plain = mu @ d(model.head.weight).T + d(model.head.bias)               # recorded: the un-mixed mean path
    np.testing.assert_allclose(readout.loss, -np.log(np_softmax(plain))[np.arange(b), y], atol=1e-5)


@pytest.mark.slow
def test_the_codes_log_variance_head_on_the_feature_map():
    """``logvar_input="map"``: the code's head on the last feature map (src/rul.py:32-37, 42-44), sized at bind
    for the run's images; mu stays the model's pooled features after its dropout."""
    b, k = 12, 4
    torch.manual_seed(0)
    model = create_model(TINY, k)
    method = make_rul(b, model.feature_dim, k, logvar_input="map", logvar_dim=5)
    labels = torch.arange(b) % k
    method.bind(model, Train(labels.numpy()), TrainConfig(image_size=64, seed=3))
    lin = method.logvar[2]
    assert lin.in_features == model.feature_dim * 2 * 2                    # 64 px: a 2 x 2 map
    model.dropout, method.logvar[1] = RecordingDropout(0.5, seed=1), RecordingDropout(0.4, seed=2)
    x = torch.randn(b, 1, 64, 64)
    out = method.training_step(model, {"image": x, "index": torch.arange(b), "label": labels})
    with torch.no_grad():
        fmap = d(model.backbone.forward_features(x))                        # batch statistics: the same maps
    mu = fmap.mean((2, 3)) * model.dropout.masks[0]
    loss, u = expected_step(fmap, mu, method, model, labels.numpy())
    assert out["loss"].item() == pytest.approx(loss, abs=TOL)
    np.testing.assert_allclose(method.readout().score, u, rtol=1e-5)
    with pytest.raises(ValueError, match="logvar_input"):
        RULConfig(logvar_input="flat")


def test_gradient_reaches_the_log_variance_head_only_through_the_mixing_weights():
    torch.manual_seed(0)
    model, method = Stub(6, 3), make_rul(8, 6, 3)
    method.bind(model, Train(np.arange(8) % 3), Cfg())
    out = method.training_step(model, {"image": torch.randn(8, 6), "index": torch.arange(8),
                                       "label": torch.arange(8) % 3})
    out["loss"].backward()
    assert method.logvar[2].weight.grad.abs().sum() > 0
    plain = make_rul(8, 6, 3, uncertainty=False)   # the no_uncertainty ablation: weights 1/2, no head at all
    assert plain.logvar is None and not list(plain.parameters())


def test_partner_permutation_is_seeded_by_the_run_seed_and_the_step():
    method = make_rul(4, 6, 3)
    method.bind(Stub(6, 3), Train([0, 1, 2, 0]), Cfg(seed=3))
    first = method.permutation(64, torch.device("cpu"))
    assert torch.equal(first, method.permutation(64, torch.device("cpu")))   # a function of (seed, step)
    method.step += 1
    assert not torch.equal(first, method.permutation(64, torch.device("cpu")))
    other = make_rul(4, 6, 3)
    other.bind(Stub(6, 3), Train([0, 1, 2, 0]), Cfg(seed=4))
    assert not torch.equal(first, other.permutation(64, torch.device("cpu")))
    assert "step" in method.state_dict()  # checkpointed: a resumed run draws the same partners


# =========================================================================== inference = the plain model
def test_mean_path_is_the_plain_model_in_eval_mode():
    torch.manual_seed(0)
    model = create_model(TINY, 5).eval()
    x = torch.randn(3, 1, 32, 32)
    _, mu = mean_path(model, x)
    assert torch.equal(model.head(mu), model(x))


def test_inference_uses_the_plain_model_with_ces_parameter_count(small_ferplus, tmp_path):
    spec = RunSpec(data=str(small_ferplus), noise="symmetric:0.3", method="rul", backbone=TINY, out=str(tmp_path),
                   train=TrainConfig(epochs=1, batch_size=16, image_size=32, progress=False, device="cpu",
                                     eval_batch_size=64))
    data, _ = prepare_data(spec)
    model_rul, method = build(spec, data)
    model_ce, _ = build(dataclasses.replace(spec, method="ce"), data)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model_rul) == count(model_ce) and model_rul.state_dict().keys() == model_ce.state_dict().keys()
    assert count(method) > 0  # the log-variance head lives in the method, trained, never in the model
    result = run(spec)
    weights = torch.load(tmp_path / result["run_id"] / "model.pt")
    plain = create_model(TINY, data.num_classes)
    plain.load_state_dict(weights)          # strict: the saved model is exactly a plain backbone + classifier


# =========================================================================== the relabel option
def test_relabel_option_uses_scns_rule_on_the_mean_path_prediction():
    assert rul_module.RelabelState is scn_module.RelabelState is shared_relabel.RelabelState  # one implementation
    torch.manual_seed(0)
    b, dim, k = 12, 5, 3
    model, method = Stub(dim, k), make_rul(b, dim, k, relabel=True, relabel_epoch=2, logvar_dropout=0.0)
    given = np.arange(b) % k
    method.bind(model, Train(given), Cfg(epochs=4))
    x = 3 * torch.randn(b, dim)
    batch = {"image": x, "index": torch.arange(b), "label": torch.tensor(given)}
    method.on_epoch_start(0, 4)
    method.training_step(model, batch)
    np.testing.assert_array_equal(method.readout()["label"], given)         # before the relabel epoch
    method.on_epoch_start(1, 4)
    out = method.training_step(model, batch)
    probs = np_softmax(d(model.head(x)))                                   # un-mixed mean-path prediction
    gap = probs.max(1) - probs[np.arange(b), given]
    expected = np.where(gap > 0.2, probs.argmax(1), given)
    readout = method.readout()
    assert 0 < out["relabelled"].item() == (expected != given).sum()
    np.testing.assert_array_equal(readout["label"], expected)
    np.testing.assert_array_equal(readout["relabel_epoch"], np.where(expected != given, 2, 0))
    np.testing.assert_allclose(readout["relabel_gap"], gap, atol=1e-6)
    # The next step's add-up loss uses the relabelled labels (and the given ones stay in the batch).
    method.on_epoch_start(2, 4)
    out = method.training_step(model, batch)
    assert out["loss"].item() == pytest.approx(expected_step(d(x), d(x), method, model, expected)[0], abs=TOL)
    assert not (make_rul(b, dim, k).readout().keys() >= {"label", "label_history"})  # plain rul: no audit


def test_low_group_relabel_ranks_by_uncertainty():
    torch.manual_seed(0)
    b, dim, k = 10, 5, 3
    model, method = Stub(dim, k), make_rul(b, dim, k, relabel=True, relabel_epoch=1, relabel_group="low",
                                           margin_2=0.0)
    given = np.arange(b) % k
    method.bind(model, Train(given), Cfg(epochs=2))
    method.on_epoch_start(0, 2)
    method.training_step(model, {"image": 3 * torch.randn(b, dim), "index": torch.arange(b),
                                 "label": torch.tensor(given)})
    readout = method.readout()
    moved = np.flatnonzero(readout["label"] != given)
    top_u = np.argsort(-readout["uncertainty"], kind="stable")[:b - int(b * 0.7)]
    assert len(moved) and set(moved) <= set(top_u)
    with pytest.raises(ValueError, match="uncertainty=True"):
        RULConfig(relabel_group="low", uncertainty=False)


def test_paper_recipe_has_the_codes_values_and_names_the_classifier_lr_it_cannot_carry():
    from ferlib.recipes import paper_recipe, resolve_recipe

    r = resolve_recipe("rul", "paper", TrainConfig(image_size=48))
    assert (r.optimizer, r.lr, r.weight_decay, r.scheduler, r.gamma, r.batch_size, r.epochs) == \
        ("adam", 2e-4, 1e-4, "exponential", 0.9, 64, 60)          # src/main.py:28-29, 77-80
    assert "10x learning rate" in paper_recipe("rul").unmatched
