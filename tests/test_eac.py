"""Tests of ferlib.methods.eac: EAC's equations against numpy translations of the official code
(``zyh-uaiaaaa/Erasing-Attention-Consistency@61efdfd``; the ``ref_*`` functions never import ferlib), the flip
of the attention maps as an exact inverse, the two erasing modes, and inference on the plain model."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ferlib.backbones import BackboneConfig, create_model
from ferlib.engine import TrainConfig
from ferlib.experiment import RunSpec, build, prepare_data, run
from ferlib.methods import create_method, method_class
from ferlib.methods.eac import (EACConfig, attention_consistency, class_activation_maps, erase_views,
                                feature_map_and_logits, flip_images, flip_maps)

from stubs import RunConfig as Cfg, TrainLabels as Train, assert_close, to_np

TINY = BackboneConfig(model_kwargs={"channels": [8, 16, 32, 64], "stem_width": 8})


# =========================================================================== numpy translations of the code
def ref_cam(x: np.ndarray, fc_weights: np.ndarray) -> np.ndarray:
    """official: src/model.py:31-39: fc_weights.view(1, K, C, 1, 1); hm = (x.unsqueeze(1) * fc_weights).sum(2)."""
    k, c = fc_weights.shape
    return (x[:, None] * fc_weights.reshape(1, k, c, 1, 1)).sum(2)


def ref_flip_grid(w: int, h: int) -> np.ndarray:
    """official: src/utils.py:23-32 (generate_flip_grid): (1, 2, h, w), channel 0 = -x, channel 1 = y in [-1, 1]."""
    x_ = np.broadcast_to(np.arange(w).reshape(1, -1), (h, w)).astype(np.float64)
    y_ = np.broadcast_to(np.arange(h).reshape(-1, 1), (h, w)).astype(np.float64)
    grid = np.stack([x_, y_])[None].copy()
    grid[:, 0] = 2 * grid[:, 0] / (w - 1) - 1
    grid[:, 1] = 2 * grid[:, 1] / (h - 1) - 1
    grid[:, 0] = -grid[:, 0]
    return grid


def ref_grid_sample(inp: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """torch.nn.functional.grid_sample(inp, grid, mode='bilinear', padding_mode='border', align_corners=True),
    written out: inp (N, C, H, W), grid (N, h, w, 2) with (x, y) in [-1, 1]; -1 and 1 are the corner pixels'
    centres."""
    n, c, hi, wi = inp.shape
    ix = np.clip((grid[..., 0] + 1) / 2 * (wi - 1), 0, wi - 1)
    iy = np.clip((grid[..., 1] + 1) / 2 * (hi - 1), 0, hi - 1)
    x0, y0 = np.floor(ix).astype(int), np.floor(iy).astype(int)
    x1, y1 = np.minimum(x0 + 1, wi - 1), np.minimum(y0 + 1, hi - 1)
    wx, wy = ix - x0, iy - y0
    out = np.zeros((n, c) + grid.shape[1:3])
    for b in range(n):
        v = inp[b]
        out[b] = ((1 - wx[b]) * (1 - wy[b]) * v[:, y0[b], x0[b]] + wx[b] * (1 - wy[b]) * v[:, y0[b], x1[b]]
                  + (1 - wx[b]) * wy[b] * v[:, y1[b], x0[b]] + wx[b] * wy[b] * v[:, y1[b], x1[b]])
    return out


def ref_flip_back(hm2: np.ndarray) -> np.ndarray:
    """official: src/loss.py:5-8 with src/main.py:62 (the grid of the map's own size, 7x7 in the code)."""
    n, _, h, w = hm2.shape
    grid = np.broadcast_to(ref_flip_grid(w, h), (n, 2, h, w)).transpose(0, 2, 3, 1)
    return ref_grid_sample(hm2, grid)


def ref_acloss(hm1: np.ndarray, hm2: np.ndarray) -> float:
    """official: src/loss.py:4-10 (ACLoss): F.mse_loss(hm1, flip(hm2)), the mean over every element."""
    return float(((hm1 - ref_flip_back(hm2)) ** 2).mean())


def ref_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """official: src/main.py:65 (nn.CrossEntropyLoss(), mean over the batch)."""
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def ref_eac_loss(x1, x2, fc_w, fc_b, y, lam=5.0) -> tuple[float, float, float]:
    """official: src/model.py:22-39 (avgpool + fc; CAMs) and src/main.py:59-69 (loss1 + lam * ACLoss) from the
    two views' last feature maps x1, x2 (N, C, h, w)."""
    logits = x1.mean((2, 3)) @ fc_w.T + fc_b
    ce = ref_cross_entropy(logits, y)
    ac = ref_acloss(ref_cam(x1, fc_w), ref_cam(x2, fc_w))
    return ce + lam * ac, ce, ac


# =========================================================================== the equations
def test_class_activation_maps_match_the_codes_attention():
    rng = np.random.default_rng(0)
    fmap, w = rng.normal(size=(3, 6, 4, 5)), rng.normal(size=(7, 6))
    maps = class_activation_maps(torch.tensor(fmap), torch.tensor(w))
    assert maps.shape == (3, 7, 4, 5)
    assert_close(maps, ref_cam(fmap, w))


def test_class_activation_maps_use_detached_classifier_weights():
    fmap = torch.randn(2, 4, 3, 3, requires_grad=True)
    w = torch.randn(5, 4, requires_grad=True)
    class_activation_maps(fmap, w).pow(2).sum().backward()
    assert w.grad is None and fmap.grad is not None and fmap.grad.abs().sum() > 0


@pytest.mark.parametrize("w", [7, 3, 2])
def test_flip_maps_equals_the_codes_grid_sample(w):
    """At the code's 7x7 and at the 3x3 / 2x3 maps of 48 px inputs, the code's mirrored-grid grid_sample is the
    exact column flip, to rounding of its bilinear weights."""
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(2, 7, w if w != 2 else 3, w))
    assert_close(flip_maps(torch.tensor(maps)), ref_flip_back(maps))
    # torch's own grid_sample on the code's float32 grid (src/loss.py:5-8) agrees too
    grid = torch.tensor(ref_flip_grid(maps.shape[3], maps.shape[2]), dtype=torch.float32)
    grid = grid.expand(2, -1, -1, -1).permute(0, 2, 3, 1)
    sampled = F.grid_sample(torch.tensor(maps, dtype=torch.float32), grid, mode="bilinear", padding_mode="border",
                            align_corners=True)
    assert_close(sampled, flip_maps(torch.tensor(maps, dtype=torch.float32)), tol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 8, 3, 3), (4, 2, 2, 5), (1, 1, 1, 1)])
def test_flip_mapping_is_an_exact_inverse(shape):
    maps = torch.randn(shape)
    assert torch.equal(flip_maps(flip_maps(maps)), maps)                     # an involution, bit for bit
    w = shape[-1]
    assert all(torch.equal(flip_maps(maps)[..., j], maps[..., w - 1 - j]) for j in range(w))  # the mirror
    images = torch.randn(shape)
    assert torch.equal(flip_images(flip_images(images)), images)
    # The maps of a mirrored feature map, mapped back, are the original maps exactly: the consistency is zero
    # for a flip-equivariant trunk.
    weight = torch.randn(5, shape[1])
    mirrored = class_activation_maps(flip_images(maps), weight)
    assert torch.equal(flip_maps(mirrored), class_activation_maps(maps, weight))
    assert torch.equal(attention_consistency(class_activation_maps(maps, weight), mirrored), torch.zeros(shape[0]))


def test_attention_consistency_matches_acloss_per_sample_and_in_the_mean():
    rng = np.random.default_rng(2)
    hm1, hm2 = rng.normal(size=(6, 7, 7, 7)), rng.normal(size=(6, 7, 7, 7))
    per_sample = attention_consistency(torch.tensor(hm1), torch.tensor(hm2))
    assert per_sample.shape == (6,)
    assert_close(per_sample.mean(), ref_acloss(hm1, hm2))
    assert_close(per_sample, [ref_acloss(hm1[i:i + 1], hm2[i:i + 1]) for i in range(6)])
    # a mean at any batch size: a batch of 6 is the mean of its halves' code losses
    assert_close(per_sample.mean(), (ref_acloss(hm1[:3], hm2[:3]) + ref_acloss(hm1[3:], hm2[3:])) / 2)


# =========================================================================== the training step
def make_eac(num_train: int, classes: int, **overrides):
    return create_method("eac", num_classes=classes, num_train=num_train, feature_dim=64, **overrides)


@pytest.fixture()
def model64():
    torch.manual_seed(0)
    return create_model(TINY, 5).double().train()


@pytest.mark.parametrize("erasing", ["independent", "shared"])
def test_training_step_matches_the_code(model64, erasing):
    b, k = 8, 5
    method = make_eac(b, k, erasing=erasing, erase=1.0)
    labels = torch.arange(b) % k
    method.bind(model64, Train(labels.numpy()), Cfg(seed=3))
    images = torch.randn(b, 1, 96, 96, dtype=torch.float64)   # a 3x3 last feature map
    x1, x2 = method.erased_views(images)              # the views this step will draw: a function of (seed, step)
    with torch.no_grad():                             # train-mode batch norm: the same maps as inside the step
        f1, f2 = to_np(model64.backbone.forward_features(x1)), to_np(model64.backbone.forward_features(x2))
    assert f1.shape[2:] == (3, 3)
    out = method.training_step(model64, {"image": images, "index": torch.arange(b), "label": labels})
    loss, ce, ac = ref_eac_loss(f1, f2, to_np(model64.head.weight), to_np(model64.head.bias), labels.numpy())
    assert_close(out["loss"], loss)
    assert_close(out["ce"], ce)
    assert_close(out["consistency"], ac)
    readout = method.readout()
    fw = to_np(model64.head.weight)
    per_sample = [ref_acloss(ref_cam(f1[i:i + 1], fw), ref_cam(f2[i:i + 1], fw)) for i in range(b)]
    assert_close(readout["consistency"], per_sample)
    assert_close(readout.score, per_sample)           # one visit: the mean over visits is that visit's value
    assert ac > 0


def test_score_averages_the_consistency_over_visits_and_erasing_is_seeded(model64):
    b = 6
    method = make_eac(b, 5)
    method.bind(model64, Train(np.zeros(b)), Cfg(seed=1))
    batch = {"image": torch.randn(b, 1, 32, 32, dtype=torch.float64), "index": torch.arange(b),
             "label": torch.zeros(b, dtype=torch.int64)}
    first_views = method.erased_views(batch["image"])
    assert all(torch.equal(a, c) for a, c in zip(first_views, method.erased_views(batch["image"])))
    method.training_step(model64, batch)
    first = method.readout()["consistency"].copy()
    assert "step" in method.state_dict() and int(method.step) == 1   # checkpointed: a resume erases the same
    later = method.erased_views(batch["image"])
    assert any(not torch.equal(a, c) for a, c in zip(first_views, later))
    method.training_step(model64, batch)
    second = method.readout()["consistency"]
    assert_close(method.readout().score, (first + second) / 2, tol=1e-6)


def test_classifier_learns_from_the_cross_entropy_only(model64):
    b, k = 8, 5
    labels = torch.arange(b) % k
    batch = {"image": torch.randn(b, 1, 32, 32, dtype=torch.float64), "index": torch.arange(b), "label": labels}
    grads = {}
    for lam in (0.0, 5.0):
        model64.zero_grad()
        method = make_eac(b, k, lam=lam)
        method.bind(model64, Train(labels.numpy()), Cfg())
        method.training_step(model64, batch)["loss"].backward()
        grads[lam] = {n: p.grad.clone() for n, p in model64.named_parameters()}
    assert torch.allclose(grads[0.0]["head.weight"], grads[5.0]["head.weight"], atol=1e-12)
    assert torch.allclose(grads[0.0]["head.bias"], grads[5.0]["head.bias"], atol=1e-12)
    assert not torch.allclose(grads[0.0]["backbone.conv1.weight"], grads[5.0]["backbone.conv1.weight"])
    assert not list(make_eac(b, k).parameters())      # EAC adds no parameters


# =========================================================================== the two views
def test_independent_views_mirror_then_erase_each_on_its_own_draw():
    images = torch.randn(64, 1, 16, 16)
    x, x_flip = erase_views(images, erase=1.0, scale=(0.1, 0.2), erasing="independent",
                            gen=torch.Generator().manual_seed(0))
    erased, erased_flip = (x == 0).all(1), (x_flip == 0).all(1)               # (B, H, W) masks, fill 0
    assert erased.any((1, 2)).all() and erased_flip.any((1, 2)).all()         # p = 1: every view erased
    assert torch.equal(x[~erased[:, None]], images[~erased[:, None]])         # elsewhere, the image itself
    mirror = flip_images(images)
    assert torch.equal(x_flip[~erased_flip[:, None]], mirror[~erased_flip[:, None]])
    assert not torch.equal(flip_images(erased), erased_flip)                  # two independent rectangles
    area = erased_flip.float().mean((1, 2))
    assert (area > 0.05).all() and (area < 0.3).all()


def test_shared_views_are_the_mirror_of_one_erased_image():
    images = torch.randn(8, 3, 16, 16)
    x, x_flip = erase_views(images, erase=1.0, scale=(0.02, 0.25), erasing="shared",
                            gen=torch.Generator().manual_seed(0))
    assert torch.equal(x_flip, flip_images(x)) and not torch.equal(x, images)
    for erasing in ("independent", "shared"):                                 # no erasing: the plain mirror
        x, x_flip = erase_views(images, erase=0.0, scale=(0.02, 0.25), erasing=erasing, gen=torch.Generator())
        assert torch.equal(x, images) and torch.equal(x_flip, flip_images(images))
    with pytest.raises(ValueError, match="erasing must be one of"):
        erase_views(images, erase=0.5, scale=(0.02, 0.25), erasing="mirror", gen=torch.Generator())


# =========================================================================== inference = the plain model
def test_feature_map_path_is_the_plain_model_and_its_cam_mean_plus_bias_the_logits():
    torch.manual_seed(0)
    model = create_model(TINY, 5).eval()
    x = torch.randn(3, 1, 32, 32)
    fmap, logits = feature_map_and_logits(model, x)
    assert torch.equal(logits, model(x))
    cam = class_activation_maps(fmap, model.head.weight)
    assert_close(cam.mean((2, 3)) + model.head.bias, to_np(logits), tol=1e-5)


def test_a_backbone_without_a_feature_map_is_named():
    class Tokens(torch.nn.Module):
        def forward_features(self, x):
            return x.flatten(2).transpose(1, 2)

    model = torch.nn.Module()
    model.backbone, model.dropout, model.head = Tokens(), torch.nn.Identity(), torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match="convolutional feature map"):
        feature_map_and_logits(model, torch.randn(1, 4, 3, 3))


def test_inference_uses_the_plain_model_with_ces_parameter_count(small_ferplus, tmp_path):
    spec = RunSpec(data=str(small_ferplus), noise="symmetric:0.3", method="eac", backbone=TINY, out=str(tmp_path),
                   train=TrainConfig(epochs=1, batch_size=16, image_size=32, progress=False, device="cpu",
                                     eval_batch_size=64))
    data, _ = prepare_data(spec)
    model_eac, method = build(spec, data)
    model_ce, _ = build(dataclasses.replace(spec, method="ce"), data)
    assert model_eac.state_dict().keys() == model_ce.state_dict().keys() and not list(method.parameters())
    result = run(spec)
    plain = create_model(TINY, data.num_classes)
    plain.load_state_dict(torch.load(tmp_path / result["run_id"] / "model.pt"))   # strict: a plain model


# =========================================================================== options and recipe
def test_config_defaults_validation_and_ablations():
    c = EACConfig()
    assert (c.lam, c.erase, c.erase_scale, c.erasing) == (5.0, 0.5, (0.02, 0.25), "independent")
    for bad in ({"erasing": "both"}, {"lam": -1.0}, {"erase": 1.5}, {"erase_scale": (0.3, 0.2)}):
        with pytest.raises(ValueError, match="EACConfig"):
            EACConfig(**bad)
    assert method_class("eac").ablations == {"no_consistency": {"lam": 0.0}, "no_erase": {"erase": 0.0},
                                            "shared_erase": {"erasing": "shared"}}
    assert method_class("eac").views == () and method_class("eac").model_parts == ("backbone", "dropout", "head")


def test_paper_recipe_has_the_codes_values():
    from ferlib.recipes import paper_recipe, resolve_recipe

    r = resolve_recipe("eac", "paper", TrainConfig(image_size=48))
    assert (r.optimizer, r.lr, r.weight_decay, r.scheduler, r.gamma, r.batch_size, r.epochs) == \
        ("adam", 2e-4, 1e-4, "exponential", 0.9, 32, 60)      # src/main.py:31, 36, 168-169; README.md:62
    assert (r.augment.flip, r.augment.crop, r.augment.erase) == (0.0, "none", 0.0)  # EAC erases each view itself
    assert r.augment.noise_std == pytest.approx(np.sqrt(30) / 255) and r.augment.noise_p == 0.5
    assert "resnet50_ft_weight.pkl" in paper_recipe("eac").unmatched
