"""Reference-pinned equations of the generic noisy-label losses GCE, SCE and ELR, and their properties.

Each ``ref_*`` function is an independent numpy translation of the official (or, for GCE, which has none, the
reference) code, cited in its docstring as ``official: <repo>@<commit> <file>:<lines>``; the reference side never
imports ferlib. ferlib's torch functions and training steps get the same fixed, seeded inputs and must agree to
1e-6 (float64 where the function allows it; the training steps cast logits to float32, so the reference then
gets the float32-rounded logits).

- GCE  no official code; ``AlanChou/Truncated-Loss@fef5908`` (reimplementation) and the L_q in the SCE
       authors' code ``YisenWang/symmetric_cross_entropy_for_noisy_labels@ec778df``
- SCE  ``YisenWang/symmetric_cross_entropy_for_noisy_labels@ec778df`` (Keras, official) and
       ``HanxunH/SCELoss-Reproduce@c81fb33`` (PyTorch reproduction)
- ELR  ``shengliu66/ELR@934af53``
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ferlib.methods import create_method, method_config
from ferlib.methods.elr import elr_loss, elr_probabilities, elr_regulariser, elr_target_update
from ferlib.methods.gce import is_pruning_epoch, lq_loss, pruning_weights, truncated_lq_loss
from ferlib.methods.sce import reverse_cross_entropy, symmetric_cross_entropy

from stubs import tiny_run_spec, assert_close, t64, to_np

K = 7


def f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(np.float64)


# =========================================================================== numpy helpers (no ferlib)
def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_one_hot(y: np.ndarray, k: int = K) -> np.ndarray:
    return np.eye(k)[y]


def ref_cross_entropy(z, y):
    """F.cross_entropy(reduction='none'): -log softmax(z)_y."""
    s = z - z.max(1, keepdims=True)
    return -(s - np.log(np.exp(s).sum(1, keepdims=True)))[np.arange(len(y)), y]


def inputs(b: int = 12, seed: int = 0, scale: float = 2.0):
    """Logits (b, K) with half the rows agreeing with their label, and labels (int64)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, size=(b, K))
    y = rng.integers(0, K, size=b)
    y[::2] = z[::2].argmax(1)
    return z, y.astype(np.int64)


class LogitsModel(nn.Module):
    """A fake model: the 'image' IS the logits tensor (model(x) == x)."""

    def forward(self, x):
        return x


def step(method, z, y, idx):
    """method.training_step on fixed float32 logits; returns (out, the logits leaf)."""
    image = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    batch = {"image": image, "label": torch.from_numpy(y), "index": torch.as_tensor(idx, dtype=torch.int64)}
    return method.training_step(LogitsModel(), batch), image


# =========================================================================== GCE
def ref_lq(z, y, q=0.7):
    """official (the SCE authors' L_q): YisenWang/symmetric_cross_entropy_for_noisy_labels@ec778df loss.py:37-38:
    (1 - (sum_k y_true * y_pred)^q) / q, y_pred the softmax output (models.py:51-52), per sample."""
    return (1.0 - np.sum(np_one_hot(y) * np_softmax(z), 1) ** q) / q


def ref_truncated(z, y, weight, q=0.7, k=0.5):
    """reimplementation: AlanChou/Truncated-Loss@fef5908 TruncatedLoss.py:16-20 (per sample, before the mean)."""
    yg = np_softmax(z)[np.arange(len(y)), y]
    return ((1 - yg ** q) / q) * weight - ((1 - k ** q) / q) * weight


def ref_update_weight(z, y, q=0.7, k=0.5):
    """reimplementation: AlanChou/Truncated-Loss@fef5908 TruncatedLoss.py:24-34 (condition = Lqk > Lq)."""
    yg = np_softmax(z)[np.arange(len(y)), y]
    return ((1 - k ** q) / q > (1 - yg ** q) / q).astype(np.float64)


@pytest.mark.parametrize("q", [0.7, 0.3, 1.0])
def test_gce_lq_matches_reference(q):
    z, y = inputs(seed=1)
    assert_close(lq_loss(t64(z), torch.from_numpy(y), q=q), ref_lq(z, y, q))


def test_gce_training_step_is_the_batch_mean_of_lq():
    z, y = inputs(seed=2)
    method = create_method("gce", num_classes=K, num_train=len(y), feature_dim=4)
    out, _ = step(method, z, y, np.arange(len(y)))
    assert_close(out["loss"], ref_lq(f32(z), y).mean())


def test_gce_tends_to_cross_entropy_as_q_goes_to_zero_and_is_half_mae_at_q_one():
    z, y = inputs(seed=3)
    ce = ref_cross_entropy(z, y)
    # L_q = -log p - q (log p)^2 / 2 + O(q^2): the gap shrinks linearly with q
    gaps = [np.abs(to_np(lq_loss(t64(z), torch.from_numpy(y), q=q)) - ce).max() for q in (1e-2, 1e-4, 1e-6)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-4
    mae = np.abs(np_softmax(z) - np_one_hot(y)).sum(1)
    assert_close(lq_loss(t64(z), torch.from_numpy(y), q=1.0), mae / 2)


def test_gce_gradient_is_cross_entropy_gradient_weighted_by_p_y_to_the_q():
    """The paper's reading of L_q: d L_q / d theta = f_y^q * d CE / d theta (here theta = the logits)."""
    z, y = inputs(seed=4)
    q = 0.7
    zt = t64(z).requires_grad_(True)
    lq_loss(zt, torch.from_numpy(y), q=q).sum().backward()
    ce_grad = np_softmax(z) - np_one_hot(y)
    p_y = np_softmax(z)[np.arange(len(y)), y]
    assert_close(zt.grad, p_y[:, None] ** q * ce_grad)


def test_gce_truncated_loss_and_weight_step_match_reference():
    z, y = inputs(seed=5)
    weight = np.array([1, 0] * 6, dtype=np.float64)
    assert_close(truncated_lq_loss(t64(z), torch.from_numpy(y), t64(weight), q=0.7, k=0.5),
                 ref_truncated(z, y, weight))
    p_y = torch.softmax(t64(z), 1).gather(1, torch.from_numpy(y)[:, None]).squeeze(1)
    assert_close(pruning_weights(p_y, q=0.7, k=0.5), ref_update_weight(z, y))
    assert 0 < ref_update_weight(z, y).sum() < len(y)   # the inputs exercise both branches


def test_gce_pruning_schedule_matches_the_reimplementation_at_120_epochs():
    """AlanChou/Truncated-Loss@fef5908 main.py:176: (epoch+1) >= start_prune (40) and (epoch+1) % 10 == 0."""
    ours = [e for e in range(120) if is_pruning_epoch(e, 120, start=1 / 3, every=1 / 12)]
    assert ours == [e for e in range(120) if (e + 1) >= 40 and (e + 1) % 10 == 0]
    assert [e for e in range(30) if is_pruning_epoch(e, 30, start=1 / 3, every=1 / 12)] == [9, 11, 13, 15, 17, 19,
                                                                                            21, 23, 25, 27, 29]


def test_gce_truncated_method_prunes_from_the_latest_visit_and_pruned_samples_get_no_gradient():
    z, y = inputs(seed=6)
    n = len(y)
    method = create_method("gce", num_classes=K, num_train=n + 2, feature_dim=4, truncate=True)
    method.on_epoch_start(0, 12)                                  # not a pruning epoch: all weights 1
    out, _ = step(method, z, y, np.arange(n))                     # samples n, n+1 are never visited
    assert_close(out["loss"], ref_truncated(f32(z), y, np.ones(n)).mean())
    method.on_epoch_start(3, 12)                                  # 1-based epoch 4 = round(12 / 3): prune
    expected = np.concatenate([ref_update_weight(f32(z), y), [1.0, 1.0]])
    assert_close(method.weight, expected)
    out, image = step(method, z, y, np.arange(n))
    out["loss"].backward()
    pruned = expected[:n] == 0
    assert pruned.any() and torch.all(image.grad[torch.from_numpy(pruned)] == 0)
    assert torch.all(image.grad[torch.from_numpy(~pruned)].abs().sum(1) > 0)
    assert_close(method.readout()["weight"], expected)


# =========================================================================== SCE
def ref_sce_keras(z, y, alpha=0.1, beta=1.0):
    """official: YisenWang/symmetric_cross_entropy_for_noisy_labels@ec778df loss.py:9-20 (y_pred = softmax output,
    models.py:51-52): alpha * mean(-sum y_true log clip(y_pred, 1e-7, 1)) + beta * mean(-sum y_pred log
    clip(y_true, 1e-4, 1))."""
    y_true, y_pred = np_one_hot(y), np_softmax(z)
    ce = -np.sum(y_true * np.log(np.clip(y_pred, 1e-7, 1.0)), -1)
    rce = -np.sum(y_pred * np.log(np.clip(y_true, 1e-4, 1.0)), -1)
    return alpha * ce.mean() + beta * rce.mean()


def ref_sce_pytorch(z, y, alpha, beta):
    """reproduction: HanxunH/SCELoss-Reproduce@c81fb33 loss.py:14-27 (pred clamped to [1e-7, 1] in the RCE)."""
    pred = np.clip(np_softmax(z), 1e-7, 1.0)
    rce = -np.sum(pred * np.log(np.clip(np_one_hot(y), 1e-4, 1.0)), 1)
    return alpha * ref_cross_entropy(z, y).mean() + beta * rce.mean()


def test_sce_matches_official_keras_loss_including_the_ce_clip():
    z, y = inputs(seed=7)
    z[1] = 0.0
    z[1, (y[1] + 1) % K] = 25.0                                   # p_y ~ 1e-11 < 1e-7: the CE clip acts
    cfg = method_config("sce")
    loss = symmetric_cross_entropy(t64(z), torch.from_numpy(y), alpha=cfg.alpha, beta=cfg.beta,
                                   log_zero=cfg.log_zero, ce_clip=cfg.ce_clip)
    assert_close(loss.mean(), ref_sce_keras(z, y))


@pytest.mark.parametrize("alpha,beta", [(0.1, 1.0), (6.0, 1.0), (1.0, 0.0)])
def test_sce_without_ce_clip_matches_pytorch_reproduction(alpha, beta):
    z, y = inputs(seed=8, scale=1.0)                              # no probability below 1e-7: the clamps are idle
    assert np_softmax(z).min() > 1e-7
    loss = symmetric_cross_entropy(t64(z), torch.from_numpy(y), alpha=alpha, beta=beta, log_zero=math.log(1e-4))
    assert_close(loss.mean(), ref_sce_pytorch(z, y, alpha, beta))


def test_sce_training_step_matches_official_keras_loss():
    z, y = inputs(seed=9)
    method = create_method("sce", num_classes=K, num_train=len(y), feature_dim=4)
    out, _ = step(method, z, y, np.arange(len(y)))
    assert_close(out["loss"], ref_sce_keras(f32(z), y))


@pytest.mark.parametrize("log_zero", [-4.0, math.log(1e-4)])
def test_rce_with_clamped_log_zero_is_a_scaled_mae(log_zero):
    """RCE = -sum_k p_k A [k != y] = -A (1 - p_y) = (-A / 2) ||p - e_y||_1; the paper's A = -4 gives 4 (1 - p_y)."""
    z, y = inputs(seed=10)
    p = np_softmax(z)
    rce = reverse_cross_entropy(t64(p), torch.from_numpy(y), log_zero=log_zero)
    assert_close(rce, -log_zero * (1 - p[np.arange(len(y)), y]))
    assert_close(rce, -log_zero / 2 * np.abs(p - np_one_hot(y)).sum(1))
    assert np.all(to_np(rce) <= -log_zero) and np.all(to_np(rce) >= 0)  # bounded: the robustness argument


def test_sce_no_rce_ablation_is_cross_entropy_scaled_by_alpha():
    z, y = inputs(seed=11)
    method = create_method("sce", num_classes=K, num_train=len(y), feature_dim=4, **{"beta": 0.0})
    out, _ = step(method, z, y, np.arange(len(y)))
    assert_close(out["loss"], 0.1 * ref_cross_entropy(f32(z), y).mean())


# =========================================================================== ELR
class RefELR:
    """official: shengliu66/ELR@934af53 ELR/model/loss.py:11-29 (elr_loss), in numpy; lambda from
    config['train_loss']['args']['lambda'] (loss.py:28; config_cifar10.json:39-40: beta 0.7, lambda 3)."""

    def __init__(self, num_examp, num_classes=K, beta=0.7, lam=3.0):
        self.target = np.zeros((num_examp, num_classes))           # loss.py:17
        self.beta, self.lam = beta, lam

    def forward(self, index, output, label):
        y_pred = np.clip(np_softmax(output), 1e-4, 1.0 - 1e-4)    # loss.py:22-23
        y_pred_ = y_pred.copy()                                    # loss.py:24 (detached)
        self.target[index] = self.beta * self.target[index] + (1 - self.beta) * (
            y_pred_ / y_pred_.sum(1, keepdims=True))               # loss.py:25
        ce_loss = ref_cross_entropy(output, label).mean()          # loss.py:26
        elr_reg = np.log(1 - (self.target[index] * y_pred).sum(1)).mean()   # loss.py:27
        return ce_loss + self.lam * elr_reg, ce_loss, elr_reg     # loss.py:28


def ref_elr_loss_fixed_target(output, label, target, lam=3.0):
    """The same loss with t held constant (the code detaches its update), for finite differences."""
    y_pred = np.clip(np_softmax(output), 1e-4, 1.0 - 1e-4)
    return ref_cross_entropy(output, label).mean() + lam * np.log(1 - (target * y_pred).sum(1)).mean()


def test_elr_training_steps_match_official_loss_over_revisits():
    n = 10
    rng = np.random.default_rng(12)
    method = create_method("elr", num_classes=K, num_train=n, feature_dim=4)
    ref = RefELR(n)
    for index in ([0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 0, 1], [2, 4, 6, 8, 1, 3]):   # revisits carry the target
        index = np.array(index)
        z = f32(rng.normal(0.0, 3.0, size=(len(index), K)))
        y = rng.integers(0, K, size=len(index)).astype(np.int64)
        out, _ = step(method, z, y, index)
        loss, ce, reg = ref.forward(index, z, y)
        assert_close(out["loss"], loss)
        assert_close(out["ce"], ce)
        assert_close(out["elr"], reg)
        assert_close(method.target, ref.target)


def test_elr_gradient_flows_through_p_only_not_through_the_target_update():
    z, y = inputs(seed=13, scale=3.0)
    z[0, 0] = 15.0                                                # a clamped probability: its gradient is cut
    n = len(y)
    prior = np_softmax(np.random.default_rng(14).normal(size=(n, K))) * 0.5
    zt = t64(z).requires_grad_(True)
    ce, reg, target = elr_loss(zt, torch.from_numpy(y), t64(prior), beta=0.7, lam=3.0)
    (ce.mean() + 3.0 * reg.mean()).backward()
    assert not target.requires_grad
    t = to_np(target)
    grad = np.zeros_like(z)
    h = 1e-6
    for i in range(n):
        for k in range(K):
            zp, zm = z.copy(), z.copy()
            zp[i, k] += h
            zm[i, k] -= h
            grad[i, k] = (ref_elr_loss_fixed_target(zp, y, t) - ref_elr_loss_fixed_target(zm, y, t)) / (2 * h)
    assert_close(zt.grad, grad, tol=1e-5)


def test_elr_target_update_is_a_bias_free_moving_average_of_normalised_clamped_p():
    z, y = inputs(seed=15)
    probs = elr_probabilities(t64(z), clamp=1e-4)
    assert probs.min() >= 1e-4 and probs.max() <= 1 - 1e-4
    target = torch.zeros_like(probs)
    beta = 0.7
    for visits in range(1, 6):
        target = elr_target_update(target, probs, beta=beta)
        expected = (1 - beta ** visits) * to_np(probs) / to_np(probs).sum(1, keepdims=True)
        assert_close(target, expected)
    # the clamp keeps the regulariser finite for a target at a vertex and a confident prediction: log(1e-4)
    reg = elr_regulariser(elr_probabilities(t64([[50.0] + [0.0] * (K - 1)])), t64([[1.0] + [0.0] * (K - 1)]))
    assert_close(reg, [math.log(1e-4)])


def test_elr_without_the_regulariser_is_cross_entropy():
    z, y = inputs(seed=16)
    method = create_method("elr", num_classes=K, num_train=len(y), feature_dim=4, lam=0.0)
    out, _ = step(method, z, y, np.arange(len(y)))
    assert_close(out["loss"], ref_cross_entropy(f32(z), y).mean())


def test_elr_readout_target_and_score():
    z, y = inputs(seed=17)
    n = len(y)
    method = create_method("elr", num_classes=K, num_train=n + 1, feature_dim=4)
    method.given.copy_(torch.from_numpy(np.concatenate([y, [0]])))   # what bind sets from the train split
    step(method, z, y, np.arange(n))
    out = method.readout()
    p = np.clip(np_softmax(f32(z)), 1e-4, 1 - 1e-4)
    p = p / p.sum(1, keepdims=True)
    assert out["target"].shape == (n + 1, K)
    assert_close(out["target"][:n], 0.3 * p)
    assert_close(out["score"][:n], 1 - p[np.arange(n), y])          # the share off the given label
    assert np.isnan(out["score"][n]) and np.all(out["target"][n] == 0)   # never visited


# =========================================================================== truncated GCE end to end
@pytest.mark.slow
def test_gce_truncated_run_prunes_and_resumes_bit_for_bit(small_ferplus, tmp_path, interrupted):
    """Not an ablation, so not in the contract test: the pruning weights (a buffer refreshed at epoch starts)
    survive a crash after epoch 1, and the resumed run equals the uninterrupted one."""
    from ferlib.experiment import run

    def spec(out):
        return tiny_run_spec(small_ferplus, "gce", out, truncate=True, prune_start=0.5, prune_every=0.5)  # epochs 1, 2

    rid = run(spec(tmp_path / "a"))["run_id"]
    interrupted(lambda: run(spec(tmp_path / "b")))
    run(spec(tmp_path / "b"))
    with np.load(tmp_path / "a" / rid / "readout.npz") as a, np.load(tmp_path / "b" / rid / "readout.npz") as b:
        assert a.files == b.files and "method_weight" in a.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        weight = a["method_weight"]
    assert set(np.unique(weight)) <= {0.0, 1.0} and (weight == 0).any()   # pruned at the start of epoch 2
