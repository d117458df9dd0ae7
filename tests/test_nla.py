"""Tests of ferlib.methods.nla: NAW weights, the covariance ramp, both NAW forms, the JS term, the method."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ferlib.backbones import BackboneConfig, create_model
from ferlib.methods import create_method, parse_overrides
from ferlib.methods.nla import (
    NLAConfig,
    covariance_ramp,
    gaussian_density,
    logit_mixture_js,
    naw_coordinates,
    naw_covariance,
    naw_cross_entropy,
    naw_weight,
)

MEAN_T = torch.tensor([0.5, 0.5], dtype=torch.float64)
MEAN_F = torch.tensor([0.30, 0.15], dtype=torch.float64)


def hand_density(x: float, y: float, mx: float, my: float, a: float, b: float) -> float:
    """Bivariate normal pdf with covariance [[a, b], [b, a]], written out by hand."""
    dx, dy, det = x - mx, y - my, a * a - b * b
    quad = (a * dx * dx - 2 * b * dx * dy + a * dy * dy) / det
    return math.exp(-quad / 2) / (2 * math.pi * math.sqrt(det))


def weights_at(points, correct, eps: float = 1.0, pairwise: bool = False) -> torch.Tensor:
    return naw_weight(torch.tensor(points, dtype=torch.float64), torch.tensor(correct),
                      mean_true=MEAN_T, cov_true=naw_covariance(0.8, 2.0, -eps),
                      mean_false=MEAN_F, cov_false=naw_covariance(0.91, 6.0, 1.0), pairwise=pairwise)


def logits_for(p_gt: float, p_nn: float, k: int = 8) -> torch.Tensor:
    """Logits of one sample whose label 0 has probability p_gt and class 1 has p_nn (rest spread evenly)."""
    rest = (1 - p_gt - p_nn) / (k - 2)
    return torch.log(torch.tensor([[p_gt, p_nn] + [rest] * (k - 2)], dtype=torch.float64))


def make_nla(**overrides):
    return create_method("nla", num_classes=8, num_train=16, feature_dim=512, **overrides)


# --------------------------------------------------------------------------- NAW equations
def test_covariances_follow_the_code():
    t, f = naw_covariance(0.8, 2.0, -1.0), naw_covariance(0.91, 6.0, 1.0)
    assert torch.allclose(t, torch.tensor([[0.80, -0.48], [-0.48, 0.80]], dtype=torch.float64))
    assert f[0, 0].item() == pytest.approx(0.91 ** 2 + (0.91 / 6) ** 2)
    assert f[0, 1].item() == pytest.approx(0.91 ** 2 - (0.91 / 6) ** 2)


@pytest.mark.parametrize("point, correct, mean, ab, expected", [
    ((0.95, 0.03), True, (0.5, 0.5), (0.80, -0.48), 0.211),   # clean
    ((0.50, 0.45), True, (0.5, 0.5), (0.80, -0.48), 0.248),   # ambiguous, correct
    ((0.40, 0.50), False, (0.30, 0.15), (0.8511, 0.8051), 0.398),  # ambiguous, wrong
    ((0.05, 0.90), False, (0.30, 0.15), (0.8511, 0.8051), 0.002),  # confident, wrong ("noisy")
])
def test_naw_weight_matches_hand_computed_density(point, correct, mean, ab, expected):
    w = weights_at([point], [correct]).item()
    a, b = ab
    if not correct:  # exact code values instead of the rounded ones
        a, b = 0.91 ** 2 + (0.91 / 6) ** 2, 0.91 ** 2 - (0.91 / 6) ** 2
    assert w == pytest.approx(hand_density(*point, *mean, a, b), rel=1e-9)
    assert w == pytest.approx(expected, abs=1e-3)  # methods.md table


def test_naw_coordinates_and_branch():
    logits = torch.cat([logits_for(0.6, 0.3), logits_for(0.2, 0.5)]).float()
    p_gt, p_nn, correct = naw_coordinates(logits, torch.tensor([0, 0]))
    assert torch.allclose(p_gt, torch.tensor([0.6, 0.2]), atol=1e-6)
    assert torch.allclose(p_nn, torch.tensor([0.3, 0.5]), atol=1e-6)
    assert correct.tolist() == [True, False]


def test_epoch_ramp_changes_only_the_true_branch():
    assert covariance_ramp(0, 60) == 0.0
    assert covariance_ramp(2, 60) == pytest.approx(1 - math.exp(-0.5))
    assert covariance_ramp(59, 60) == pytest.approx(1.0, abs=1e-6)
    assert covariance_ramp(0, 60, enabled=False) == 1.0
    nla = make_nla()
    logits, label = torch.cat([logits_for(0.95, 0.03), logits_for(0.4, 0.5)]).float(), torch.tensor([0, 0])
    nla.on_epoch_start(0, 60)
    early = nla.weights(logits, label)["weight"]
    assert early[0].item() == pytest.approx(hand_density(0.95, 0.03, 0.5, 0.5, 0.8, 0.0), rel=1e-5)
    nla.on_epoch_start(30, 60)
    late = nla.weights(logits, label)["weight"]
    eps = covariance_ramp(30, 60)
    assert late[0].item() == pytest.approx(hand_density(0.95, 0.03, 0.5, 0.5, 0.8, -0.48 * eps), rel=1e-5)
    assert late[0] != early[0] and late[1] == early[1]


def test_pairwise_form_same_shape_different_values():
    points, correct = [(0.95, 0.03), (0.5, 0.45), (0.4, 0.5), (0.05, 0.9)], [True, True, False, False]
    per_sample, pairwise = weights_at(points, correct), weights_at(points, correct, pairwise=True)
    assert per_sample.shape == pairwise.shape == (4,)
    assert not torch.allclose(per_sample, pairwise, atol=1e-3)
    # pairwise weight of sample j = mean over i of the branch-j Gaussian's cross term between s_i and s_j
    s = torch.tensor(points, dtype=torch.float64)
    full = gaussian_density(s, MEAN_F, naw_covariance(0.91, 6.0, 1.0), pairwise=True)
    assert pairwise[3].item() == pytest.approx(full[:, 3].mean().item())
    # with a single sample both forms agree
    assert weights_at(points[:1], correct[:1], pairwise=True).item() == pytest.approx(per_sample[0].item())


# --------------------------------------------------------------------------- consistency term
def test_js_zero_for_identical_positive_and_symmetric():
    g = torch.Generator().manual_seed(0)
    z, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    mean = logit_mixture_js(z, z2, reduction="mean").item()
    assert logit_mixture_js(z, z.clone(), reduction="mean").item() == pytest.approx(0.0, abs=1e-7)
    assert mean > 0
    assert mean == pytest.approx(logit_mixture_js(z2, z, reduction="mean").item(), rel=1e-6)
    assert logit_mixture_js(z, z2, reduction="sum").item() == pytest.approx(4 * mean)
    # the default: the code's sum at its batch of 32, i.e. 32 x the per-sample mean at any batch size
    assert logit_mixture_js(z, z2).item() == pytest.approx(32 * mean)
    with pytest.raises(ValueError, match="reduction"):
        logit_mixture_js(z, z2, reduction="batchmean")


# --------------------------------------------------------------------------- the method
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(BackboneConfig(), 8)


def random_batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 48, 48, generator=g)
    return {"image": x, "image_flip": x.flip(3), "index": torch.arange(n),
            "label": torch.randint(0, 8, (n,), generator=g)}


@pytest.mark.parametrize("overrides", [{}, {"naw_form": "pairwise", "js_reduction": "sum", "detach_weight": True}])
def test_training_step_finite_backpropagates_and_records(model, overrides):
    nla = make_nla(**overrides)
    nla.on_epoch_start(3, 10)
    model.zero_grad()
    out = nla.training_step(model, random_batch())
    assert {"loss", "ce", "naw_ce", "js", "weight"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    r = nla.readout()
    for key in ("weight", "density", "p_gt", "p_nn", "score", "loss", "margin"):
        assert r[key].shape == (16,)
        assert np.isfinite(r[key][:8]).all() and np.isnan(r[key][8:]).all()
    wrong = r["p_gt"][:8] < r["p_nn"][:8]
    assert (r["score"][:8][wrong] >= 1).all() and (r["score"][:8][~wrong] <= 0).all()


def test_detach_weight_changes_gradient_not_loss(model):
    grads, losses = [], []
    for detach in (False, True):
        model.zero_grad()
        out = make_nla(detach_weight=detach).training_step(model, random_batch())
        out["loss"].backward()
        losses.append(out["loss"].item())
        grads.append(model.head.weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert not torch.allclose(grads[0], grads[1])


def test_create_method_and_options():
    nla = make_nla(naw_form="pairwise")
    assert nla.config.naw_form == "pairwise" and nla.views == ("flip",)
    assert NLAConfig().js_reduction == "code" and NLAConfig().js_code_batch == 32
    assert NLAConfig().detach_weight is False
    with pytest.raises(ValueError, match="unknown option"):
        make_nla(sigma=1.0)
    with pytest.raises(ValueError, match="naw_form"):
        make_nla(naw_form="nxn")
    with pytest.raises(ValueError, match="t_std_ratio"):
        make_nla(t_std_ratio=0.0)
    assert parse_overrides("nla", ["ramp=false", "lam_c=2"]) == {"ramp": False, "lam_c": 2.0}
    for variant, overrides in type(nla).ablations.items():
        assert make_nla(**overrides).config != NLAConfig(), variant


def test_gradient_through_the_naw_weight_rewards_a_confident_wrong_prediction():
    """Why NLA collapses from a random start (NLAConfig.detach_weight): for a misclassified sample in the band
    p_NN ~ 0.2-0.6, the official (undetached) NAW-CE pushes the wrong class UP (and the label up less), where a
    detached weight pushes the wrong class down. A pretrained start has few samples there; a random one has most."""
    method = make_nla()
    method.on_epoch_start(0, 30)
    label = torch.zeros(2, dtype=torch.long)
    logits = torch.zeros(2, 8)
    logits[0, 1] = 1.5                       # p_GT 0.087, p_NN 0.39: misclassified
    logits[1, 0] = 1.5                       # classified right: both forms push the label up
    grads = {}
    for detach in (False, True):
        z = logits.clone().requires_grad_(True)
        weight = method.weights(z, label)["weight"]
        weight = weight.detach() if detach else weight
        naw_cross_entropy(F.cross_entropy(z, label, reduction="none"), weight).backward()
        grads[detach] = z.grad
    assert grads[False][0, 1] < 0 < grads[True][0, 1]       # descent raises the wrong class / lowers it
    assert grads[False][0, 0] > grads[True][0, 0]
    assert grads[False][1, 0] < 0 and grads[True][1, 0] < 0
