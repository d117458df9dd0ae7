"""Tests of ferlib.methods.lanet(_parts): landmark targets and AWing, LDE, queues and contrast, the method."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ferlib.backbones import BackboneConfig, create_model
from ferlib.data import FERData
from ferlib.engine import TrainConfig
from ferlib.engine import make_batch as engine_batch
from ferlib.methods import create_method, parse_overrides
from ferlib.methods.lanet import LANetConfig, load_landmarks, parse_flip_permutation
from ferlib.methods.lanet_parts import (
    EdgeScorer, KeyQueue, aggregate_neighbours, awing_loss, expression_features, heatmap_weights, kl_per_sample,
    knn_mask, landmark_heatmaps, lde_target, progressive_balanced_order, progressive_class_probs, pseudo_labels, resnet_stem, supcon_loss,
    transform_landmarks,
)

N, K_CLASSES, P, BATCH = 32, 8, 5, 12


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def train_data() -> FERData:
    rng = np.random.default_rng(0)
    return FERData(images=rng.integers(0, 256, (N, 48, 48, 1), dtype=np.uint8),
                   labels=np.arange(N) % K_CLASSES, split=np.full(N, "train"),
                   ids=np.array([f"img{i}" for i in range(N)]), classes=tuple(f"c{i}" for i in range(K_CLASSES)))


@pytest.fixture(scope="module")
def landmark_file(tmp_path_factory) -> str:
    points = np.random.default_rng(1).uniform(0.2, 0.8, (N, P, 2)).astype(np.float32)
    points[3] = np.nan                                           # a failed detection
    path = tmp_path_factory.mktemp("lm") / "points.npy"
    np.save(path, points)
    return str(path)


def make(train_data, landmark_file, **overrides):
    torch.manual_seed(0)
    model = create_model(BackboneConfig(), K_CLASSES)
    method = create_method("lanet", num_classes=K_CLASSES, num_train=N, feature_dim=model.feature_dim,
                           landmarks=landmark_file, banksize=40, **overrides)
    method.bind(model, train_data, TrainConfig(image_size=48))
    method.on_epoch_start(3, 10)
    return model, method


def make_batch(train_data, seed: int = 0, size: int = BATCH) -> dict:
    cfg = TrainConfig(image_size=48, batch_size=size)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(N, generator=gen)[:size]
    return engine_batch(torch.from_numpy(train_data.images), torch.from_numpy(train_data.labels), None, idx, (),
                        cfg, torch.device("cpu"), gen)


# --------------------------------------------------------------------------- landmarks
def test_awing_zero_at_target_positive_elsewhere_and_hand_value():
    target = torch.rand(4, 3, 6, 6)
    assert torch.all(awing_loss(target, target) == 0)
    pred = target + torch.randn_like(target)                    # both sides of theta
    assert torch.all(awing_loss(pred, target)[pred != target] > 0)
    # |d| = 0.3 < theta, y = 0: omega ln(1 + 0.3^alpha)
    small = awing_loss(torch.tensor([0.3]), torch.tensor([0.0]))
    assert small.item() == pytest.approx(14 * math.log(1 + 0.3 ** 2.1), rel=1e-5)
    # |d| = 1 >= theta, y = 1: A d - C with e = alpha - y = 1.1, theta/epsilon = 0.5
    e = 1.1
    a = 14 * e * 0.5 ** (e - 1) / (1 + 0.5 ** e)
    c = 0.5 * a - 14 * math.log(1 + 0.5 ** e)
    assert awing_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(a - c, rel=1e-5)
    # continuous at d = theta
    below, above = awing_loss(torch.tensor([0.5 - 1e-4, 0.5]), torch.tensor([0.0, 0.0]))
    assert below.item() == pytest.approx(above.item(), abs=1e-2)


@pytest.mark.parametrize("round_centres", [True, False])
def test_heatmap_peaks_at_the_landmark_and_weights_the_foreground(round_centres):
    size = (12, 16)
    points = torch.tensor([[[(5 + 0.5) / 16, (7 + 0.5) / 12], [(0 + 0.5) / 16, (11 + 0.5) / 12]]])
    heat = landmark_heatmaps(points, size, 1.0, round_centres=round_centres)
    assert heat.shape == (1, 2, 12, 16)
    for p, (row, col) in enumerate([(7, 5), (11, 0)]):
        assert divmod(int(heat[0, p].argmax()), 16) == (row, col)
        assert heat[0, p, row, col].item() == pytest.approx(1.0)
    weights = heatmap_weights(heat)
    assert weights[0, 0, 7, 5] == 10 and weights[0, 0, 0, 15] == 1


def test_landmarks_follow_a_flip_and_a_shift_as_the_image_does():
    size, (row, col) = 48, (10, 7)
    image = torch.zeros(1, 1, size, size)
    image[0, 0, row, col] = 1.0
    shift = 2 * 4 / size                                          # 4 pixels, so the dot stays one pixel
    affine = torch.tensor([[[-1.0, 0.0, shift], [0.0, 1.0, -shift]]])  # mirror + translate
    out = F.grid_sample(image, F.affine_grid(affine, [1, 1, size, size], align_corners=False), align_corners=False)
    out_row, out_col = divmod(int(out.argmax()), size)
    points = torch.tensor([[[(col + 0.5) / size, (row + 0.5) / size], [0.25, 0.5]]])
    moved = transform_landmarks(points, affine)
    assert moved[0, 0, 0].item() * size - 0.5 == pytest.approx(out_col, abs=1e-4)
    assert moved[0, 0, 1].item() * size - 0.5 == pytest.approx(out_row, abs=1e-4)
    flip_only = torch.tensor([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    plain = transform_landmarks(points, flip_only)
    assert torch.allclose(plain[..., 0], 1 - points[..., 0]) and torch.allclose(plain[..., 1], points[..., 1])
    swapped = transform_landmarks(points, flip_only, parse_flip_permutation("1,0", 2))
    assert torch.allclose(swapped, plain[:, [1, 0]])
    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert torch.allclose(transform_landmarks(points, identity, parse_flip_permutation("1,0", 2)), points)


def test_load_landmarks_marks_failed_rows(train_data, landmark_file):
    points, ok = load_landmarks(landmark_file, train_data)
    assert points.shape == (N, P, 2) and np.isfinite(points).all()
    assert not ok[3] and ok.sum() == N - 1
    with pytest.raises(ValueError, match="permutation"):
        parse_flip_permutation("0,0,1", 3)


# --------------------------------------------------------------------------- LDE
def test_knn_excludes_self_and_respects_groups():
    feats = torch.randn(12, 6)
    feats[1] = feats[0]                                          # a duplicate ties with self
    mask = knn_mask(feats, 4)
    assert torch.all(mask.diagonal() == 0) and torch.all(mask.sum(1) == 4)
    assert mask[0, 1] == 1
    groups = torch.arange(12) // 6
    mask = knn_mask(feats, 8, groups)                            # K clipped to group size - 1
    assert torch.all(mask.sum(1) == 5) and mask[:6, 6:].sum() == 0 and mask[6:, :6].sum() == 0


def test_edge_scorer_equals_the_pairwise_concatenation():
    torch.manual_seed(0)
    scorer = EdgeScorer(16)
    feats = torch.randn(5, 16)
    h = scorer.fc_in(feats)
    pairs = torch.cat([h[:, None, :8].expand(5, 5, 8), h[None, :, 8:].expand(5, 5, 8)], -1)
    expected = scorer.rest(scorer.pair(pairs)).softmax(-1)[..., 0]
    assert torch.allclose(scorer(feats), expected, atol=1e-6)


def test_lde_target_is_a_distribution():
    torch.manual_seed(0)
    feats, logits = torch.randn(10, 8), torch.randn(10, 4)
    q = aggregate_neighbours(knn_mask(feats, 3), EdgeScorer(8)(feats), logits.softmax(1))
    target = lde_target(F.one_hot(torch.arange(10) % 4, 4).float(), q, 0.9)
    assert torch.all(target >= 0) and torch.allclose(target.sum(1), torch.ones(10))
    assert torch.all(kl_per_sample(logits, target) >= 0)


# --------------------------------------------------------------------------- contrast and queues
def test_queue_wraps_around():
    queue = KeyQueue(5, 2)
    queue.enqueue(torch.full((3, 2), 1.0), torch.tensor([1, 1, 1]))
    queue.enqueue(torch.full((4, 2), 2.0), torch.tensor([2, 2, 2, 2]))
    assert queue.labels.tolist() == [2, 2, 1, 2, 2] and int(queue.ptr) == 2
    queue.enqueue(torch.arange(12.0)[:, None].repeat(1, 2), torch.arange(12))  # more than the size
    assert int(queue.ptr) == (2 + 12) % 5
    assert sorted(queue.labels.tolist()) == [7, 8, 9, 10, 11]
    assert queue.labels[(int(queue.ptr) - 1) % 5] == 11                     # newest just before the pointer


def test_supcon_lower_for_aligned_than_shuffled_and_matches_direct_formula():
    torch.manual_seed(0)
    query = F.normalize(torch.randn(8, 16), dim=1)
    bank = F.normalize(torch.randn(20, 16), dim=1)
    bank_labels = torch.full((20,), KeyQueue.EMPTY)
    labels = -(torch.arange(8) + 1)                              # all ambiguous: instance discrimination
    aligned = supcon_loss(query, query, bank, labels, bank_labels, 0.1).mean()
    shuffled = supcon_loss(query, query[torch.roll(torch.arange(8), 1)], bank, labels, bank_labels, 0.1).mean()
    assert aligned < shuffled
    # against the code's formula: CE over [pos_ij, negatives_i] for every pair, averaged over positives
    labels = torch.tensor([0, 0, 1, 1, 2, -3, -4, 0])
    bank_labels = torch.tensor([0, 1, 5] * 6 + [0, 2])
    keys = F.normalize(torch.randn(8, 16), dim=1)
    got = supcon_loss(query, keys, bank, labels, bank_labels, 0.1)
    for i in range(8):
        neg = (query[i] @ bank.T)[bank_labels != labels[i]]
        pos = [j for j in range(8) if labels[j] == labels[i]]
        terms = [-torch.log_softmax(torch.cat([(query[i] @ keys[j])[None], neg]) / 0.1, 0)[0] for j in pos]
        assert got[i].item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-4)


def test_pseudo_labels_give_ambiguous_samples_unique_negative_ids():
    target = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    assert pseudo_labels(target, torch.tensor([0, 0, 5]), 0.7).tolist() == [0, -1, 1]


def test_progressive_class_probs_move_from_data_mix_to_uniform():
    counts = np.array([10, 30, 0, 60])
    assert np.allclose(progressive_class_probs(counts, 0, 8), counts / 100)
    for epoch in range(9):
        p = progressive_class_probs(counts, epoch, 8)
        assert p.sum() == pytest.approx(1.0) and p[2] == 0
    assert np.allclose(progressive_class_probs(counts, 8, 8), [1 / 3, 1 / 3, 0, 1 / 3])
    with pytest.raises(ValueError):
        progressive_class_probs([0, 0], 0, 8)


def test_progressive_order_is_a_permutation_first_and_oversamples_rare_classes_last():
    labels = np.array([0] * 90 + [1] * 10)
    first = progressive_balanced_order(labels, 0, 10, torch.Generator().manual_seed(0))
    assert sorted(first.tolist()) == list(range(100))
    last = progressive_balanced_order(labels, 10, 10, torch.Generator().manual_seed(0))
    picked = labels[last.numpy()]
    assert (picked == 1).sum() == 50 and (picked == 0).sum() == 50
    assert np.bincount(last[picked == 1].numpy(), minlength=100)[90:].tolist() == [5] * 10  # each rare one 5x
    assert len(set(last[picked == 0].tolist())) == 50                                      # no repeats needed
    again = progressive_balanced_order(labels, 10, 10, torch.Generator().manual_seed(0))
    assert torch.equal(last, again)


# --------------------------------------------------------------------------- the method
def test_training_step_backpropagates_to_the_right_modules(train_data, landmark_file):
    model, method = make(train_data, landmark_file)
    out = method.training_step(model, make_batch(train_data))
    assert set(out) == {"loss", "ce", "landmark", "kl", "contrastive"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for name, module in [("model", model), ("branch", method.branch), ("edge_u", method.edge_u),
                         ("edge_v", method.edge_v), ("proj_u", method.proj_u), ("proj_v", method.proj_v)]:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None and not p.requires_grad for p in method.key_encoder.parameters())
    assert int(method.queue_u.ptr) == BATCH % 40
    # momentum update moves the key encoder towards the online model after an optimiser step
    before = method.key_encoder["model"].head.weight.clone()
    torch.optim.SGD(list(model.parameters()) + list(method.parameters()), lr=1.0).step()
    method.after_step()
    expected = 0.999 * before + 0.001 * model.head.weight
    assert torch.allclose(method.key_encoder["model"].head.weight, expected, atol=1e-6)
    readout = method.readout()
    assert readout["target"].shape == (N, K_CLASSES) and np.allclose(readout["target"].sum(1), 1, atol=1e-5)
    assert readout["score"].shape == (N,) and readout["score"].min() >= 0 and readout["score"].max() > 0


def test_failed_landmarks_get_zero_weight(train_data, landmark_file):
    model, method = make(train_data, landmark_file, use_contrastive=False, use_lde=False)
    batch = make_batch(train_data)
    batch["index"][0] = 3                                        # the failed row
    failed = batch["index"] == 3
    per_sample = method._landmark_loss(method.branch(resnet_stem(model.backbone, batch["image"])), batch)
    assert torch.all(per_sample[failed] == 0) and torch.all(per_sample[~failed] > 0)


def test_inference_model_is_the_plain_fer_model(train_data, landmark_file):
    torch.manual_seed(0)
    ce_params = sum(p.numel() for p in create_model(BackboneConfig(), K_CLASSES).parameters())
    model, method = make(train_data, landmark_file, K=3)
    x = make_batch(train_data, size=6)["image"]
    model.eval()
    before = model(x)
    method.train()
    with torch.no_grad():
        method.training_step(model, make_batch(train_data, seed=1, size=6))  # model in eval: BN stats untouched
    assert sum(p.numel() for p in model.parameters()) == ce_params
    assert torch.equal(model(x), before)
    assert torch.allclose(model.head(expression_features(model.backbone, resnet_stem(model.backbone, x))), before,
                          atol=1e-5)


@pytest.mark.parametrize("overrides, absent", [
    ({"use_lde": False}, {"kl"}),
    ({"use_contrastive": False}, {"contrastive"}),
    ({"use_landmark_branch": False, "use_contrastive": False}, {"landmark", "contrastive"}),
])
def test_ablation_flags_remove_their_terms_and_modules(train_data, landmark_file, overrides, absent):
    model, method = make(train_data, landmark_file, K=3, **overrides)
    out = method.training_step(model, make_batch(train_data, size=6))
    assert set(out) == {"loss", "ce", "landmark", "kl", "contrastive"} - absent
    assert torch.isfinite(out["loss"])
    modules = {"kl": ["edge_u", "edge_v"], "contrastive": ["key_encoder", "proj_u", "queue_u"], "landmark": ["branch"]}
    for term in absent:
        assert all(getattr(method, m) is None for m in modules[term])


def test_config_validation_and_cli_options():
    with pytest.raises(ValueError, match="use_contrastive"):
        LANetConfig(use_landmark_branch=False)
    with pytest.raises(ValueError, match="graph_batch"):
        LANetConfig(graph_batch=1)
    assert parse_overrides("lanet", ["graph_batch=128", "positive_batch=none"]) == {"graph_batch": 128,
                                                                                   "positive_batch": None}
    opts = parse_overrides("lanet", ["positive_batch=64", "use_lde=false", "K=4"])
    assert LANetConfig(**opts).positive_batch == 64 and opts["K"] == 4 and opts["use_lde"] is False
