"""Tests of ferlib.methods.scn and the shared relabel module: SCN's equations against numpy translations of the
official code (``kaiwang960112/Self-Cure-Network@9f4c3ad``, ``src/train.py``; the ``ref_*`` functions never import
ferlib), the relabel rule in both group modes, the relabel audit, resume of the relabelled labels, the read-out."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ferlib.methods import create_method, parse_overrides
from ferlib.analysis import relabel_summary
from ferlib.methods.relabel import RelabelState, relabel_events, relabel_mask, split_groups
from ferlib.methods.scn import SCNConfig, importance_weight, rank_regularization

from stubs import tiny_run_spec, StubModel as Stub, TrainLabels as Train, RunConfig as Cfg

TOL = 1e-6


# =========================================================================== numpy translations of the code
def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ref_rank_regularization(alpha: np.ndarray, beta: float, margin: float) -> float:
    """official: kaiwang960112/Self-Cure-Network@9f4c3ad src/train.py:218-237 (tops = int(batch_sz * beta); the
    tops largest alpha and the batch_sz - tops smallest; diff = low_mean - high_mean + margin_1, kept if > 0)."""
    b = len(alpha)
    tops = int(b * beta)
    ordered = np.sort(alpha)
    high, low = ordered[b - tops:], ordered[:b - tops]
    diff = low.mean() - high.mean() + margin
    return diff if diff > 0 else 0.0


def ref_scn_forward(features, w_fc, b_fc, w_att, b_att):
    """official: src/train.py:92, 101-102 (attention_weights = sigmoid(Linear(512, 1)(x)); out = attention * fc(x))."""
    alpha = 1.0 / (1.0 + np.exp(-(features @ w_att.T + b_att)))        # (B, 1)
    return alpha[:, 0], alpha * (features @ w_fc.T + b_fc)


def ref_scn_loss(features, w_fc, b_fc, w_att, b_att, targets, beta, margin_1) -> tuple[float, float]:
    """official: src/train.py:240, criterion(outputs, targets) + RR_loss (CrossEntropyLoss, batch mean)."""
    alpha, out = ref_scn_forward(features, w_fc, b_fc, w_att, b_att)
    logp = np.log(np_softmax(out))
    ce = -logp[np.arange(len(targets)), targets].mean()
    return ce, ref_rank_regularization(alpha, beta, margin_1)


def ref_relabel(outputs, targets, indexes, dataset_labels, margin_2, low_group=None) -> np.ndarray:
    """official: src/train.py:250-258 (sm = softmax(outputs); Pmax, predicted = max(sm); Pgt = sm[target];
    relabel where Pmax - Pgt > margin_2, in train_loader.dataset.label). ``low_group``: the paper's restriction
    (the maintainer's fix, SCN issues #33 / #83), the batch positions of the low-importance group."""
    sm = np_softmax(outputs)
    pmax, pred = sm.max(1), sm.argmax(1)
    pgt = sm[np.arange(len(targets)), targets]
    update = pmax - pgt > margin_2
    if low_group is not None:
        update &= np.isin(np.arange(len(targets)), low_group)
    labels = dataset_labels.copy()
    labels[indexes[update]] = pred[update]
    return labels


def ref_low_group(alpha: np.ndarray, beta: float) -> np.ndarray:
    """official: src/train.py:218, 225 (down_idx: the batch_sz - tops smallest alpha)."""
    b = len(alpha)
    return np.argsort(alpha, kind="stable")[:b - int(b * beta)]


# =========================================================================== helpers
def make_scn(num_train: int, dim: int, classes: int, **overrides):
    return create_method("scn", num_classes=classes, num_train=num_train, feature_dim=dim, **overrides)


def np_params(module: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    return module.weight.detach().double().numpy(), module.bias.detach().double().numpy()


# =========================================================================== equations
@pytest.mark.parametrize("b", [2, 3, 7, 16, 64])
@pytest.mark.parametrize("margin", [0.0, 0.07, 0.15, 0.6])
def test_rank_regularization_matches_the_code(b, margin):
    rng = np.random.default_rng(b)
    for alpha in (rng.uniform(0, 1, b), np.round(rng.uniform(0.4, 0.6, b), 1)):  # the second with ties
        got = rank_regularization(torch.tensor(alpha), beta=0.7, margin=margin)
        assert got.item() == pytest.approx(ref_rank_regularization(alpha, 0.7, margin), abs=TOL)


def test_rank_regularization_gradient_and_margin_zero():
    alpha = torch.tensor([0.9, 0.2, 0.55, 0.6, 0.1, 0.8, 0.3, 0.45, 0.5, 0.52], dtype=torch.float64,
                         requires_grad=True)
    rank_regularization(alpha, beta=0.7, margin=0.6).backward()
    high = np.argsort(-alpha.detach().numpy(), kind="stable")[:7]
    expected = np.full(10, 1 / 3)   # d/d alpha of low_mean - high_mean: +1/3 on the low group, -1/7 on the high
    expected[high] = -1 / 7
    np.testing.assert_allclose(alpha.grad.numpy(), expected, atol=TOL)
    # delta_1 = 0 switches the term off (the no_rank_reg ablation): mean_H >= mean_L always.
    rng = np.random.default_rng(0)
    assert all(rank_regularization(torch.tensor(rng.uniform(0, 1, 9)), beta=0.7, margin=0.0) == 0 for _ in range(20))


def test_groups_partition_the_batch_like_the_codes_topk():
    alpha = torch.tensor([0.3, 0.9, 0.3, 0.1, 0.7, 0.3])
    high, low = split_groups(alpha, 0.7)                     # int(6 * 0.7) = 4 high, 2 low
    assert sorted(high.tolist() + low.tolist()) == list(range(6))
    assert sorted(alpha[low].tolist()) == sorted(torch.topk(alpha, 2, largest=False).values.tolist())
    assert sorted(alpha[high].tolist()) == sorted(torch.topk(alpha, 4).values.tolist())


def test_training_step_loss_matches_the_code():
    torch.manual_seed(0)
    b, d, k = 12, 6, 4
    model, method = Stub(d, k), make_scn(b, d, k, margin_1=0.5)
    labels = torch.randint(0, k, (b,))
    method.bind(model, Train(labels.numpy()), Cfg())
    x = torch.randn(b, d)
    out = method.training_step(model, {"image": x, "index": torch.arange(b), "label": labels})
    (w_fc, b_fc), (w_att, b_att) = np_params(model.head), np_params(method.attention)
    ce, rr = ref_scn_loss(x.double().numpy(), w_fc, b_fc, w_att, b_att, labels.numpy(), 0.7, 0.5)
    assert rr > 0
    assert out["ce"].item() == pytest.approx(ce, abs=TOL)
    assert out["rr"].item() == pytest.approx(rr, abs=TOL)
    assert out["loss"].item() == pytest.approx(ce + rr, abs=TOL)
    alpha, _ = ref_scn_forward(x.double().numpy(), w_fc, b_fc, w_att, b_att)
    np.testing.assert_allclose(importance_weight(x, method.attention).detach().numpy(), alpha, atol=TOL)
    # The read-outs: score = 1 - alpha; loss and margin of the PLAIN logits (no alpha) on the given label.
    readout = method.readout()
    np.testing.assert_allclose(readout.score, 1 - alpha, atol=TOL)
    plain = x.double().numpy() @ w_fc.T + b_fc
    given = plain[np.arange(b), labels.numpy()]
    other = np.where(np.eye(k, dtype=bool)[labels.numpy()], -np.inf, plain).max(1)
    np.testing.assert_allclose(readout.margin, given - other, atol=1e-5)


def test_rank_loss_gradient_reaches_the_attention_module():
    """The code back-propagates RR_loss into the attention FC (src/train.py:236-240: alpha is not detached, loss =
    criterion + RR_loss): the rank term alone gives w and b the gradient d L_RR / d alpha * alpha (1 - alpha) * f."""
    torch.manual_seed(0)
    b, d, k = 10, 6, 4
    model, method = Stub(d, k), make_scn(b, d, k, margin_1=0.9)
    labels = torch.randint(0, k, (b,))
    method.bind(model, Train(labels.numpy()), Cfg())
    x = torch.randn(b, d)
    out = method.training_step(model, {"image": x, "index": torch.arange(b), "label": labels})
    grad_w, grad_b = torch.autograd.grad(out["rr"], [method.attention.weight, method.attention.bias])
    w_att, b_att = np_params(method.attention)
    alpha, _ = ref_scn_forward(x.double().numpy(), *np_params(model.head), w_att, b_att)
    assert ref_rank_regularization(alpha, 0.7, 0.9) > 0
    low = ref_low_group(alpha, 0.7)
    d_alpha = np.full(b, -1 / int(b * 0.7))                 # d(low_mean - high_mean) / d alpha
    d_alpha[low] = 1 / len(low)
    d_logit = d_alpha * alpha * (1 - alpha)
    np.testing.assert_allclose(grad_w.numpy()[0], d_logit @ x.double().numpy(), atol=1e-5)
    assert grad_b.item() == pytest.approx(d_logit.sum(), abs=1e-5)
    assert np.abs(d_logit).sum() > 1e-2


def test_evaluation_predicts_the_codes_alpha_scaled_class():
    """The code tests on alpha * z (src/train.py:272); ferlib's evaluation (``engine.predict``) runs the plain
    model, z = head(embed(x)), without SCN's attention. alpha = sigmoid(.) > 0, so both give the same class (hence
    accuracy, F1, confusion); only the code's logged test loss differs."""
    from ferlib.backbones import BackboneConfig, create_model
    from ferlib.engine import TrainConfig, predict

    from stubs import synthetic

    torch.manual_seed(1)
    data = synthetic(n_train=64, n_eval=0, k=4)
    model = create_model(BackboneConfig(model_kwargs={"channels": [8, 16, 32, 64], "stem_width": 8}), 4)
    method = make_scn(64, model.feature_dim, 4)
    cfg = TrainConfig(image_size=24, amp=False, channels_last=False, eval_batch_size=16)
    logits, features = predict(model, data.images, cfg, torch.device("cpu"), features=True)
    f = torch.from_numpy(features).double()
    with torch.no_grad():                                   # alpha spread over (0, 1)
        pre = method.attention(f.float())[:, 0]
        method.attention.weight.mul_(10 / pre.std())
        method.attention.bias.copy_(-10 * (pre.median() - method.attention.bias) / pre.std())
    z = f @ model.head.weight.detach().double().T + model.head.bias.detach().double()
    np.testing.assert_allclose(logits, z.numpy(), atol=1e-5)              # the plain model: no alpha
    alpha = importance_weight(f.float(), method.attention).detach().double()
    assert alpha.min() < 0.2 and alpha.max() > 0.8
    np.testing.assert_array_equal(logits.argmax(1), (alpha[:, None] * z).argmax(1).numpy())


# =========================================================================== the relabel rule
def test_relabel_rule_matches_the_code_in_both_group_modes():
    rng = np.random.default_rng(3)
    b, k = 32, 5
    outputs = rng.normal(0, 2, (b, k))
    targets = rng.integers(0, k, b)
    alpha = rng.uniform(0, 1, b)
    indexes = rng.permutation(100)[:b]
    dataset = rng.integers(0, k, 100)
    dataset[indexes] = targets
    probs = torch.softmax(torch.tensor(outputs), 1)
    for low in (None, ref_low_group(alpha, 0.7)):
        eligible = None
        if low is not None:
            eligible = torch.zeros(b, dtype=torch.bool)
            eligible[split_groups(torch.tensor(alpha), 0.7)[1]] = True
        mask, pred = relabel_mask(probs, torch.tensor(targets), margin=0.2, eligible=eligible)
        got = dataset.copy()
        got[indexes[mask.numpy()]] = pred[mask].numpy()
        expected = ref_relabel(outputs, targets, indexes, dataset, 0.2, low)
        np.testing.assert_array_equal(got, expected)
        assert 0 < (got != dataset).sum() < b
    # Strictly greater than the margin; a sample whose prediction is its label never moves.
    probs = torch.tensor([[0.50, 0.31, 0.19], [0.50, 0.29, 0.21], [0.9, 0.05, 0.05]])
    mask, pred = relabel_mask(probs, torch.tensor([1, 1, 0]), margin=0.2)
    assert mask.tolist() == [False, True, False] and pred.tolist() == [0, 0, 0]


def _controlled_batch(k: int = 4):
    """Eight samples whose plain logits put 30 on class ``pred`` and whose alpha = sigmoid(10 * a): features
    [30 * onehot(pred), a]; the head reads the first k features, the attention the last."""
    pred = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    given = np.array([0, 2, 2, 1, 3, 1, 0, 0])      # samples 1, 3, 4, 6, 7 disagree with their prediction
    a = np.array([0.3, 0.25, 0.2, -0.3, -0.25, 0.1, -0.2, 0.15])
    return _features(30.0 * np.eye(k)[pred], a), pred, given, a


def _features(logits: np.ndarray, a: np.ndarray) -> torch.Tensor:
    """Features whose plain logits (through :func:`_controlled_scn`'s head) are ``logits`` and alpha sigmoid(10 a)."""
    return torch.tensor(np.concatenate([logits, a[:, None]], 1), dtype=torch.float32)


def _alpha(a: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-10 * a.astype(np.float32)))


def _controlled_scn(given, k: int = 4, epochs: int = 5, **overrides):
    model, method = Stub(k + 1, k), make_scn(len(given), k + 1, k, **overrides)
    with torch.no_grad():
        model.head.weight.copy_(torch.cat([torch.eye(k), torch.zeros(k, 1)], 1))
        model.head.bias.zero_()
        method.attention.weight.copy_(torch.tensor([[0.0] * k + [10.0]]))
        method.attention.bias.zero_()
    method.bind(model, Train(given), Cfg(epochs))
    return model, method


@pytest.mark.parametrize("group", ["all", "low"])
def test_relabel_audit_records_every_change_from_the_relabel_epoch(group):
    k, epochs = 4, 5
    x, pred, given, a = _controlled_batch(k)
    model, method = _controlled_scn(given, k, epochs, relabel_epoch=3, relabel_group=group)
    # The expected relabels, from the code's rule on alpha * z (numpy).
    alpha = _alpha(a)
    outputs = alpha[:, None] * 30.0 * np.eye(k)[pred]
    low = ref_low_group(alpha, 0.7) if group == "low" else None
    after = ref_relabel(outputs, given, np.arange(8), given, 0.2, low)
    changed = np.flatnonzero(after != given)
    assert len(changed) == (5 if group == "all" else 3)     # low group: the 8 - int(5.6) = 3 smallest alpha
    batch = {"image": x, "index": torch.arange(8), "label": torch.tensor(given)}
    for epoch in range(epochs):
        method.on_epoch_start(epoch, epochs)
        out = method.training_step(model, batch)
        assert out["relabelled"].item() == (len(changed) if epoch == 2 else 0)  # 1-based epoch 3 only: then agreed
    readout = method.readout()
    np.testing.assert_array_equal(readout["label"], after)
    np.testing.assert_array_equal(readout["relabel_count"], (after != given).astype(int))
    np.testing.assert_array_equal(readout["relabel_epoch"], np.where(after != given, 3, 0))
    np.testing.assert_array_equal(readout["label_before"], np.where(after != given, given, -1))
    history = readout["label_history"]
    assert history.shape == (8, epochs)
    np.testing.assert_array_equal(history[:, :2], np.repeat(given[:, None], 2, 1))
    np.testing.assert_array_equal(history[:, 2:], np.repeat(after[:, None], 3, 1))
    events = relabel_events(history, given)
    np.testing.assert_array_equal(events["index"], changed)
    np.testing.assert_array_equal(events["epoch"], np.full(len(changed), 3))
    np.testing.assert_array_equal(events["old"], given[changed])
    np.testing.assert_array_equal(events["new"], pred[changed])
    # Precision against clean labels: say the prediction is right for samples 1 and 4 only.
    clean = given.copy()
    clean[[1, 4]] = pred[[1, 4]]
    summary = relabel_summary(readout["label"], given, clean)
    fixed = len({1, 4} & set(changed))
    assert summary["relabelled"] == len(changed) and summary["fixed"] == fixed
    assert summary["broken"] == len(changed) - fixed and summary["precision"] == pytest.approx(fixed / len(changed))
    assert summary["recall"] == pytest.approx(fixed / 2)


def test_relabel_evidence_is_the_alpha_scaled_prediction():
    """The code relabels from softmax of its outputs, alpha * z (src/train.py:101-102, 250-251), not of the plain
    logits: a low alpha flattens a confident prediction below margin_2, and the sample keeps its label."""
    k = 4
    _, pred, given, _ = _controlled_batch(k)
    a = np.array([0.3, -0.4, 0.2, -0.3, 0.25, 0.1, -0.45, 0.15])   # samples 1 and 6: alpha ~ 0.02 and 0.01
    logits = 30.0 * np.eye(k)[pred]
    model, method = _controlled_scn(given, k, relabel_epoch=1)
    method.on_epoch_start(0, 5)
    method.training_step(model, {"image": _features(logits, a), "index": torch.arange(8),
                                 "label": torch.tensor(given)})
    scaled = _alpha(a)[:, None] * logits
    after = ref_relabel(scaled, given, np.arange(8), given, 0.2)
    assert not np.array_equal(after, ref_relabel(logits, given, np.arange(8), given, 0.2))  # alpha decides
    readout = method.readout()
    np.testing.assert_array_equal(readout["label"], after)
    probs = np_softmax(scaled)
    np.testing.assert_allclose(readout["relabel_gap"], probs.max(1) - probs[np.arange(8), given], atol=1e-5)


def test_relabel_compares_with_the_current_label():
    """The code's targets are the dataset's current labels, which relabelling overwrites (src/train.py:250-258):
    a relabelled sample is judged against its new label. Sample 0 (given 0, relabelled to 1) is then predicted 0
    again and moves back; sample 1 (given 0, relabelled to 1) is predicted 2 with p_2 - p_1 < margin_2 < p_2 - p_0
    and stays at 1."""
    k = 4
    given = np.array([0, 0, 3, 3])
    a = np.full(4, 0.5)                                     # alpha ~ 0.99
    first = 30.0 * np.eye(k)[[1, 1, 3, 3]]
    second = np.array([[30.0, 0, 0, 0], [0, 4.8, 5.0, 0], [0, 0, 0, 30.0], [0, 0, 0, 30.0]])
    model, method = _controlled_scn(given, k, epochs=2, relabel_epoch=1)
    labels, counts = given.copy(), np.zeros(4, int)
    for epoch, logits in enumerate((first, second)):
        method.on_epoch_start(epoch, 2)
        method.training_step(model, {"image": _features(logits, a), "index": torch.arange(4),
                                     "label": torch.tensor(given)})
        scaled = _alpha(a)[:, None] * logits
        new = ref_relabel(scaled, labels, np.arange(4), labels, 0.2)
        probs = np_softmax(scaled)
        np.testing.assert_allclose(method.readout()["relabel_gap"], probs.max(1) - probs[np.arange(4), labels],
                                   atol=1e-5)
        counts += new != labels
        labels = new
    np.testing.assert_array_equal(labels, [0, 1, 3, 3])
    assert not np.array_equal(labels, ref_relabel(_alpha(a)[:, None] * second, given, np.arange(4),
                                                  np.array([1, 1, 3, 3]), 0.2))   # against the given label
    readout = method.readout()
    np.testing.assert_array_equal(readout["label"], labels)
    np.testing.assert_array_equal(readout["relabel_count"], counts)
    np.testing.assert_array_equal(readout["label_history"], [[1, 0], [1, 1], [3, 3], [3, 3]])


def test_relabelled_labels_train_and_survive_a_resume():
    k, epochs = 4, 5
    x, pred, given, _ = _controlled_batch(k)
    model, method = _controlled_scn(given, k, epochs, relabel_epoch=1)
    batch = {"image": x, "index": torch.arange(8), "label": torch.tensor(given)}
    method.on_epoch_start(0, epochs)
    method.training_step(model, batch)
    state = method.state_dict()
    assert "relabels.label" in state and state["relabels.history"].shape == (8, epochs)
    # A resumed method: built and bound afresh (labels back to given), then the checkpoint loaded.
    _, resumed = _controlled_scn(given, k, epochs, relabel_epoch=1)
    resumed.load_state_dict(state)
    for key, value in method.readout().items():
        np.testing.assert_array_equal(resumed.readout()[key], value, err_msg=key)
    # Loading before bind (the history's width is known only from the checkpoint) works too.
    fresh = make_scn(8, k + 1, k)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.readout()["label_history"], method.readout()["label_history"])
    # The next step trains on the relabelled labels: CE on alpha * z against pred for the changed samples.
    method.on_epoch_start(1, epochs)
    out = method.training_step(model, batch)
    alpha = torch.sigmoid(method.attention(x)).squeeze(1)
    logits = alpha[:, None] * model.head(x)
    target = torch.as_tensor(method.readout()["label"])
    assert torch.equal(target, torch.tensor(pred))
    assert out["ce"].item() == pytest.approx(nn.functional.cross_entropy(logits, target).item(), abs=TOL)


def test_no_relabel_keeps_the_given_labels():
    k = 4
    x, _, given, _ = _controlled_batch(k)
    model, method = _controlled_scn(given, k, relabel=False, relabel_epoch=1)
    method.on_epoch_start(3, 5)
    method.training_step(model, {"image": x, "index": torch.arange(8), "label": torch.tensor(given)})
    readout = method.readout()
    np.testing.assert_array_equal(readout["label"], given)
    assert readout["relabel_count"].sum() == 0 and np.isfinite(readout["relabel_gap"]).all()


def test_relabel_state_refuses_a_split_of_another_size():
    state = RelabelState(4)
    with pytest.raises(ValueError, match="4 samples"):
        state.bind(np.zeros(5, dtype=np.int64), 3)


# =========================================================================== config
def test_config_defaults_follow_the_code_and_bad_values_name_the_field():
    c = SCNConfig()
    assert (c.beta, c.margin_1, c.margin_2, c.relabel_epoch, c.relabel_group) == (0.7, 0.07, 0.2, 10, "all")
    with pytest.raises(ValueError, match="relabel_group"):
        SCNConfig(relabel_group="high")
    with pytest.raises(ValueError, match="beta"):
        SCNConfig(beta=1.0)
    assert parse_overrides("scn", ["relabel_group=low", "margin_1=0.15"]) == {"relabel_group": "low",
                                                                              "margin_1": 0.15}


# =========================================================================== end to end
def test_relabelling_run_writes_its_audit_and_resumes_identically(small_ferplus, tmp_path, interrupted):
    from ferlib.experiment import run

    def spec(out):
        return tiny_run_spec(small_ferplus, "scn", out, relabel_epoch=1, margin_2=0.0)

    rid = run(spec(tmp_path / "a"))["run_id"]
    interrupted(lambda: run(spec(tmp_path / "b")))
    run(spec(tmp_path / "b"))
    with np.load(tmp_path / "a" / rid / "readout.npz") as a, np.load(tmp_path / "b" / rid / "readout.npz") as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        history, given = a["method_label_history"], a["given"]
        assert history.shape == (len(given), 2)
        events = relabel_events(history, given)
        assert len(events["index"]) > 0                      # margin_2 = 0: any disagreement relabels
        assert len(events["index"]) == a["method_relabel_count"].sum()
        np.testing.assert_array_equal(history[:, -1], a["method_label"])


def test_paper_recipe_has_the_codes_values():
    from ferlib.engine import TrainConfig
    from ferlib.recipes import recipe_source, resolve_recipe

    r = resolve_recipe("scn", "paper", TrainConfig(image_size=48))
    assert (r.optimizer, r.lr, r.weight_decay, r.scheduler, r.gamma, r.batch_size, r.epochs) == \
        ("adam", 1e-3, 1e-4, "exponential", 0.9, 64, 70)          # src/train.py:26, 31, 194, 202
    assert (r.augment.flip, r.augment.noise_p, r.augment.erase, r.augment.erase_scale) == (0.25, 0.25, 0.5,
                                                                                          (0.02, 0.25))
    assert r.augment.noise_std == pytest.approx(np.sqrt(30) / 255) and r.augment.crop == "none"
    assert "Self-Cure-Network@9f4c3ad" in recipe_source("scn", "paper")
