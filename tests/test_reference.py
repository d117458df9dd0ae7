"""Reference-pinned equations: ferlib's NLA, LDLVA and LA-Net against numpy translations of the official code.

Each ``ref_*`` function below is an independent numpy translation of one formula of the official code, written
from the source at the audited commit (cited in its docstring as ``official: <repo>@<commit> <file>:<lines>``).
The reference side never imports ferlib. Each test feeds the same fixed, seeded inputs to ferlib's torch
function and to the reference and compares to 1e-6 (float64 where ferlib allows it; where ferlib computes in
float32 internally, e.g. ``NLA.training_step`` and ``kl_per_sample``, the float32-rounded inputs are given to
the reference and the tolerance stays 1e-6 absolute/relative unless a test says otherwise).

Official repositories and commits (notes: /work/shared/reference/fidelity-audit.md, methods.md):

- NLA    ``jungyu0413/NLA@b86f31f`` (and ``@b86f31f^`` for the legacy N x N NAW form)
- LDLVA  ``minhnhatvt/label-distribution-learning-fer-tf@a741b36``
- LA-Net ``hw-tony/LA-Net@74bb121``
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ferlib.methods import create_method
from ferlib.methods.lanet_parts import (
    EdgeScorer, aggregate_neighbours as lanet_aggregate, awing_loss, chunk_ids, heatmap_weights, kl_per_sample,
    knn_mask, lde_target, progressive_balanced_order, progressive_class_probs, pseudo_labels, supcon_loss,
)
from ferlib.methods.ldl_votes import soft_cross_entropy
from ferlib.methods.ldlva import (
    CalibrationNet, _neighbour_distances, aggregate_neighbours as ldlva_aggregate, calibration_score, center_loss,
    center_pull, center_push, local_similarity, target_distribution, uncertainty_factor,
)
from ferlib.methods.nla import (
    covariance_ramp, gaussian_density, logit_mixture_js, naw_coordinates, naw_covariance, naw_cross_entropy,
    naw_weight,
)

from stubs import TOL, assert_close, t64, to_np

# =========================================================================== numpy helpers (no ferlib)
def np_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def np_log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    s = z - z.max(axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis, keepdims=True))


def np_logsumexp(z: np.ndarray, axis: int = -1) -> np.ndarray:
    m = z.max(axis, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis, keepdims=True))).squeeze(axis)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def central_difference(f, x: np.ndarray, entries, h: float = 1e-5) -> np.ndarray:
    """d f / d x[entry] by central differences, float64."""
    out = []
    for entry in entries:
        xp, xm = x.copy(), x.copy()
        xp[entry] += h
        xm[entry] -= h
        out.append((f(xp) - f(xm)) / (2 * h))
    return np.array(out)


# =========================================================================== NLA: numpy translation of the code
# main_rafdb.py:28,40-53 argparser defaults (batch 32, lam_a/b/c = 0.5, slope -15, Gaussian parameters).
NLA_ARGS = dict(batch_size=32, lam_a=0.5, lam_b=0.5, lam_c=0.5, slope=-15.0, t_lambda=1.0, sch_bool=True,
                mu_x_t=0.5, mu_y_t=0.5, mu_x_f=0.30, mu_y_f=0.15,
                t_std_major=0.8, t_std_ratio=2.0, f_std_major=0.91, f_std_ratio=6.0)


def ref_exponential_scheduler(epoch, epochs, slope=-15.0, sch_bool=True):
    """official: jungyu0413/NLA@b86f31f src/loss.py:70-74 (called with the 0-based epoch, src/train.py:17)."""
    if sch_bool:
        return 1 - np.exp(slope * epoch / epochs)
    return 1


def ref_naw_gaussians(eps, a=NLA_ARGS):
    """official: jungyu0413/NLA@b86f31f src/train.py:28-35 (major/minor), src/loss.py:9-16 (t_minor *= eps).

    Returns (t_mu (2,1), t_cov (2,2), f_mu (2,1), f_cov (2,2)).
    """
    t_major = a["t_std_major"] ** 2 + (a["t_std_major"] / a["t_std_ratio"]) ** 2
    t_minor = -a["t_std_major"] ** 2 + (a["t_std_major"] / a["t_std_ratio"]) ** 2
    f_major = a["f_std_major"] ** 2 + (a["f_std_major"] / a["f_std_ratio"]) ** 2
    f_minor = a["f_std_major"] ** 2 - (a["f_std_major"] / a["f_std_ratio"]) ** 2
    t_minor = eps * t_minor
    t_mu = np.array([[a["mu_x_t"]], [a["mu_y_t"]]])
    f_mu = np.array([[a["mu_x_f"]], [a["mu_y_f"]]])
    t_cov = np.array([[t_major, t_minor], [t_minor, t_major]])
    f_cov = np.array([[f_major, f_minor], [f_minor, f_major]])
    return t_mu, t_cov, f_mu, f_cov


def ref_naw_point(z, y):
    """official: jungyu0413/NLA@b86f31f src/loss.py:21-31 (P_GT, top-2, P_MAX_is_GT, P_NN)."""
    probs = np_softmax(z, 1)
    p_gt = probs[np.arange(len(y)), y]
    top2 = -np.sort(-probs, axis=1)[:, :2]
    is_gt = top2[:, 0] == p_gt
    p_nn = np.where(is_gt, top2[:, 1], top2[:, 0])
    return p_gt, p_nn, is_gt


def ref_co_gau(sv, cov, mu):
    """official: jungyu0413/NLA@b86f31f src/loss.py:43-54 (sv: (2, N); per-sample quadratic form)."""
    diff = sv - mu
    inv_cov = np.linalg.inv(cov)
    det_cov = np.linalg.det(cov)
    exponent = -0.5 * np.sum(diff * (inv_cov @ diff), axis=0)
    k = sv.shape[0]
    return 1.0 / np.sqrt((2 * np.pi) ** k * det_cov) * np.exp(exponent)


def ref_co_gau_legacy(sv, cov, mu):
    """official: jungyu0413/NLA@b86f31f^ src/loss.py:43-61 (the N x N form: diff^T inv diff, (N, N))."""
    diff = sv - mu
    exponent = -0.5 * (diff.T @ np.linalg.inv(cov)) @ diff
    k = sv.shape[0]
    return 1.0 / np.sqrt((2 * np.pi) ** k * np.linalg.det(cov)) * np.exp(exponent)


def ref_naw_value(z, y, eps, legacy=False, a=NLA_ARGS):
    """official: jungyu0413/NLA@b86f31f src/loss.py:20-40 (``value``; (N,) at HEAD, (N, N) in the legacy form,
    where torch.where broadcasts the (N,) branch over the last axis)."""
    p_gt, p_nn, is_gt = ref_naw_point(z, y)
    sv = np.stack([p_gt, p_nn], axis=0)
    t_mu, t_cov, f_mu, f_cov = ref_naw_gaussians(eps, a)
    gau = ref_co_gau_legacy if legacy else ref_co_gau
    t_value = a["t_lambda"] * gau(sv, t_cov, t_mu)
    f_value = gau(sv, f_cov, f_mu)
    return np.where(is_gt, t_value, f_value)


def ref_cross_entropy(z, y):
    """nn.CrossEntropyLoss(reduction='none') as used at jungyu0413/NLA@b86f31f src/train.py:27, src/loss.py:22."""
    return -np_log_softmax(z, 1)[np.arange(len(y)), y]


def ref_js_sum(p, q):
    """official: jungyu0413/NLA@b86f31f src/loss.py:61-66 (m of LOGITS; F.kl_div(log_softmax, softmax m, 'sum'))."""
    target = np_softmax(0.5 * (p + q), 1)
    kl_p = np.sum(target * (np.log(target) - np_log_softmax(p, 1)))
    kl_q = np.sum(target * (np.log(target) - np_log_softmax(q, 1)))
    return 0.5 * (kl_p + kl_q)


def ref_nla_loss(z, z2, y, epoch, epochs, legacy=False, a=NLA_ARGS):
    """official: jungyu0413/NLA@b86f31f src/train.py:17,27-40: the loss of ONE code batch (batch 32 in the code).

    loss = lam_a * mean CE + lam_b * mean(CE * NAW value) + lam_c * JS_sum.
    """
    eps = ref_exponential_scheduler(epoch, epochs, a["slope"], a["sch_bool"])
    ce = ref_cross_entropy(z, y)
    loss_naw = ce * ref_naw_value(z, y, eps, legacy, a)        # legacy: (N, N) * (N,) -> CE_j per column
    loss_jsd = a["lam_c"] * ref_js_sum(z, z2)
    return a["lam_a"] * ce.mean() + a["lam_b"] * loss_naw.mean() + loss_jsd


# --------------------------------------------------------------------------- NLA inputs
NLA_K = 8
EPOCHS = 60


def nla_inputs(b: int, seed: int, tie: bool = True):
    """Logits z (b, K) of a mix of correct and wrong samples, the flipped view z2, labels y (int64)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=(b, NLA_K))
    y = rng.integers(0, NLA_K, size=b)
    y[::2] = z[::2].argmax(1)                      # half agree with their label, half (mostly) do not
    if tie:                                        # row 0: given label tied with another class at the max
        y[0] = 3
        z[0, 3] = z[0, 5] = z[0].max() + 1.0
    z2 = z + rng.normal(0.0, 0.5, size=z.shape)    # the mirrored view's logits, close to z
    return z, z2, y.astype(np.int64)


class LogitsModel(nn.Module):
    """A fake model: the 'image' IS the logits tensor, returned unchanged (model(x) == x)."""

    def forward(self, x):
        return x


def nla_step(b: int, z, z2, y, epoch: int, **overrides):
    """ferlib's NLA training_step on fixed logits (image -> z, image_flip -> z2), float32 as the method casts."""
    method = create_method("nla", num_classes=NLA_K, num_train=b, feature_dim=4, **overrides)
    method.on_epoch_start(epoch, EPOCHS)
    image = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    image_flip = torch.tensor(z2, dtype=torch.float32, requires_grad=True)
    batch = {"image": image, "image_flip": image_flip, "label": torch.from_numpy(y),
             "index": torch.arange(b)}
    out = method.training_step(LogitsModel(), batch)
    return out, image, image_flip


def f32(x: np.ndarray) -> np.ndarray:
    """The float32 rounding ferlib's training_step applies to the logits, back in float64 for the reference."""
    return x.astype(np.float32).astype(np.float64)


# --------------------------------------------------------------------------- NLA tests
@pytest.mark.parametrize("epoch", [0, 1, 2, 5, 10, 30, 59])
def test_nla_covariance_ramp_matches_exponential_scheduler(epoch):
    """covariance_ramp == official src/loss.py:70-74 at 0-based epochs of E = 60 (sch_bool True and False)."""
    assert covariance_ramp(epoch, EPOCHS, slope=-15.0) == pytest.approx(
        ref_exponential_scheduler(epoch, EPOCHS, -15.0, True), abs=1e-12)
    assert covariance_ramp(epoch, EPOCHS, enabled=False) == ref_exponential_scheduler(epoch, EPOCHS, -15.0, False)


@pytest.mark.parametrize("epoch", [0, 2, 5, 10, 59])
def test_nla_covariances_and_means_match_train_py(epoch):
    """NLA.gaussians() (config defaults + ramp at the epoch) == official src/train.py:28-35 + src/loss.py:9-16."""
    method = create_method("nla", num_classes=NLA_K, num_train=4, feature_dim=4)
    method.on_epoch_start(epoch, EPOCHS)
    params = method.gaussians()
    t_mu, t_cov, f_mu, f_cov = ref_naw_gaussians(ref_exponential_scheduler(epoch, EPOCHS))
    assert_close(params["cov_true"], t_cov, 1e-12)
    assert_close(params["cov_false"], f_cov, 1e-12)
    assert_close(params["mean_true"], t_mu[:, 0], 1e-12)
    assert_close(params["mean_false"], f_mu[:, 0], 1e-12)
    assert params["t_lambda"] == NLA_ARGS["t_lambda"]
    # the free function with the code's (sigma, r) and the true branch's c = -eps
    eps = ref_exponential_scheduler(epoch, EPOCHS)
    assert_close(naw_covariance(0.8, 2.0, -eps), t_cov, 1e-12)
    assert_close(naw_covariance(0.91, 6.0, 1.0), f_cov, 1e-12)


def test_nla_naw_coordinates_match_topk_branch():
    """naw_coordinates == official src/loss.py:21-31, a tie between the label and another class included."""
    z, _, y = nla_inputs(6, seed=0)
    p_gt, p_nn, correct = naw_coordinates(t64(z), torch.from_numpy(y))
    r_gt, r_nn, r_correct = ref_naw_point(z, y)
    assert_close(p_gt, r_gt)
    assert_close(p_nn, r_nn)
    np.testing.assert_array_equal(to_np(correct), r_correct)
    assert r_correct[0] and r_correct.any() and not r_correct.all()   # the tie row counts as correct; both branches


@pytest.mark.parametrize("branch", ["true", "false"])
def test_nla_gaussian_density_matches_co_gau(branch):
    """gaussian_density == official co_gau (src/loss.py:43-54) for both branches, per-sample and legacy N x N."""
    rng = np.random.default_rng(1)
    pts = rng.dirichlet(np.ones(3), size=6)[:, :2]         # (p_GT, p_NN) in the triangle
    t_mu, t_cov, f_mu, f_cov = ref_naw_gaussians(ref_exponential_scheduler(5, EPOCHS))
    mu, cov = (t_mu, t_cov) if branch == "true" else (f_mu, f_cov)
    got = gaussian_density(t64(pts), t64(mu[:, 0]), t64(cov))
    assert_close(got, ref_co_gau(pts.T, cov, mu))
    got_pairwise = gaussian_density(t64(pts), t64(mu[:, 0]), t64(cov), pairwise=True)
    assert_close(got_pairwise, ref_co_gau_legacy(pts.T, cov, mu))   # official @b86f31f^ src/loss.py:43-61


@pytest.mark.parametrize("epoch", [0, 2, 10, 59])
def test_nla_naw_weight_matches_code_value_over_the_ramp(epoch):
    """naw_weight (per sample) == official NAW ``value`` (src/loss.py:20-37) at several epochs of the ramp."""
    z, _, y = nla_inputs(6, seed=2)
    method = create_method("nla", num_classes=NLA_K, num_train=6, feature_dim=4)
    method.on_epoch_start(epoch, EPOCHS)
    p_gt, p_nn, correct = naw_coordinates(t64(z), torch.from_numpy(y))
    w = naw_weight(torch.stack([p_gt, p_nn], 1), correct, **method.gaussians())
    assert_close(w, ref_naw_value(z, y, ref_exponential_scheduler(epoch, EPOCHS)))


def test_nla_pairwise_naw_loss_matches_legacy_nxn_code():
    """naw_cross_entropy with the pairwise weight == official @b86f31f^ src/train.py:40 with the N x N NAW
    (src/loss.py@b86f31f^:20-61): 0.5 mean CE + 0.5 mean over N^2 of CE_j * value_ij."""
    z, _, y = nla_inputs(6, seed=3)
    eps = ref_exponential_scheduler(10, EPOCHS)
    t_mu, t_cov, f_mu, f_cov = ref_naw_gaussians(eps)
    p_gt, p_nn, correct = naw_coordinates(t64(z), torch.from_numpy(y))
    w = naw_weight(torch.stack([p_gt, p_nn], 1), correct, mean_true=t64(t_mu[:, 0]), cov_true=t64(t_cov),
                   mean_false=t64(f_mu[:, 0]), cov_false=t64(f_cov), pairwise=True)
    ce = ref_cross_entropy(z, y)
    got = naw_cross_entropy(t64(ce), w, lam_a=0.5, lam_b=0.5)
    expected = 0.5 * ce.mean() + 0.5 * (ce * ref_naw_value(z, y, eps, legacy=True)).mean()
    assert_close(got, expected)


def test_nla_js_code_reduction_equals_code_sum_at_batch_32():
    """logit_mixture_js(reduction="code", code_batch=32) at B = 32 == official jensen_shannon_divergence
    (src/loss.py:61-66, 'sum'); "sum" is the same there and "mean" is 1/32 of it."""
    z, z2, _ = nla_inputs(32, seed=4)
    expected = ref_js_sum(z, z2)
    assert_close(logit_mixture_js(t64(z), t64(z2), reduction="code", code_batch=32), expected)
    assert_close(logit_mixture_js(t64(z), t64(z2), reduction="sum"), expected)
    assert_close(logit_mixture_js(t64(z), t64(z2), reduction="mean"), expected / 32)


def test_nla_js_code_reduction_at_batch_64_is_code_weight_per_sample():
    """At B = 64 the "code" form == (32/64) * the code's sum over the 64 samples == the mean of the code's sums
    over two batches of 32 (src/loss.py:61-66 at main_rafdb.py:28 batch 32): each sample's JS keeps the code's
    weight relative to its CE. The literal "sum" is 2x the code there (documented)."""
    z, z2, _ = nla_inputs(64, seed=5)
    got = logit_mixture_js(t64(z), t64(z2), reduction="code", code_batch=32)
    assert_close(got, 32 / 64 * ref_js_sum(z, z2))
    assert_close(got, 0.5 * (ref_js_sum(z[:32], z2[:32]) + ref_js_sum(z[32:], z2[32:])))
    assert_close(logit_mixture_js(t64(z), t64(z2), reduction="sum"), ref_js_sum(z, z2))


def test_nla_js_gradient_matches_code_finite_differences():
    """d JS / d z of ferlib (autograd, float64) == central differences of the official formula (src/loss.py:61-66).

    Note: the code does not detach softmax(m), but for this logit mixture the gradient through the target is
    identically 0 (d/dt of the two KLs is 2 log t - log p - log q = const per row, and sum_c dt_c = 0), so
    detaching it would not change this gradient either."""
    z, z2, _ = nla_inputs(6, seed=6, tie=False)
    zt = t64(z).requires_grad_(True)
    logit_mixture_js(zt, t64(z2), reduction="sum").backward()
    entries = [(i, c) for i in range(6) for c in (0, 3, 7)]
    fd = central_difference(lambda x: ref_js_sum(x, z2), z, entries)
    assert_close(np.array([zt.grad[e].item() for e in entries]), fd)


@pytest.mark.parametrize("epoch", [0, 3, 59])
def test_nla_training_step_loss_matches_code_at_batch_32(epoch):
    """NLA.training_step(...)["loss"] at B = 32 == the official loss of one batch (src/train.py:17,27-40), i.e.
    0.5 mean CE + 0.5 mean(w CE) + 0.5 JS_sum, with the default js_reduction="code" (lam_c weight 0.5 * 32 * mean
    JS). Two forward passes of a fake model whose output is the logits; the step casts them to float32."""
    z, z2, y = nla_inputs(32, seed=7)
    out, _, _ = nla_step(32, z, z2, y, epoch)
    expected = ref_nla_loss(f32(z), f32(z2), y, epoch, EPOCHS)
    assert_close(out["loss"], expected)
    eps = ref_exponential_scheduler(epoch, EPOCHS)
    ce = ref_cross_entropy(f32(z), y)
    assert_close(out["naw_ce"], 0.5 * ce.mean() + 0.5 * (ce * ref_naw_value(f32(z), y, eps)).mean())
    assert_close(out["js"], ref_js_sum(f32(z), f32(z2)))                        # "code" at 32 = the sum
    assert_close(out["loss"] - out["naw_ce"], 0.5 * 32 * ref_js_sum(f32(z), f32(z2)) / 32)


def test_nla_training_step_pairwise_matches_legacy_code_at_batch_32():
    """naw_form="pairwise": the training loss == the official loss before b86f31f (N x N NAW, src/loss.py@b86f31f^)."""
    z, z2, y = nla_inputs(32, seed=8)
    out, _, _ = nla_step(32, z, z2, y, 4, naw_form="pairwise")
    assert_close(out["loss"], ref_nla_loss(f32(z), f32(z2), y, 4, EPOCHS, legacy=True))


def test_nla_training_step_at_batch_64_is_the_mean_of_two_code_batches_of_32():
    """KEY property of js_reduction="code": at B = 64 ferlib's loss == the mean of the official loss over two
    batches of 32 (src/train.py:38-40), so the gradient w.r.t. every sample's logits (both views) is half the
    code's at 32, the same per-sample balance of CE, NAW-CE and JS. Gradient checked against central
    differences of the official loss. Negative control: js_reduction="sum" (2x the code's JS) differs."""
    epoch = 5
    z, z2, y = nla_inputs(64, seed=9, tie=False)
    out, image, image_flip = nla_step(64, z, z2, y, epoch)
    zr, z2r = f32(z), f32(z2)
    halves = [slice(0, 32), slice(32, 64)]
    expected = np.mean([ref_nla_loss(zr[h], z2r[h], y[h], epoch, EPOCHS) for h in halves])
    assert_close(out["loss"], expected)

    out["loss"].backward()
    rows = [0, 1, 17, 31, 32, 40, 63]
    entries = [(i, c) for i in rows for c in (0, 4)]

    def half_loss(i, view):
        h = halves[i // 32]
        def f(x):
            a, b = (x, z2r[h]) if view == 0 else (zr[h], x)
            return 0.5 * ref_nla_loss(a, b, y[h], epoch, EPOCHS)
        return h, f

    for view, (grad, base) in enumerate([(image.grad, zr), (image_flip.grad, z2r)]):
        for i, c in entries:
            h, f = half_loss(i, view)
            fd = central_difference(f, base[h].copy(), [(i - h.start, c)])[0]
            assert grad[i, c].item() == pytest.approx(fd, abs=TOL, rel=1e-5)

    literal, _, _ = nla_step(64, z, z2, y, epoch, js_reduction="sum")
    assert abs(literal["loss"].item() - expected) > 1e-3


# =========================================================================== LDLVA: numpy translation of the code
LDLVA_C, LDLVA_D, LDLVA_KNN = 7, 16, 8
LDLVA_CFG = dict(batch_size=32, lamb_lr=10.0, lamb_beta=0.0, lamb_init=0.5, gamma=0.01, centers_alpha=0.5)
# cfg_files/config_resnet18_raf.py:12,21-25; utils.py:34 (centers_alpha=0.5)


def ref_knn_weights(central_va, neighbors_index):
    """official: minhnhatvt/label-distribution-learning-fer-tf@a741b36 src/data_utils.py:193-199."""
    neighbor_va = central_va[neighbors_index]                      # (N, K, 2)
    dist = central_va - neighbor_va.transpose((1, 0, 2))           # (K, N, 2)
    dist = dist.transpose((1, 0, 2))
    dist = np.sum(np.abs(dist), axis=-1)
    return np.exp(-dist / 0.5), dist


def ref_construct_target_distribution(l_gt, y_aux, knn_weights, calib_scores, lamb, num_classes):
    """official: ...fer-tf@a741b36 src/utils.py:13-30 (y_aux (B, K, C), knn_weights/calib (B, K), lamb (B, 1))."""
    knn_weights = knn_weights * calib_scores
    neighbor_ld = np.squeeze(np.transpose(y_aux, (0, 2, 1)) @ knn_weights[..., None], axis=-1)   # (B, C)
    neighbor_ld = neighbor_ld / knn_weights.sum(-1, keepdims=True)
    return lamb * np.eye(num_classes)[l_gt] + (1 - lamb) * neighbor_ld, neighbor_ld


def ref_celoss(y_true, y_pred, sample_weight=None):
    """official: ...fer-tf@a741b36 src/utils.py:104-108 (y_pred = softmax probabilities, log(p + 1e-10))."""
    per = np.sum(-y_true * np.log(y_pred + 1e-10), axis=-1)
    return np.mean(per * sample_weight) if sample_weight is not None else np.mean(per)


def ref_adaptive_simnet(feat, feat_aux, dense, out_dense, bn_eps=1e-3):
    """official: ...fer-tf@a741b36 src/models.py:11-21,31-37, called with training=True (src/train.py:73).

    Dense -> BatchNormalization (training: batch statistics, biased variance, Keras epsilon 1e-3) -> ReLU, twice,
    Dense(1) -> max(x, -1.3) -> sigmoid. dense: [(W (in, out), b, gamma, beta)] x 2; out_dense: (W, b).
    """
    b, k, d = feat_aux.shape
    x = np.concatenate([np.repeat(feat[:, None, :], k, axis=1), feat_aux], axis=-1).reshape(b * k, 2 * d)
    for w, bias, gamma, beta in dense:
        h = x @ w + bias
        mean, var = h.mean(0), h.var(0)
        x = np.maximum(gamma * (h - mean) / np.sqrt(var + bn_eps) + beta, 0.0)
    w, bias = out_dense
    return np_sigmoid(np.maximum(x @ w + bias, -1.3)).reshape(b, k)


def ref_discriminative_loss(x, y, x_aux, y_aux, lamb_hat, indices, centers):
    """official: ...fer-tf@a741b36 src/utils.py:44-70 (call); returns (loss, X, Y, lamb) kept for compute_grads."""
    d = x.shape[1]
    big_x = np.concatenate([x, x_aux.reshape(-1, d)], axis=0)
    big_y = np.concatenate([y, y_aux.reshape(-1)], axis=0)
    lamb = np_sigmoid(lamb_hat[indices])                          # (M, 1), stop-gradient in the code
    dist = np.square(big_x - centers[big_y])
    return 0.5 * np.sum(lamb * dist) / len(big_x), big_x, big_y, lamb


def ref_compute_grads(big_x, big_y, lamb, centers, num_classes):
    """official: ...fer-tf@a741b36 src/utils.py:72-78."""
    diff = big_x - centers[big_y]
    onehot = np.eye(num_classes)[big_y]
    return (onehot.T @ (-lamb * diff)) / (onehot.T.sum(1)[:, None] + 1) / len(big_x)


def ref_repulsion(centers):
    """S_B of official ...fer-tf@a741b36 src/utils.py:86-95: sum_{i<j} exp(-||c_i - c_j||^2 / D)."""
    c, d = centers.shape
    return sum(np.exp(-np.sum(np.square(centers[i] - centers[j])) / d) for i in range(c) for j in range(i + 1, c))


def ref_repulsion_grad(centers):
    """d S_B / d c (the GradientTape of src/utils.py:87-96), written out: sum_{j != i} e_ij (-2/D)(c_i - c_j)."""
    d = centers.shape[1]
    diff = centers[:, None, :] - centers[None, :, :]
    e = np.exp(-np.sum(diff ** 2, -1) / d)
    np.fill_diagonal(e, 0.0)
    return (-2.0 / d) * np.sum(e[..., None] * diff, axis=1)


def ref_update_centers(centers, grads, lr=0.5):
    """official: ...fer-tf@a741b36 src/utils.py:80-100: SGD(0.5) on the pull grads, then SGD(0.5) on 0.1 dS_B/dc."""
    centers = centers - lr * grads
    return centers - lr * 0.1 * ref_repulsion_grad(centers)


def ref_theta_grad_and_step(theta_b, l_gt, probs, neighbor_ld, lr=10.0, sample_weights=None):
    """official: ...fer-tf@a741b36 src/train.py:80-102 (lamb = sigmoid(lamb_hat[idx]); t = lamb onehot + (1-lamb) d;
    CELoss = batch MEAN; lamb_optim = SGD(lamb_lr, lamb_beta) with lr 10, momentum 0 (train.py:142, RAF cfg)).

    d CELoss / d theta_i = (1/B) s_i sigma'(theta_i) sum_k -(onehot_ik - d_ik) log(p_ik + 1e-10).
    Returns (grad (B,), theta_b - lr * grad).
    """
    b, c = probs.shape
    s = np.ones(b) if sample_weights is None else sample_weights
    lam = np_sigmoid(theta_b)
    dce_dlam = np.sum(-(np.eye(c)[l_gt] - neighbor_ld) * np.log(probs + 1e-10), axis=1)
    grad = s * dce_dlam * lam * (1 - lam) / b
    return grad, theta_b - lr * grad


def ldlva_inputs(b: int, seed: int):
    """Labels, logits (moderate), neighbour predictions, a_ij, c_ij, theta for b central samples."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, LDLVA_C, size=b).astype(np.int64)
    logits = rng.normal(0.0, 1.5, size=(b, LDLVA_C))
    prob_nb = np_softmax(rng.normal(0.0, 1.5, size=(b, LDLVA_KNN, LDLVA_C)))
    sim = np.exp(-rng.uniform(0.0, 2.0, size=(b, LDLVA_KNN)) / 0.5)
    calib = np_sigmoid(np.maximum(rng.normal(0.0, 1.0, size=(b, LDLVA_KNN)), -1.3))
    theta = rng.normal(0.5, 1.0, size=b)
    return y, logits, prob_nb, sim, calib, theta


# --------------------------------------------------------------------------- LDLVA tests
def test_ldlva_local_similarity_matches_knn_weights():
    """local_similarity(L1 distance) and, for a 2-column (VA) aux, _neighbour_distances(mode "auto", unscaled)
    == official knn_weights = exp(-||v_i - v_j||_1 / 0.5) (src/data_utils.py:193-199)."""
    rng = np.random.default_rng(10)
    va = rng.uniform(-1, 1, size=(20, 2))
    nbr = np.stack([rng.choice(np.delete(np.arange(20), i), LDLVA_KNN, replace=False) for i in range(20)])
    expected, dist = ref_knn_weights(va, nbr)
    assert_close(local_similarity(t64(dist), 0.5), expected)
    ours = _neighbour_distances(va.astype(np.float32), nbr, "auto")
    assert_close(local_similarity(torch.from_numpy(ours).double(), 0.5), expected)


def test_ldlva_aggregation_and_target_match_construct_target_distribution():
    """aggregate_neighbours + target_distribution == official construct_target_distribution (src/utils.py:13-30),
    t = lam onehot + (1 - lam) d, lam = sigmoid(theta) (src/train.py:80-85)."""
    y, _, prob_nb, sim, calib, theta = ldlva_inputs(6, seed=11)
    d = ldlva_aggregate(t64(prob_nb), t64(sim), t64(calib))
    lam = uncertainty_factor(t64(theta))
    t = target_distribution(torch.from_numpy(y), d, lam)
    expected_t, expected_d = ref_construct_target_distribution(y, prob_nb, sim, calib, np_sigmoid(theta)[:, None],
                                                               LDLVA_C)
    assert_close(d, expected_d)
    assert_close(t, expected_t)


def test_ldlva_aggregation_invariant_to_the_stored_row_scaling_of_a():
    """ferlib stores a_ij / max_j a_ij (documented); d_i from the rescaled rows == official d_i from raw a_ij."""
    y, _, prob_nb, sim, calib, theta = ldlva_inputs(6, seed=12)
    scaled = sim / sim.max(1, keepdims=True)
    d = ldlva_aggregate(t64(prob_nb), t64(scaled), t64(calib))
    _, expected_d = ref_construct_target_distribution(y, prob_nb, sim, calib, np_sigmoid(theta)[:, None], LDLVA_C)
    assert_close(d, expected_d)


def test_ldlva_soft_cross_entropy_matches_celoss_on_moderate_logits():
    """soft_cross_entropy (log_softmax) == official CELoss (src/utils.py:104-108, log(softmax + 1e-10)) to 1e-6 on
    moderate logits; the 1e-10 is the only (documented) difference."""
    y, logits, prob_nb, sim, calib, theta = ldlva_inputs(6, seed=13)
    t, _ = ref_construct_target_distribution(y, prob_nb, sim, calib, np_sigmoid(theta)[:, None], LDLVA_C)
    assert_close(soft_cross_entropy(t64(logits), t64(t)), ref_celoss(t, np_softmax(logits)))


def test_ldlva_calibration_score_matches_adaptive_simnet_in_training_mode():
    """calibration_score(CalibrationNet) == official AdaptiveSimNet with training=True (src/models.py:11-37;
    src/train.py:73): train-mode BatchNorm over the B*K pairs, Keras epsilon 1e-3, clamp -1.3, sigmoid."""
    torch.manual_seed(0)
    net = CalibrationNet(LDLVA_D).double().train()
    with torch.no_grad():                                  # non-trivial BN affine parameters
        for m in net.net:
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    rng = np.random.default_rng(14)
    feat, feat_nb = rng.normal(size=(6, LDLVA_D)), rng.normal(size=(6, LDLVA_KNN, LDLVA_D))
    lin = [m for m in net.net if isinstance(m, nn.Linear)]
    bns = [m for m in net.net if isinstance(m, nn.BatchNorm1d)]
    dense = [(to_np(l.weight).T, to_np(l.bias), to_np(bn.weight), to_np(bn.bias)) for l, bn in zip(lin[:2], bns)]
    expected = ref_adaptive_simnet(feat, feat_nb, dense, (to_np(lin[2].weight).T, to_np(lin[2].bias)))
    got = calibration_score(net, t64(feat), t64(feat_nb), clamp=-1.3)
    assert_close(got, expected)
    assert (expected > np_sigmoid(-1.3) - 1e-12).all() and np.isclose(expected, np_sigmoid(-1.3)).any()


def test_ldlva_center_loss_matches_discriminative_loss():
    """center_loss over centrals + neighbours with stop-grad lambda == official DiscriminativeLoss.call
    (src/utils.py:44-70; src/train.py:89-91: indices = [idx, neighbor_idx])."""
    rng = np.random.default_rng(15)
    n, b = 40, 6
    labels_all = rng.integers(0, LDLVA_C, size=n)
    lamb_hat = rng.normal(0.5, 1.0, size=(n, 1))
    idx = rng.choice(n, b, replace=False)
    nbr = rng.integers(0, n, size=(b, LDLVA_KNN))
    x, x_aux = rng.normal(size=(b, LDLVA_D)), rng.normal(size=(b, LDLVA_KNN, LDLVA_D))
    centers = rng.normal(size=(LDLVA_C, LDLVA_D))
    expected, *_ = ref_discriminative_loss(x, labels_all[idx], x_aux, labels_all[nbr], lamb_hat,
                                           np.concatenate([idx, nbr.reshape(-1)]), centers)
    x_all = torch.cat([t64(x), t64(x_aux).flatten(0, 1)])
    y_all = torch.from_numpy(np.concatenate([labels_all[idx], labels_all[nbr].reshape(-1)]))
    lam_all = torch.sigmoid(t64(lamb_hat[:, 0])[torch.from_numpy(np.concatenate([idx, nbr.reshape(-1)]))])
    assert_close(center_loss(x_all, y_all, t64(centers), lam_all), expected)


def test_ldlva_center_pull_and_push_match_update_centers():
    """center_pull then center_push == official compute_grads + update_centers (src/utils.py:72-100): SGD 0.5 on
    onehot^T(-lam diff)/(n_k+1)/M, then SGD 0.5 on 0.1 dS_B/dc. Also checks the written-out dS_B/dc of the
    reference by central differences of S_B."""
    rng = np.random.default_rng(16)
    m = 6 * (1 + LDLVA_KNN)
    big_x, big_y = rng.normal(size=(m, LDLVA_D)), rng.integers(0, LDLVA_C - 1, size=m)   # class C-1 absent
    lamb = np_sigmoid(rng.normal(size=(m, 1)))
    centers = rng.normal(0, 0.3, size=(LDLVA_C, LDLVA_D))
    expected = ref_update_centers(centers, ref_compute_grads(big_x, big_y, lamb, centers, LDLVA_C), lr=0.5)
    pulled = center_pull(t64(centers), t64(big_x), torch.from_numpy(big_y), t64(lamb[:, 0]), 0.5)
    assert_close(center_push(pulled, 0.5, 0.1), expected)
    entries = [(0, 0), (3, 5), (6, 15)]
    fd = central_difference(ref_repulsion, centers, entries)
    assert_close(np.array([ref_repulsion_grad(centers)[e] for e in entries]), fd)
    # from all-zero centers (the official init, utils.py:38) the push gradient is 0 and only the pull moves them
    zero = np.zeros((LDLVA_C, LDLVA_D))
    expected0 = ref_update_centers(zero, ref_compute_grads(big_x, big_y, lamb, zero, LDLVA_C))
    got0 = center_push(center_pull(t64(zero), t64(big_x), torch.from_numpy(big_y), t64(lamb[:, 0]), 0.5), 0.5, 0.1)
    assert_close(got0, expected0)


def ferlib_theta_grad(y, logits, prob_nb, sim, calib, theta) -> torch.Tensor:
    """ferlib's d(batch-mean soft CE)/d theta through target_distribution (float64 autograd), as training_step."""
    theta_t = t64(theta).requires_grad_(True)
    d = ldlva_aggregate(t64(prob_nb), t64(sim), t64(calib))
    t = target_distribution(torch.from_numpy(y), d, uncertainty_factor(theta_t))
    soft_cross_entropy(t64(logits), t).backward()
    return theta_t.grad


def test_ldlva_theta_step_at_batch_32_matches_code():
    """At B = 32: ferlib's theta gradient (autograd through the target) and _step_theta (lr = 10 * 32/32) ==
    the official theta update (src/train.py:80-102; SGD lr 10, momentum 0, cfg_files/config_resnet18_raf.py)."""
    y, logits, prob_nb, sim, calib, theta = ldlva_inputs(32, seed=17)
    _, d = ref_construct_target_distribution(y, prob_nb, sim, calib, np_sigmoid(theta)[:, None], LDLVA_C)
    ref_grad, ref_theta = ref_theta_grad_and_step(theta, y, np_softmax(logits), d, lr=10.0)
    grad = ferlib_theta_grad(y, logits, prob_nb, sim, calib, theta)
    assert_close(grad, ref_grad)
    method = create_method("ldlva", num_classes=LDLVA_C, num_train=32, feature_dim=LDLVA_D).double()
    method.theta.copy_(t64(theta))
    method._step_theta(torch.arange(32), grad)
    assert_close(method.theta, ref_theta)


def test_ldlva_theta_step_at_batch_64_moves_theta_like_the_code_at_32():
    """KEY property of lamb_lr_batch = 32: a B = 64 batch made of two official batches of 32 moves every theta_i
    by the same amount as the official step on its batch of 32 (src/train.py:95-102, lr 10, batch-MEAN loss).
    ferlib's gradient is the mean over 64 (half the code's per sample) and its lr is 10 * 64/32.
    Negative control: lamb_lr_batch = 0 (no rescaling) moves theta half as far."""
    y, logits, prob_nb, sim, calib, theta = ldlva_inputs(64, seed=18)
    expected = []
    for h in (slice(0, 32), slice(32, 64)):
        _, d = ref_construct_target_distribution(y[h], prob_nb[h], sim[h], calib[h],
                                                 np_sigmoid(theta[h])[:, None], LDLVA_C)
        expected.append(ref_theta_grad_and_step(theta[h], y[h], np_softmax(logits[h]), d, lr=10.0)[1] - theta[h])
    expected = np.concatenate(expected)
    grad = ferlib_theta_grad(y, logits, prob_nb, sim, calib, theta)            # mean over 64
    for lamb_lr_batch, factor in ((32, 1.0), (0, 0.5)):
        method = create_method("ldlva", num_classes=LDLVA_C, num_train=64, feature_dim=LDLVA_D,
                               lamb_lr_batch=lamb_lr_batch).double()
        method.theta.copy_(t64(theta))
        method._step_theta(torch.arange(64), grad)
        assert_close(method.theta - t64(theta), factor * expected)
    assert np.abs(expected).min() > 1e-4                                       # the control is not vacuous


class FeatureModel(nn.Module):
    """A fake FERModel: 'images' are the features (embed = identity), head = a Linear, dropout = identity."""

    def __init__(self, d: int, c: int) -> None:
        super().__init__()
        self.head = nn.Linear(d, c)
        self.dropout = nn.Identity()

    def embed(self, x):
        return x


def test_ldlva_training_step_and_after_step_match_one_code_step_at_batch_32():
    """One LDLVA step (bank neighbours fed as fixed outputs; calibration on) at B = 32 == one official train_step
    (src/train.py:50-104): loss = CELoss(t, p) + 0.01 * center loss, theta after lamb_optim, centers after
    compute_grads/update_centers. Computed by ferlib in float32 (model, bank, method buffers)."""
    rng = np.random.default_rng(19)
    n, b = 48, 32
    torch.manual_seed(1)
    method = create_method("ldlva", num_classes=LDLVA_C, num_train=n, feature_dim=LDLVA_D,
                           neighbours="bank")
    model = FeatureModel(LDLVA_D, LDLVA_C)
    labels_all = rng.integers(0, LDLVA_C, size=n)
    nbr = np.stack([rng.choice(np.delete(np.arange(n), i), LDLVA_KNN, replace=False) for i in range(n)])
    sim = np.exp(-rng.uniform(0.0, 2.0, size=(n, LDLVA_KNN)) / 0.5)
    bank_feat = rng.normal(size=(n, LDLVA_D))
    bank_prob = np_softmax(rng.normal(0, 1.5, size=(n, LDLVA_C)))
    theta0 = rng.normal(0.5, 1.0, size=n)
    centers0 = rng.normal(0, 0.3, size=(LDLVA_C, LDLVA_D))
    with torch.no_grad():
        for name, value in (("labels", labels_all), ("neighbour_index", nbr), ("similarity", sim),
                            ("bank_feature", bank_feat), ("bank_prob", bank_prob), ("theta", theta0),
                            ("centers", centers0)):
            buf = getattr(method, name)
            buf.copy_(torch.as_tensor(value, dtype=buf.dtype))
    # what ferlib actually holds (float32), in float64 for the reference
    sim, bank_feat, bank_prob, theta0, centers0 = (to_np(getattr(method, k)).astype(np.float64) for k in
                                                   ("similarity", "bank_feature", "bank_prob", "theta", "centers"))
    idx = rng.choice(n, b, replace=False)
    x = rng.normal(size=(b, LDLVA_D)).astype(np.float32)
    batch = {"image": torch.from_numpy(x), "label": torch.from_numpy(labels_all[idx]),
             "index": torch.from_numpy(idx)}
    out = method.training_step(model, batch)
    out["loss"].backward()
    method.after_step()

    # ---- the official step, in numpy, on the same numbers
    x = x.astype(np.float64)
    w, bias = to_np(model.head.weight).astype(np.float64), to_np(model.head.bias).astype(np.float64)
    preds = np_softmax(x @ w.T + bias)                                  # ExpNet fc softmax (models.py:80,96)
    lin = [m for m in method.calibrator.net if isinstance(m, nn.Linear)]
    bns = [m for m in method.calibrator.net if isinstance(m, nn.BatchNorm1d)]
    dense = [(to_np(l.weight).T.astype(np.float64), to_np(l.bias), to_np(bn.weight), to_np(bn.bias))
             for l, bn in zip(lin[:2], bns)]
    calib = ref_adaptive_simnet(x, bank_feat[nbr[idx]], dense, (to_np(lin[2].weight).T, to_np(lin[2].bias)))
    y = labels_all[idx]
    t, d = ref_construct_target_distribution(y, bank_prob[nbr[idx]], sim[idx], calib,
                                             np_sigmoid(theta0[idx])[:, None], LDLVA_C)
    emotion_loss = ref_celoss(t, preds)
    dcm, big_x, big_y, lamb = ref_discriminative_loss(x, y, bank_feat[nbr[idx]], labels_all[nbr[idx]],
                                                      theta0[:, None], np.concatenate([idx, nbr[idx].reshape(-1)]),
                                                      centers0)
    _, theta_b = ref_theta_grad_and_step(theta0[idx], y, preds, d, lr=LDLVA_CFG["lamb_lr"])
    theta_expected = theta0.copy()
    theta_expected[idx] = theta_b
    centers_expected = ref_update_centers(centers0, ref_compute_grads(big_x, big_y, lamb, centers0, LDLVA_C))

    assert_close(out["cls"], emotion_loss)
    assert_close(out["dis"], dcm)
    assert_close(out["loss"], emotion_loss + LDLVA_CFG["gamma"] * dcm)
    assert_close(method.target[torch.from_numpy(idx)], t)
    assert_close(method.theta, theta_expected)
    assert_close(method.centers, centers_expected)
    assert np.abs(theta_expected - theta0).max() > 1e-3                 # theta did move


# =========================================================================== LA-Net: numpy translation of the code
def ref_neighbor(features, k):
    """official: hw-tony/LA-Net@74bb121 layers.py:147-158 (cosine similarity, self set to -1, top-K mask)."""
    f = features / np.linalg.norm(features, axis=-1, keepdims=True)
    similarity = f @ f.T
    b = len(f)
    similarity[range(b), range(b)] = -1.0
    top_idx = np.argsort(-similarity, axis=-1, kind="stable")[:, :k]
    neighbor = np.zeros_like(similarity)
    neighbor[np.repeat(np.arange(b), k), top_idx.reshape(-1)] = 1.0
    return neighbor


def ref_score(features, fc_in, fc_out):
    """official: hw-tony/LA-Net@74bb121 layers.py:97-114: softmax(MLP([h1_i ; h2_j])), h = fc_in(f); (B, B, 2).

    fc_in: (W, b); fc_out: [(W, b)] x 3 of Linear(d, d/2), Linear(d/2, d/4), Linear(d/4, 2) (torch layout).
    """
    b, c = features.shape
    h = features @ fc_in[0].T + fc_in[1]
    f1, f2 = h[:, :c // 2], h[:, c // 2:]
    f = np.concatenate([np.repeat(f1[:, None, :], b, axis=1), np.repeat(f2[None, :, :], b, axis=0)], axis=-1)
    (w1, b1), (w2, b2), (w3, b3) = fc_out
    x = np.maximum(f @ w1.T + b1, 0.0)
    x = np.maximum(x @ w2.T + b2, 0.0)
    return np_softmax(x @ w3.T + b3, -1)


def ref_lde_forward(fer_score, fer_neighbors, lm_score, lm_neighbors, logits, bank, idx, momentum=0.9):
    """official: hw-tony/LA-Net@74bb121 layers.py:128-145 (aggregation, EMA target) and :160-162 (bank update).

    fer_score/lm_score: (B, B) c_ij = score(...)[:, :, 0]. Returns (return_targets (B, C), new bank (N, C)).
    """
    fer_weight = fer_score * fer_neighbors
    lm_weight = lm_score * lm_neighbors
    eps = 1e-8
    fer_weight = (fer_weight + eps / fer_neighbors.shape[-1]) / (fer_weight.sum(-1, keepdims=True) + eps)
    lm_weight = (lm_weight + eps / lm_neighbors.shape[-1]) / (lm_weight.sum(-1, keepdims=True) + eps)
    p = np_softmax(logits, -1)
    targets = 0.5 * (fer_weight @ p + lm_weight @ p)
    return_targets = bank[idx] * momentum + targets * (1 - momentum)
    new_bank = bank.copy()
    new_bank[idx] = bank[idx] * momentum + targets * (1 - momentum)
    return return_targets, new_bank


def ref_kl_batchmean(fer_preds, targets):
    """official: hw-tony/LA-Net@74bb121 loss.py:32-34 (F.kl_div(log_softmax, t, 'batchmean'); 0 log 0 = 0)."""
    tlogt = np.where(targets > 0, targets * np.log(np.where(targets > 0, targets, 1.0)), 0.0)
    return np.sum(tlogt - targets * np_log_softmax(fer_preds, -1)) / len(fer_preds)


def ref_awing(y_pred, y, alpha=2.1, omega=14.0, epsilon=1.0, theta=0.5):
    """official: hw-tony/LA-Net@74bb121 utils.py:46-64 (AWingLoss.__call__, elementwise)."""
    a = omega * (1 / (1 + (theta / epsilon) ** (alpha - y))) * (alpha - y) * (
        (theta / epsilon) ** (alpha - y - 1)) / epsilon
    c = theta * a - omega * np.log(1 + (theta / epsilon) ** (alpha - y))
    case1 = np.abs(y - y_pred) < theta
    loss = np.zeros_like(y_pred)
    loss[case1] = omega * np.log(1 + np.abs((y[case1] - y_pred[case1]) / epsilon) ** (alpha - y[case1]))
    loss[~case1] = a[~case1] * np.abs(y[~case1] - y_pred[~case1]) - c[~case1]
    return loss


def ref_weight_map(img):
    """official: hw-tony/LA-Net@74bb121 utils.py:39-41 (cv2.dilate 3x3 ones, i.e. a 3x3 max over in-image pixels;
    WeightMap = 10 where dilate > 0.2, else 1)."""
    h, w = img.shape
    padded = np.full((h + 2, w + 2), -np.inf)
    padded[1:-1, 1:-1] = img
    dilate = np.max([padded[i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)
    weight = np.ones_like(img)
    weight[np.where(dilate > 0.2)] = 10
    return weight


def ref_pseudo(targets_q, idx, confidence=0.7):
    """official: hw-tony/LA-Net@74bb121 resnet.py:195-197 (argmax t, ambiguous -> -idx)."""
    confidence_q, pseudo_q = targets_q.max(1), targets_q.argmax(1)
    low = confidence_q < confidence
    pseudo_q = pseudo_q.copy()
    pseudo_q[low] = -idx[low]
    return pseudo_q


def ref_cal(q, k, bank, label, target_bank, con_t=0.1):
    """official: hw-tony/LA-Net@74bb121 resnet.py:207-218 (bank (D, M) columns; target_bank (M,) float)."""
    n = q.shape[0]
    n_mask = (label[:, None] == label[None, :]).astype(np.float64)
    d_mask = (label[:, None] == target_bank[None, :]).astype(np.float64)
    pos = (q @ k.T).reshape(n * n, 1)
    neg = np.repeat((q @ bank + d_mask * -1e10)[:, None, :], n, axis=1).reshape(n * n, -1)
    logits = np.concatenate([pos, neg], axis=-1) / con_t
    loss = (np_logsumexp(logits, -1) - logits[:, 0]).reshape(n, n)   # CrossEntropyLoss(none), class 0
    return (loss * n_mask / n_mask.sum(-1, keepdims=True)).sum(-1).mean()


def ref_set_num(num, n, epoch, max_epoch, class_num):
    """official: hw-tony/LA-Net@74bb121 dataloader.py:149-155 (MySampler.set_num): (prob, per-class counts)."""
    prob = [item / n for item in num]
    prob = [max(1 - epoch / max_epoch, 0) * item + min(epoch / max_epoch, 1) * (1 / class_num) for item in prob]
    counts = [int(np.ceil(prob[i] * n)) for i in range(len(prob) - 1)]
    counts.append(n - sum(counts))
    return np.array(prob), np.array(counts)


def unit_rows(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --------------------------------------------------------------------------- LA-Net tests
@pytest.mark.parametrize("k", [3, 8])
def test_lanet_knn_mask_matches_neighbor(k):
    """knn_mask == official _neighbor (layers.py:147-158): top-K cosine neighbours, self excluded."""
    feats = np.random.default_rng(20).normal(size=(12, 10))
    expected = ref_neighbor(feats, k)
    assert_close(knn_mask(t64(feats), k), expected, 0)
    assert np.trace(expected) == 0 and (expected.sum(1) == k).all()


def edge_scorer_weights(scorer: EdgeScorer):
    """ferlib's EdgeScorer parameters in the official ``score`` module's layout (fc_in, fc_out[0, 2, 4])."""
    p = lambda layer: (to_np(layer.weight), to_np(layer.bias))  # noqa: E731
    return p(scorer.fc_in), [p(scorer.pair), p(scorer.rest[1]), p(scorer.rest[3])]


def test_lanet_edge_scorer_matches_score_module():
    """EdgeScorer (factorised first pair layer) == official score (layers.py:97-114) with the same weights:
    c_ij = softmax(MLP([h1_i ; h2_j]))[..., 0]."""
    torch.manual_seed(2)
    scorer = EdgeScorer(16).double()
    feats = np.random.default_rng(21).normal(size=(6, 16))
    fc_in, fc_out = edge_scorer_weights(scorer)
    assert_close(scorer(t64(feats)), ref_score(feats, fc_in, fc_out)[:, :, 0])


def test_lanet_lde_target_and_bank_update_match_label_distribution_estimation():
    """knn_mask + EdgeScorer + aggregate_neighbours per space, averaged, then lde_target (m = 0.9) for the target
    and for the bank update == official Label_Distribution_Estimation.forward/_update (layers.py:128-162)."""
    rng = np.random.default_rng(22)
    b, c, n, k = 12, 7, 30, 8
    u, v, logits = rng.normal(size=(b, 16)), rng.normal(size=(b, 8)), rng.normal(0, 2, size=(b, c))
    bank = np_softmax(rng.normal(0, 2, size=(n, c)))
    bank[::3] = np.eye(c)[rng.integers(0, c, size=len(bank[::3]))]     # some rows still one-hot (the init)
    idx = rng.choice(n, b, replace=False)
    torch.manual_seed(3)
    edge_u, edge_v = EdgeScorer(16).double(), EdgeScorer(8).double()

    probs = torch.softmax(t64(logits), 1)
    q = torch.stack([lanet_aggregate(knn_mask(t64(f), k), scorer(t64(f)), probs)
                     for f, scorer in ((u, edge_u), (v, edge_v))]).mean(0)
    history = t64(bank[idx])
    target = lde_target(history, q, 0.9)
    new_rows = lde_target(history, q.detach(), 0.9)

    fu, fv = ref_score(u, *edge_scorer_weights(edge_u))[:, :, 0], ref_score(v, *edge_scorer_weights(edge_v))[:, :, 0]
    expected, expected_bank = ref_lde_forward(fu, ref_neighbor(u, k), fv, ref_neighbor(v, k), logits, bank, idx)
    assert_close(target, expected)
    assert_close(new_rows, expected_bank[idx])


def test_lanet_aggregate_neighbours_eps_term_matches_code():
    """aggregate_neighbours == official weight normalisation (layers.py:132-142) incl. the eps/B term, on a row
    whose scores are all ~0 (there the eps terms decide: uniform weights)."""
    rng = np.random.default_rng(23)
    b, c = 6, 8
    mask = ref_neighbor(rng.normal(size=(b, 5)), 3)
    scores = rng.uniform(0.05, 1.0, size=(b, b))
    scores[0] = 0.0
    probs = np_softmax(rng.normal(size=(b, c)))
    got = lanet_aggregate(t64(mask), t64(scores), t64(probs))
    expected, _ = ref_lde_forward(scores, mask, scores, mask, np.log(probs), np.zeros((1, c)), np.zeros(b, int),
                                  momentum=0.0)
    assert_close(got, expected)
    assert_close(got[0], probs.mean(0))


def test_lanet_kl_per_sample_mean_matches_batchmean_kl():
    """kl_per_sample(z, t).mean() == official F.kl_div(log_softmax(z), t, 'batchmean') (loss.py:32-34), targets
    with exact zeros included (0 log 0 = 0). ferlib computes in float32."""
    rng = np.random.default_rng(24)
    b, c = 6, 8
    logits = rng.normal(0, 2, size=(b, c)).astype(np.float32).astype(np.float64)
    t = 0.9 * np.eye(c)[rng.integers(0, c, size=b)] + 0.1 * np_softmax(rng.normal(size=(b, c)))
    t[0] = np.eye(c)[2]                                                # one-hot row: zeros
    t = t.astype(np.float32).astype(np.float64)
    assert_close(kl_per_sample(t64(logits), t64(t)).mean(), ref_kl_batchmean(logits, t))


def test_lanet_awing_matches_official():
    """awing_loss == official AWingLoss (utils.py:46-64; alpha 2.1, omega 14, epsilon 1, theta 0.5) on both
    branches |y - y_hat| < theta and >= theta, with heatmap targets in [0, 1] incl. exact 0 and 1."""
    rng = np.random.default_rng(25)
    y = rng.uniform(0, 1, size=(6, 3, 5, 5)) ** 3
    y[:, :, 0, 0], y[:, :, 2, 2] = 0.0, 1.0
    y_pred = y + rng.normal(0, 0.6, size=y.shape)
    expected = ref_awing(y_pred, y)
    assert_close(awing_loss(t64(y_pred), t64(y)), expected)
    d = np.abs(y - y_pred)
    assert (d < 0.5).any() and (d >= 0.5).any()


def test_lanet_heatmap_weights_match_the_dilation_rule():
    """heatmap_weights == official weight map (utils.py:39-41): 10 where the 3x3 dilation > 0.2, else 1."""
    rng = np.random.default_rng(26)
    heat = rng.uniform(0, 1, size=(2, 3, 12, 12)) ** 6
    expected = np.stack([[ref_weight_map(h) for h in hs] for hs in heat])
    assert_close(heatmap_weights(t64(heat)), expected, 0)


def test_lanet_pseudo_labels_match_code_up_to_the_documented_offset():
    """pseudo_labels == official (resnet.py:195-197) for confident samples (max t >= 0.7 -> argmax); ambiguous
    ones get -(i + 1) where the code gives -i (documented departure: the code's sample 0 collides with class 0)."""
    rng = np.random.default_rng(27)
    b, c = 8, 7
    targets = 0.9 * np.eye(c)[rng.integers(0, c, size=b)] + 0.1 * np_softmax(rng.normal(size=(b, c)))
    targets[[0, 3, 5]] = np_softmax(rng.normal(0, 0.3, size=(3, c)))   # ambiguous rows, sample 0 among them
    targets[6] = 0.7 * np.eye(c)[4] + 0.3 / c                          # max t = 0.7 + 0.3/7 >= 0.7: confident
    idx = np.array([0, 11, 5, 2, 9, 4, 7, 1])
    expected = ref_pseudo(targets, idx)
    got = to_np(pseudo_labels(t64(targets), torch.from_numpy(idx), 0.7))
    low = targets.max(1) < 0.7
    np.testing.assert_array_equal(got[~low], expected[~low])
    np.testing.assert_array_equal(got[low], expected[low] - 1)
    assert expected[0] == 0 and got[0] == -1                           # the code's collision, ours avoids it


def contrastive_inputs(seed: int, b: int = 8, d: int = 8, m: int = 20):
    rng = np.random.default_rng(seed)
    q, k, bank = unit_rows(rng.normal(size=(b, d))), unit_rows(rng.normal(size=(b, d))), unit_rows(
        rng.normal(size=(m, d)))
    labels = np.array([0, 2, 0, -4, 2, 3, 0, -8])[:b]                  # repeated classes + ambiguous ids
    bank_labels = rng.choice([0, 1, 2, 3, -4, 5], size=m)
    empty = np.zeros(m, bool)
    empty[-5:] = True                                                  # never-written queue slots
    return q, k, bank, labels, bank_labels, empty


def test_lanet_supcon_loss_matches_cal():
    """supcon_loss(...).mean() == official MoCo_ResNet._cal (resnet.py:207-218): per (i, j) CE over
    [q_i.k_j, negatives]/tau, same-label bank entries masked, mean over positives then anchors; empty queue slots
    (code: label -1e10, resnet.py:170-171) are negatives for everyone."""
    q, k, bank, labels, bank_labels, empty = contrastive_inputs(28)
    code_bank_labels = np.where(empty, -1e10, bank_labels.astype(np.float64))
    expected = ref_cal(q, k, bank.T, labels.astype(np.float64), code_bank_labels, 0.1)
    ours_bank_labels = torch.from_numpy(np.where(empty, torch.iinfo(torch.long).min, bank_labels))
    got = supcon_loss(t64(q), t64(k), t64(bank), torch.from_numpy(labels), ours_bank_labels, 0.1)
    assert_close(got.mean(), expected)


def test_lanet_supcon_loss_with_groups_matches_cal_per_gpu():
    """With groups of 4 (positive_batch), mean_i L_i == the mean over 'GPUs' of official _cal on each 4-sample
    local batch against the shared bank (resnet.py:199-201; DDP averages the per-GPU losses' gradients)."""
    q, k, bank, labels, bank_labels, empty = contrastive_inputs(29)
    code_bank_labels = np.where(empty, -1e10, bank_labels.astype(np.float64))
    expected = np.mean([ref_cal(q[h], k[h], bank.T, labels[h].astype(np.float64), code_bank_labels, 0.1)
                        for h in (slice(0, 4), slice(4, 8))])
    ours_bank_labels = torch.from_numpy(np.where(empty, torch.iinfo(torch.long).min, bank_labels))
    got = supcon_loss(t64(q), t64(k), t64(bank), torch.from_numpy(labels), ours_bank_labels, 0.1,
                      groups=chunk_ids(8, 4))
    assert_close(got.mean(), expected)


COUNTS = [30, 7, 12, 50, 25, 9, 17]


@pytest.mark.parametrize("epoch", [0, 3, 7, 13, 19])
def test_lanet_progressive_class_probs_and_counts_match_my_sampler(epoch):
    """progressive_class_probs == official MySampler.set_num probabilities (dataloader.py:149-152), and the
    per-class draws of progressive_balanced_order == its counts ceil(p_c N) (dataloader.py:153, classes 0..C-2);
    the last class: the code takes N - sum of the others, ferlib ceil(p N) (documented: <= C-1 extra draws)."""
    n, max_epoch = sum(COUNTS), 20
    prob, counts = ref_set_num(COUNTS, n, epoch, max_epoch, len(COUNTS))
    assert_close(progressive_class_probs(COUNTS, epoch, max_epoch), prob, 1e-12)
    labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
    order = progressive_balanced_order(labels, epoch, max_epoch, torch.Generator().manual_seed(epoch))
    got = np.bincount(to_np(order), minlength=n)
    per_class = np.bincount(labels[to_np(order)], minlength=len(COUNTS))
    np.testing.assert_array_equal(per_class[:-1], counts[:-1])
    assert 0 <= per_class[-1] - counts[-1] <= len(COUNTS) - 1
    # within a class: every sample once per full pass, then distinct extras (set_idx, dataloader.py:163-173)
    for c, m in enumerate(per_class):
        members = got[labels == c]
        assert members.max() - members.min() <= 1 and members.sum() == m
