"""Tests of ferlib.methods.dmue: DMUE's equations against numpy translations of the official code
(``JDAI-CV/FaceX-Zoo@16b793a``, folder ``addition_module/DMUE``; the ``ref_*`` functions never import ferlib), the
whole training step against them, inference on the plain model with ce's parameter count, the class-balanced
sampler, short batches, the read-outs and the ablations."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ferlib.backbones import BackboneConfig, create_model
from ferlib.engine import TrainConfig
from ferlib.experiment import RunSpec, build, prepare_data, run
from ferlib.methods import create_method
from ferlib.methods.dmue import DMUEConfig
from ferlib.recipes import resolve_recipe
from ferlib.methods.dmue_parts import (
    batch_standardise, branch_subset, class_balanced_order, class_similarity_stats, cosine_similarity_matrix,
    latent_soft_label, ramp_down, ramp_up, resnet_trunk, sharpen, soft_loss, spkd_term, uncertainty_input,
)

from stubs import TOL, RecordingDropout, TrainLabels as Train

TINY = BackboneConfig(model_kwargs={"channels": [8, 16, 32, 64], "stem_width": 8})


# =========================================================================== numpy translations of the code
def ref_ramp_up(epoch, alpha, lamda=1):
    """official: addition_module/DMUE/utils/ramp.py:3-8."""
    if epoch > alpha:
        return lamda
    return lamda * math.exp(-5 * math.pow((1 - epoch / alpha), 2))


def ref_ramp_down(epoch, alpha, lamda=1):
    """official: utils/ramp.py:10-15."""
    if epoch < alpha:
        return lamda
    return lamda * math.exp(-1 * math.pow((1 - alpha / epoch), 2))


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_ce(logits: np.ndarray, y: np.ndarray) -> float:
    """nn.CrossEntropyLoss() (batch mean), train.py:59."""
    return float(-np.log(np_softmax(logits))[np.arange(len(y)), y].mean())


def ref_split_feature(target: np.ndarray, num_classes: int):
    """official: models/resnet_multibranch.py:146-156 (ind = (target != c).nonzero(); _t.where(_t < c, _t - 1))."""
    inds, t_parts = [], []
    for c in range(num_classes):
        ind = np.nonzero(target != c)[0]
        inds.append(ind)
        _t = target[ind]
        t_parts.append(np.where(_t < c, _t, _t - 1))
    return inds, t_parts


def ref_softlabel(softlabel_list, label: np.ndarray, T: float, num_classes: int) -> np.ndarray:
    """official: train.py:96-108 (softmax, ** (1 / T), normalise, insert a zero at column c, rows of label c)."""
    softlabel = np.zeros((len(label), num_classes))
    for c in range(num_classes):
        px = np_softmax(softlabel_list[c])
        ptx = px ** (1 / T)
        targets_x = ptx / ptx.sum(1, keepdims=True)
        _h, _w = px.shape
        _targets = np.zeros([_h, _w + 1])
        _targets[:, 0:c], _targets[:, c + 1:] = targets_x[:, 0:c], targets_x[:, c:]
        softlabel[np.nonzero(label == c)[0]] = _targets
    return softlabel


def ref_soft_loss(outputs_x: np.ndarray, targets_x: np.ndarray, softlabel_x: np.ndarray) -> float:
    """official: losses/softLoss.py:10-14."""
    probs_x = np_softmax(outputs_x)
    mask = np.ones_like(probs_x)
    mask[np.arange(len(targets_x)), targets_x] = 0
    return float(np.mean((probs_x * mask - softlabel_x) ** 2))


def ref_bn_train(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """nn.BatchNorm1d in training mode with weight 1, bias 0 (the neck, models/make_model.py:102-106): batch mean,
    biased variance."""
    return (x - x.mean(0)) / np.sqrt(x.var(0) + eps)


def ref_l2_rows(g: np.ndarray) -> np.ndarray:
    """F.normalize(G, p=2, dim=1) (eps 1e-12)."""
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


def ref_sp_kd(x_list, x_final: np.ndarray, inds) -> float:
    """official: models/make_model.py:141-147 (Grams of the branches' outputs, sub-matrices of the target Gram,
    row L2 normalisation) and losses/SP_KD_Loss.py:10-11 (F.mse_loss each, summed, / number of branches)."""
    G_matrixs = [fm @ fm.T for fm in x_list]
    G_main = x_final @ x_final.T
    G_main_matrixs = [G_main[ind, :][:, ind] for ind in inds]
    G_matrixs = [ref_l2_rows(G) for G in G_matrixs]
    G_main_matrixs = [ref_l2_rows(G) for G in G_main_matrixs]
    G_err = [np.mean((a - b) ** 2) for a, b in zip(G_matrixs, G_main_matrixs)]
    return float(sum(G_err) / len(G_main_matrixs))


def ref_cos_stats(x_final: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """official: models/make_model.py:127-130 (cosine similarity), 153-161 (class means, min-max, one-hot)."""
    cos_dot_product_matrix = x_final @ x_final.T
    x_final_norm = np.linalg.norm(x_final, axis=1)[:, None]
    cos_similarity = cos_dot_product_matrix / (x_final_norm @ x_final_norm.T)
    one_hot = np.eye(num_classes)[label]
    inds_softlabel = [np.nonzero(label == c)[0] for c in range(num_classes)]  # split_feature_makeLD, :158-165
    cos_mean = np.concatenate([cos_similarity[:, ind].mean(1, keepdims=True) for ind in inds_softlabel], axis=1)
    cos_mean = (cos_mean - cos_mean.min(1, keepdims=True)) / (cos_mean.max(1, keepdims=True)
                                                              - cos_mean.min(1, keepdims=True))
    return np.concatenate([cos_mean, one_hot], axis=1)


def ref_project_w(statics: np.ndarray, w1, b1, prelu_a, w2, b2) -> np.ndarray:
    """official: models/make_model.py:100, 163-164 (Linear(2K, K), PReLU, Linear(K, 1), sigmoid)."""
    h = statics @ w1.T + b1
    h = np.where(h >= 0, h, prelu_a * h)
    return 1 / (1 + np.exp(-(h @ w2.T + b2)))


def ref_target_logits(x_final_dropped: np.ndarray, w_cls: np.ndarray) -> np.ndarray:
    """official: models/make_model.py:132-133, 150 (the target branch: dropout, the bnneck in training mode,
    classifiers[K], bias-free: config.py:36 bnneck = True, :38 BiasInCls = False). ferlib DEPARTS (DMUEConfig's
    ``main_gram_neck`` note): its target logits are the plain model's, dropout + head with a bias, no neck, since
    inference is the plain model; the neck enters only SP-KD's target side."""
    return ref_bn_train(x_final_dropped) @ w_cls.T


def ref_total(ramp_up_w, ramp_down_w, w, gamma, CEloss, softLoss, spLoss, aux_loss) -> float:
    """official: train.py:111-116 (aux_loss = sum / (num_branches - 1), then the weighted sum)."""
    return ramp_up_w * CEloss + ramp_up_w * (w * softLoss + gamma * spLoss) + ramp_down_w * aux_loss


def d(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def balanced_labels(rng, b: int, k: int) -> np.ndarray:
    """b labels with every class at least twice (a batch the code's check_batch lets through)."""
    return rng.permutation(np.concatenate([np.repeat(np.arange(k), 2), rng.integers(0, k, b - 2 * k)]))


# =========================================================================== equations
@pytest.mark.parametrize("a", [4, 6, 10, 2.5])
def test_ramps_match_the_code(a):
    for epoch in range(40):
        assert ramp_up(epoch, a) == pytest.approx(ref_ramp_up(epoch, a), abs=1e-12)
        assert ramp_down(epoch, a) == pytest.approx(ref_ramp_down(epoch, a), abs=1e-12)
    assert ramp_up(0, 6) == pytest.approx(math.exp(-5)) and ramp_up(7, 6) == 1.0 and ramp_down(5, 6) == 1.0


def test_branch_subsets_and_remapped_labels_match_the_code():
    label = np.array([0, 3, 1, 1, 2, 3, 0, 2, 2])
    inds, t_parts = ref_split_feature(label, 4)
    for c in range(4):
        rows, y = branch_subset(torch.tensor(label), c)
        np.testing.assert_array_equal(rows.numpy(), inds[c])
        np.testing.assert_array_equal(y.numpy(), t_parts[c])
        assert y.max() <= 2  # K - 1 classes


def test_latent_soft_label_and_soft_loss_match_the_code():
    rng = np.random.default_rng(0)
    k, b, T = 5, 20, 1.2
    label = balanced_labels(rng, b, k)
    per_class = [rng.normal(0, 2, ((label == c).sum(), k - 1)) for c in range(k)]
    expected = ref_softlabel(per_class, label, T, k)
    got = torch.zeros(b, k, dtype=torch.float64)
    for c in range(k):
        rows = torch.tensor(np.nonzero(label == c)[0])
        got[rows] = latent_soft_label(torch.tensor(per_class[c]), c, T)
    np.testing.assert_allclose(got.numpy(), expected, atol=TOL)
    np.testing.assert_allclose(got.sum(1).numpy(), 1.0, atol=TOL)
    assert (got[torch.arange(b), torch.tensor(label)] == 0).all()
    assert not latent_soft_label(torch.tensor(per_class[0], requires_grad=True), 0, T).requires_grad  # detached
    sharp = sharpen(torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64), 1.2)
    assert sharp[0, 0] < 0.5  # p^(1/T) with T = 1.2 > 1 flattens, despite the code's comment "sharpening"
    logits = rng.normal(0, 2, (b, k))
    got_loss = soft_loss(torch.tensor(logits), torch.tensor(label), got)
    assert got_loss.item() == pytest.approx(ref_soft_loss(logits, label, expected), abs=TOL)


def test_spkd_matches_the_code():
    rng = np.random.default_rng(1)
    k, b, dim = 4, 18, 6
    label = balanced_labels(rng, b, k)
    inds, _ = ref_split_feature(label, k)
    main_raw = rng.normal(0, 1, (b, dim))
    main = ref_bn_train(main_raw)                 # the target branch after the neck (make_model.py:133)
    aux = [rng.normal(0, 1, (len(ind), k - 1)) for ind in inds]  # the branches' logits (make_model.py:122)
    got = sum(spkd_term(torch.tensor(a), batch_standardise(torch.tensor(main_raw)), torch.tensor(ind))
              for a, ind in zip(aux, inds)) / k
    assert got.item() == pytest.approx(ref_sp_kd(aux, main, inds), abs=TOL)
    np.testing.assert_allclose(batch_standardise(torch.tensor(main_raw)).numpy(), main, atol=TOL)
    # Both sides carry gradient (nothing is detached in the code).
    a_t, m_t = torch.tensor(aux[0], requires_grad=True), torch.tensor(main_raw, requires_grad=True)
    spkd_term(a_t, m_t, torch.tensor(inds[0])).backward()
    assert a_t.grad.abs().sum() > 0 and m_t.grad.abs().sum() > 0


def test_pairwise_uncertainty_matches_the_code():
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    k, b, dim = 4, 16, 7
    label = balanced_labels(rng, b, k)
    f = np.abs(rng.normal(0, 1, (b, dim)))        # pooled ReLU features
    statics = ref_cos_stats(f, label, k)
    cos = cosine_similarity_matrix(torch.tensor(f))
    got = uncertainty_input(cos, torch.tensor(label), k)
    np.testing.assert_allclose(got.numpy(), statics, atol=TOL)
    method = create_method("dmue", num_classes=k, num_train=b, feature_dim=dim)
    lin1, prelu, lin2 = method.mlp.double()
    with torch.no_grad():
        prelu.weight.fill_(0.3)
    s = method.mlp(got)
    ref = ref_project_w(statics, d(lin1.weight), d(lin1.bias), 0.3, d(lin2.weight), d(lin2.bias))[:, 0]
    np.testing.assert_allclose(d(s), ref, atol=TOL)


def test_similarity_statistics_of_a_short_batch_are_finite():
    cos = cosine_similarity_matrix(torch.rand(5, 3, dtype=torch.float64))
    stats = class_similarity_stats(cos, torch.tensor([0, 0, 2, 2, 2]), 4)   # classes 1 and 3 absent
    assert torch.isfinite(stats).all() and (stats[:, [1, 3]] == 0).all()
    one = class_similarity_stats(cos, torch.zeros(5, dtype=torch.long), 2)  # one class: the code divides by 0
    assert torch.isfinite(one).all()


# =========================================================================== the whole training step
def _dmue_pair(k: int, n: int, **overrides):
    torch.manual_seed(0)
    model = create_model(TINY, k).double()
    method = create_method("dmue", num_classes=k, num_train=n, feature_dim=model.feature_dim, aux_dropout=0.0,
                           **overrides)
    return model, method


@pytest.mark.parametrize("epoch", [2, 8])
@pytest.mark.parametrize("aux_gram", ["logits", "features"])
def test_training_step_matches_the_code(epoch, aux_gram):
    """The whole step with dropout ON (0.5, recorded masks) in the target branch and the auxiliary branches: the
    code applies one dropout draw to the target features, after the similarities and before SP-KD's neck and the
    classifier (models/make_model.py:125-133), one to each branch's training subset (:120), none when mining
    (:136-137)."""
    k, b = 4, 24
    rng = np.random.default_rng(3)
    label = balanced_labels(rng, b, k)
    model, method = _dmue_pair(k, b, aux_gram=aux_gram)
    method.bind(model, Train(label), None)
    method.branches.double()
    method.mlp.double()
    model.dropout, method.branches.dropout = RecordingDropout(0.5, seed=1), RecordingDropout(0.5, seed=2)
    with torch.no_grad():
        for fc in method.branches.classifiers:     # larger than the code's N(0, 0.001) start, for a real test
            fc.weight.normal_(0, 0.5)
    method.on_epoch_start(epoch, 12)
    model.train()
    method.train()
    x = torch.randn(b, 1, 32, 32, dtype=torch.float64)
    out = method.training_step(model, {"image": x, "index": torch.arange(b), "label": torch.tensor(label)})

    # The network's feature maps come from the same modules (batch statistics in training mode), the dropout
    # masks from the recording; everything after them is recomputed here from the code's formulas.
    assert len(model.dropout.masks) == 1 and len(method.branches.dropout.masks) == k    # none while mining
    with torch.no_grad():
        bb = model.backbone
        trunk = resnet_trunk(bb, x)
        f = d(bb.forward_head(bb.layer4(trunk)))
        inds, t_parts = ref_split_feature(label, k)
        pooled = [d(method.branches.features(c, trunk[torch.tensor(inds[c])])) for c in range(k)]
        mining = [d(method.branches.features(c, trunk[torch.tensor(np.nonzero(label == c)[0])])) for c in range(k)]
    W = [d(fc.weight) for fc in method.branches.classifiers]
    necks = [ref_bn_train(p * mask) for p, mask in zip(pooled, method.branches.dropout.masks)]
    x_list = [n @ W[c].T for c, n in enumerate(necks)]
    softlabel_list = [ref_bn_train(m) @ W[c].T for c, m in enumerate(mining)]
    dropped = f * model.dropout.masks[0]
    z = dropped @ d(model.head.weight).T + d(model.head.bias)    # the plain model's logits (no neck, a bias)
    lin1, prelu, lin2 = method.mlp
    score = ref_project_w(ref_cos_stats(f, label, k), d(lin1.weight), d(lin1.bias), d(prelu.weight),
                          d(lin2.weight), d(lin2.bias))
    ce = np_ce(z * score, label)
    soft = ref_soft_loss(z, label, ref_softlabel(softlabel_list, label, 1.2, k))
    sp = ref_sp_kd(x_list if aux_gram == "logits" else necks, ref_bn_train(dropped), inds)
    aux = sum(np_ce(xl, t) for xl, t in zip(x_list, t_parts)) / k
    expected = ref_total(ref_ramp_up(epoch, 6), ref_ramp_down(epoch, 6), 0.5, 1000, ce, soft, sp, aux)
    assert out["ce"].item() == pytest.approx(ce, abs=TOL)
    assert out["soft"].item() == pytest.approx(soft, abs=TOL)
    assert out["spkd"].item() == pytest.approx(sp, abs=TOL)
    assert out["aux"].item() == pytest.approx(aux, abs=TOL)
    assert out["loss"].item() == pytest.approx(expected, abs=TOL)
    readout = method.readout()
    np.testing.assert_allclose(readout.score, 1 - score[:, 0], atol=1e-6)       # score = 1 - s
    np.testing.assert_allclose(readout.target, ref_softlabel(softlabel_list, label, 1.2, k), atol=1e-6)
    # The departure stays visible: the code's target logits (neck, no bias) give another CE.
    official = ref_target_logits(dropped, d(model.head.weight))
    assert abs(np_ce(official * score, label) - ce) > 1e-3


def test_uncertainty_ce_reaches_the_features_through_the_similarities():
    """With the MLP frozen (the code), s moves only because the features move: the CE on s * z back-propagates
    into f through the cosine similarities as well as through z (models/make_model.py:127-130, 163-165: nothing
    detached). Its gradient in f matches central differences of the code's formula, not those with s held fixed."""
    k, b = 4, 16
    label = balanced_labels(np.random.default_rng(5), b, k)
    model, method = _dmue_pair(k, b, use_latent=False, use_spkd=False)      # no branches: the loss is r_up * CE
    method.bind(model, Train(label), None)
    method.mlp.double()
    maps = []
    model.backbone.layer4.register_forward_hook(lambda module, inputs, output: maps.append(output))
    method.on_epoch_start(8, 12)                                            # r_up = 1
    out = method.training_step(model, {"image": torch.randn(b, 1, 32, 32, dtype=torch.float64),
                                       "index": torch.arange(b), "label": torch.tensor(label)})
    assert maps[0].shape[2:] == (1, 1)                                      # f = the 1 x 1 map: df = dmap
    grad = d(torch.autograd.grad(out["loss"], maps[0])[0])[:, :, 0, 0]
    f, w, bias = d(maps[0])[:, :, 0, 0], d(model.head.weight), d(model.head.bias)
    lin1, prelu, lin2 = method.mlp
    mlp = (d(lin1.weight), d(lin1.bias), d(prelu.weight), d(lin2.weight), d(lin2.bias))

    def s_of(feats):
        return ref_project_w(ref_cos_stats(feats, label, k), *mlp)

    s0 = s_of(f)
    full = numeric_gradient(lambda g: np_ce((g @ w.T + bias) * s_of(g), label), f)
    fixed = numeric_gradient(lambda g: np_ce((g @ w.T + bias) * s0, label), f)
    np.testing.assert_allclose(grad, full, atol=1e-8)
    assert np.abs(full - fixed).max() > 1e-5                               # the route through s shows


def numeric_gradient(fn, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``fn`` at ``x``."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += eps
        down[i] -= eps
        grad[i] = (fn(up) - fn(down)) / (2 * eps)
    return grad


def test_gradients_reach_the_branches_and_not_the_frozen_uncertainty_mlp():
    k, b = 4, 16
    label = balanced_labels(np.random.default_rng(4), b, k)
    model, method = _dmue_pair(k, b)
    method.bind(model, Train(label), None)
    method.branches.double()
    method.mlp.double()
    method.on_epoch_start(1, 4)
    out = method.training_step(model, {"image": torch.randn(b, 1, 32, 32, dtype=torch.float64),
                                       "index": torch.arange(b), "label": torch.tensor(label)})
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.branches.classifiers.parameters())
    assert all(p.grad is not None for p in method.branches.stages.parameters())
    assert all(not p.requires_grad and p.grad is None for p in method.mlp.parameters())   # the code: untrained
    trained = create_method("dmue", num_classes=k, num_train=b, feature_dim=model.feature_dim,
                            train_uncertainty_mlp=True)
    assert all(p.requires_grad for p in trained.mlp.parameters())


# =========================================================================== inference = the plain model
def test_the_target_branch_is_the_plain_model_in_eval_mode():
    torch.manual_seed(0)
    model = create_model(TINY, 5).eval()
    x = torch.randn(3, 1, 32, 32)
    bb = model.backbone
    assert torch.equal(model.head(model.dropout(bb.forward_head(bb.layer4(resnet_trunk(bb, x))))), model(x))


def test_inference_uses_the_plain_model_with_ces_parameter_count(small_ferplus, tmp_path):
    spec = RunSpec(data=str(small_ferplus), noise="symmetric:0.3", method="dmue", backbone=TINY, out=str(tmp_path),
                   train=TrainConfig(epochs=1, batch_size=16, image_size=32, progress=False, device="cpu",
                                     eval_batch_size=64))
    data, _ = prepare_data(spec)
    model_dmue, method = build(spec, data)
    model_ce, _ = build(dataclasses.replace(spec, method="ce"), data)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model_dmue) == count(model_ce) and model_dmue.state_dict().keys() == model_ce.state_dict().keys()
    method.bind(model_dmue, data.subset("train"), spec.train)
    layer4 = sum(p.numel() for p in model_dmue.backbone.layer4.parameters())
    assert count(method.branches.stages) == data.num_classes * layer4        # K training-only copies of layer4
    result = run(spec)
    weights = torch.load(tmp_path / result["run_id"] / "model.pt")
    plain = create_model(TINY, data.num_classes)
    plain.load_state_dict(weights)          # strict: the saved model is exactly a plain backbone + classifier


# =========================================================================== the sampler
def test_sampler_is_class_balanced_and_reproducible_from_the_generator():
    labels = np.repeat([0, 1, 2, 3], [6000, 600, 60, 6])
    n = len(labels)
    order = class_balanced_order(labels, torch.Generator().manual_seed(5))
    assert order.dtype == torch.int64 and len(order) == n
    counts = np.bincount(labels[order.numpy()], minlength=4)
    assert np.all(np.abs(counts - n / 4) < 5 * math.sqrt(n / 4))              # each class ~ N / 4 draws
    again = class_balanced_order(labels, torch.Generator().manual_seed(5))
    assert torch.equal(order, again)
    # The code's sampler with the same generator (datasets/sampler.py:33-43): the same draws.
    label_to_count = {c: int((labels == c).sum()) for c in np.unique(labels)}
    weights = torch.DoubleTensor([1.0 / label_to_count[y] for y in labels])
    assert torch.equal(order, torch.multinomial(weights, n, replacement=True,
                                                generator=torch.Generator().manual_seed(5)))
    gen = torch.Generator().manual_seed(5)
    method = create_method("dmue", num_classes=4, num_train=n, feature_dim=8)
    first = method.epoch_order(labels, gen)
    assert torch.equal(first, order) and not torch.equal(method.epoch_order(labels, gen), first)  # gen advances
    off = create_method("dmue", num_classes=4, num_train=n, feature_dim=8, class_balance=False)
    assert off.epoch_order(labels, gen) is None


# =========================================================================== short batches, read-outs, ablations
def test_a_short_batch_is_skipped_exactly_or_trained_robustly():
    k, b = 4, 12
    label = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3])   # class 3 once: the code's check_batch skips it
    model, method = _dmue_pair(k, b, min_per_class=2)
    method.bind(model, Train(label), None)
    method.branches.double()
    method.mlp.double()
    batch = {"image": torch.randn(b, 1, 32, 32, dtype=torch.float64), "index": torch.arange(b),
             "label": torch.tensor(label)}
    out = method.training_step(model, batch)
    assert out["skipped"].item() == 1 and out["loss"].item() == 0
    out["loss"].backward()
    assert all(p.grad is None for p in list(model.parameters()) + list(method.parameters()))
    assert (method.visits == 0).all()                                # nothing recorded
    robust_model, robust = _dmue_pair(k, b)
    robust.bind(robust_model, Train(label), None)
    robust.branches.double()
    robust.mlp.double()
    out = robust.training_step(robust_model, batch)
    assert out["skipped"].item() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in robust.branches.parameters())
    target = robust.readout().target
    np.testing.assert_allclose(target[11], np.where(np.arange(k) == 3, 0, 1 / 3))   # class 3 alone: not mined


def test_readout_fills_undrawn_samples_and_keeps_the_latent_distribution_shape():
    k, b = 4, 16
    label = balanced_labels(np.random.default_rng(6), b, k)
    model, method = _dmue_pair(k, 40)
    labels = np.concatenate([label, np.arange(24) % k])
    method.bind(model, Train(labels), None)
    method.branches.double()
    method.mlp.double()
    method.training_step(model, {"image": torch.randn(b, 1, 32, 32, dtype=torch.float64),
                                 "index": torch.arange(b), "label": torch.tensor(label)})
    readout = method.readout()
    assert readout.score.shape == (40,) and np.isfinite(readout.score).all()
    np.testing.assert_allclose(readout.score[b:], readout.score[:b].mean(), rtol=1e-6)
    assert np.isnan(readout["confidence"][b:]).all() and (readout["visits"][b:] == 0).all()
    np.testing.assert_allclose(readout.target.sum(1), 1.0, atol=1e-6)
    assert (readout.target[np.arange(40), labels] == 0).all()
    np.testing.assert_allclose(readout["latent_peak"], readout.target.max(1))


def test_ablations_remove_their_modules():
    kw = dict(num_classes=4, num_train=8, feature_dim=8)
    assert create_method("dmue", use_uncertainty=False, **kw).mlp is None
    model = create_model(TINY, 4)
    none = create_method("dmue", use_latent=False, use_spkd=False, num_classes=4, num_train=8,
                         feature_dim=model.feature_dim)
    none.bind(model, Train(np.arange(8) % 4), None)
    assert none.branches is None
    with pytest.raises(ValueError, match="aux_gram"):
        DMUEConfig(aux_gram="maps")
    with pytest.raises(ValueError, match="ramp_a"):
        DMUEConfig(ramp_a=0)


def test_paper_recipe_follows_the_code():
    r = resolve_recipe("dmue", "paper", TrainConfig(image_size=48))
    assert (r.optimizer, r.lr, r.weight_decay, r.batch_size, r.epochs) == ("adam", 1e-4, 1e-4, 72, 36)
    lr = [r.lr * r.gamma ** sum(e >= m for m in r.milestones) for e in range(36)]
    # config.py:34 lr1: 1e-4 for epochs 0-5, 5e-5 for 6-11, 1e-5 from 12 (one gamma: the middle is 3.2e-5).
    assert lr[5] == 1e-4 and lr[6] == pytest.approx(10 ** -4.5) and lr[12] == pytest.approx(1e-5)
    assert r.augment.scale == ((224 / 256) ** 2,) * 2 and r.augment.ratio == (1.0, 1.0)     # RandomCrop 224 of 256
    assert (r.augment.erase, r.augment.erase_scale, r.augment.noise_p) == (0.5, (0.02, 0.25), 0.25)
