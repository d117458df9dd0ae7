"""Building blocks of LA-Net: landmark targets and loss, the landmark branch, label distribution estimation,
the expression-landmark contrastive loss with its key queues, the momentum encoder, the progressive sampler.

Wu & Cui, "LA-Net: Landmark-Aware Learning for Reliable Facial Expression Recognition under Label Noise",
ICCV 2023; official code ``hw-tony/LA-Net`` (``resnet.py``, ``layers.py``, ``utils.py``, ``dataloader.py``).
Notes: ``docs/methods/lanet.md``. Each function below is one equation of the paper or
of the code; :mod:`ferlib.methods.lanet` composes them into the method.

Coordinates: landmarks are ``(x, y)`` fractions of the image width/height in edge coordinates (0 = left/top
edge, pixel column ``j`` centred at ``(j + 0.5) / W``), as :mod:`ferlib.landmarks` gives them.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "transform_landmarks", "landmark_heatmaps", "heatmap_weights", "awing_loss",
    "LandmarkBranch", "resnet_stem", "expression_features",
    "knn_mask", "EdgeScorer", "aggregate_neighbours", "lde_target", "kl_per_sample",
    "pseudo_labels", "supcon_loss", "KeyQueue", "projection_head", "momentum_update",
    "progressive_class_probs", "progressive_balanced_order", "chunk_ids", "entropy",
]

# Reference heatmap side of the official code: 224 px input / stride 4 of layer1.
REFERENCE_HEATMAP_SIZE = 56


# --------------------------------------------------------------------------- landmark targets and loss
def transform_landmarks(points: torch.Tensor, affine: torch.Tensor,
                        flip_permutation: torch.Tensor | None = None) -> torch.Tensor:
    """Move landmarks with the augmentation: p_out = A^-1 (p_in - t) (code ``augment.py``, flip and crop).

    points : (B, P, 2) ``(x, y)`` fractions in the input image. affine : (B, 2, 3) the map output -> input of
    :func:`ferlib.augment.augment_batch` in normalised [-1, 1] coordinates, ``p_in = A p_out + t`` with
    A = ``affine[:, :, :2]``, t = ``affine[:, :, 2]``. flip_permutation : (P,) long or None; where det A < 0
    (a mirror) output point ``i`` is the moved input point ``flip_permutation[i]``, so left/right indices keep
    their meaning. The official code does not swap (None, the default of :class:`LANetConfig`).
    Returns (B, P, 2) fractions in the output image (may fall outside [0, 1] after a crop).
    """
    lin, shift = affine[:, :, :2].float(), affine[:, :, 2].float()
    p_in = (2 * points.float() - 1 - shift[:, None, :]).transpose(1, 2)        # (B, 2, P)
    p_out = torch.linalg.solve(lin, p_in).transpose(1, 2)
    out = (p_out + 1) / 2
    if flip_permutation is not None:
        mirrored = torch.linalg.det(lin) < 0
        out = torch.where(mirrored[:, None, None], out[:, flip_permutation], out)
    return out


def landmark_heatmaps(points: torch.Tensor, size: tuple[int, int], sigma: float, *,
                      round_centres: bool = True) -> torch.Tensor:
    """Unnormalised Gaussian heatmaps h(x, y) = exp(-((x - x_p)^2 + (y - y_p)^2) / (2 sigma^2)) (LA-Net landmark
    targets; code ``utils.generate_target``).

    points : (B, P, 2) fractions; size : (H, W) of the heatmap; sigma : in heatmap pixels.
    The centre (x_p, y_p) is the landmark in heatmap pixel-centre coordinates (``x * W - 0.5``), rounded to the
    nearest pixel when ``round_centres`` (the code rounds ``x_224 / 4``). DEPARTURE: the Gaussian is not cut at
    3 sigma (the code's window; values there are below 0.011). Returns (B, P, H, W) in [0, 1], peak 1.
    """
    h, w = size
    cx, cy = points[..., 0] * w - 0.5, points[..., 1] * h - 0.5
    if round_centres:
        cx, cy = cx.round(), cy.round()
    xs = torch.arange(w, device=points.device, dtype=points.dtype)
    ys = torch.arange(h, device=points.device, dtype=points.dtype)
    gx = torch.exp(-(xs - cx[..., None]) ** 2 / (2 * sigma ** 2))
    gy = torch.exp(-(ys - cy[..., None]) ** 2 / (2 * sigma ** 2))
    return gy[..., :, None] * gx[..., None, :]


def heatmap_weights(heatmaps: torch.Tensor, *, foreground: float = 10.0, threshold: float = 0.2) -> torch.Tensor:
    """Weight map M = ``foreground`` where the 3x3 grey dilation of the heatmap exceeds ``threshold``, else 1.

    The foreground weighting of Adaptive Wing (Wang, Bo, Fuxin, ICCV 2019) as the LA-Net code applies it
    (``utils.generate_target``: ``cv2.dilate`` 3x3, > 0.2 -> 10). heatmaps : (B, P, H, W). Same shape out.
    """
    dilated = F.max_pool2d(heatmaps.flatten(0, 1)[:, None], 3, stride=1, padding=1).view_as(heatmaps)
    return torch.where(dilated > threshold, torch.full_like(heatmaps, foreground), torch.ones_like(heatmaps))


def awing_loss(pred: torch.Tensor, target: torch.Tensor, *, alpha: float = 2.1, omega: float = 14.0,
               epsilon: float = 1.0, theta: float = 0.5) -> torch.Tensor:
    """Adaptive Wing loss, elementwise (Wang, Bo, Fuxin, "Adaptive Wing Loss for Robust Face Alignment via
    Heatmap Regression", ICCV 2019, eq. 5; LA-Net code ``utils.AWingLoss``).

    With d = |y - y_hat| (``target``, ``pred``) and e = alpha - y::

        AWing = omega ln(1 + (d / epsilon)^e)   if d < theta
              = A d - C                         otherwise
        A = omega e (theta/epsilon)^(e - 1) / (epsilon (1 + (theta/epsilon)^e))
        C = theta A - omega ln(1 + (theta/epsilon)^e)

    Zero where pred == target, positive elsewhere, continuous and smooth at d = theta. Same shape as the inputs.
    """
    d = (target - pred).abs()
    e = alpha - target
    ratio = theta / epsilon
    a = omega * e * ratio ** (e - 1) / (epsilon * (1 + ratio ** e))
    c = theta * a - omega * torch.log1p(ratio ** e)
    return torch.where(d < theta, omega * torch.log1p((d / epsilon) ** e), a * d - c)


# --------------------------------------------------------------------------- the two branches
def resnet_stem(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The shared stem of LA-Net: conv1, bn1, act, max-pool, layer1 of a timm ResNet (code ``extract_base``)."""
    x = backbone.maxpool(backbone.act1(backbone.bn1(backbone.conv1(x))))
    return backbone.layer1(x)


def expression_features(backbone: nn.Module, stem: torch.Tensor) -> torch.Tensor:
    """Expression branch u = GAP(layer4(layer3(layer2(s)))) (code ``extract_fer``); equals ``model.embed(x)``."""
    return backbone.forward_head(backbone.layer4(backbone.layer3(backbone.layer2(stem))))


class LandmarkBranch(nn.Module):
    """Landmark backbone of LA-Net: copies of layer2-4, a top-down FPN over layers 1-4, a heatmap head.

    Code ``Landmark_ResNet.extract_lm``: 1x1 lateral convolutions (no bias) to the layer1 width 64e, x2
    bilinear upsampling and summation from layer4 down to layer1, then a 1x1 convolution to P heatmaps.
    DEPARTURE: each upsampling goes to the size of the next lateral map instead of a fixed x2, which is the
    same at 224 px and also works where a stride-2 layer rounds up (3 -> 2 at 48 px input).

    backbone : a timm ResNet (``layer1``..``layer4``, ``feature_info``); its layer2-4 are deep-copied, so both
    branches start from the same weights. num_points : P.
    """

    def __init__(self, backbone: nn.Module, num_points: int) -> None:
        super().__init__()
        chans = {info["module"]: info["num_chs"] for info in backbone.feature_info}
        widths = [chans[f"layer{i}"] for i in range(1, 5)]
        self.width = widths[0]
        self.layers = nn.ModuleList(copy.deepcopy(getattr(backbone, f"layer{i}")) for i in range(2, 5))
        self.lateral = nn.ModuleList(nn.Conv2d(c, self.width, 1, bias=False) for c in widths)
        self.heatmap = nn.Conv2d(self.width, num_points, 1, bias=False)

    def forward(self, stem: torch.Tensor) -> torch.Tensor:
        """(B, 64e, S, S) layer1 map -> (B, 64e, S, S) finest FPN map V (v = its GAP, heatmaps = ``heatmap(V)``)."""
        feats = [stem]
        for layer in self.layers:
            feats.append(layer(feats[-1]))
        top = self.lateral[3](feats[3])
        for level in (2, 1, 0):
            up = F.interpolate(top, size=feats[level].shape[-2:], mode="bilinear", align_corners=False)
            top = up + self.lateral[level](feats[level])
        return top


def projection_head(in_dim: int, out_dim: int) -> nn.Sequential:
    """Projection g(f) = W2 ReLU(W1 f + b1) + b2 of the contrastive features (code ``MoCo_ResNet.fer_fc/lm_fc``)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))


# --------------------------------------------------------------------------- label distribution estimation
def chunk_ids(n: int, chunk: int | None, device=None) -> torch.Tensor:
    """(n,) id of the chunk of ``chunk`` consecutive samples each row falls in (all 0 when ``chunk`` is None)."""
    ids = torch.arange(n, device=device)
    return torch.zeros_like(ids) if not chunk else ids // chunk


@torch.no_grad()
def knn_mask(features: torch.Tensor, k: int, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Neighbour indicator N_ij = 1 if j is among the k most cosine-similar samples to i, j != i (LA-Net, LDE;
    code ``Label_Distribution_Estimation._neighbor``).

    features : (B, D) u or v; k : K (clipped to the group size - 1); groups : (B,) ids, neighbours only within
    a group (the per-graph batch of ``graph_batch``). Returns (B, B) float 0/1, zero diagonal, no gradient.
    """
    f = F.normalize(features.float(), dim=1)
    sim = f @ f.T
    if groups is None:
        groups = torch.zeros(len(f), dtype=torch.long, device=f.device)
    allowed = groups[:, None] == groups[None, :]
    allowed.fill_diagonal_(False)
    sim = sim.masked_fill(~allowed, float("-inf"))
    k = min(k, int(allowed.sum(1).min()))
    top = sim.topk(k, dim=1).indices
    return torch.zeros_like(sim).scatter_(1, top, 1.0)


class EdgeScorer(nn.Module):
    """Learned edge score c_ij = softmax(MLP([h_i^(1); h_j^(2)]))_0 with h = W_in f (LA-Net, LDE; code
    ``layers.score``).

    dim : d of the feature space (512e for u, 64e for v); the pair MLP is d -> d/2 -> ReLU -> d/4 -> ReLU -> 2.
    Computed exactly as the code, but the first pair layer is applied to each half once and the results
    summed per pair (W [a; b] = W_a a + W_b b), so memory is O(B^2 d/2) instead of O(B^2 d).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.half = dim // 2
        self.fc_in = nn.Linear(dim, dim)
        self.pair = nn.Linear(dim, dim // 2)
        self.rest = nn.Sequential(nn.ReLU(), nn.Linear(dim // 2, dim // 4), nn.ReLU(), nn.Linear(dim // 4, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B, B) scores c_ij in (0, 1)."""
        h = self.fc_in(features)
        w = self.pair.weight
        left = F.linear(h[:, :self.half], w[:, :self.half])
        right = F.linear(h[:, self.half:], w[:, self.half:], self.pair.bias)
        return self.rest(left[:, None, :] + right[None, :, :]).softmax(-1)[..., 0]


def aggregate_neighbours(mask: torch.Tensor, scores: torch.Tensor, probs: torch.Tensor,
                         eps: float = 1e-8) -> torch.Tensor:
    """q_i = sum_j w_ij p_j with w_ij = (c_ij N_ij + eps/B) / (sum_j c_ij N_ij + eps) (LA-Net, LDE; code
    ``Label_Distribution_Estimation.forward``).

    mask : (B, B) N; scores : (B, B) c; probs : (B, C) p_j = softmax(z_j). Rows of w sum to 1, so each q_i is
    a distribution. Returns (B, C).
    """
    weight = scores * mask
    weight = (weight + eps / mask.shape[1]) / (weight.sum(1, keepdim=True) + eps)
    return weight @ probs


def lde_target(history: torch.Tensor, estimate: torch.Tensor, momentum: float) -> torch.Tensor:
    """t_i = m H_i + (1 - m) q_i, the temporally ensembled label distribution (LA-Net, LDE; code ``dis_momentum``).

    history : (B, C) H rows; estimate : (B, C) q; momentum : m. The same equation updates the bank with q
    detached. Rows sum to 1 when H and q rows do.
    """
    return momentum * history + (1 - momentum) * estimate


def kl_per_sample(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(t_i || softmax(z_i)) = sum_c t_ic (log t_ic - log p_ic) per sample (LA-Net L_kl; code ``F.kl_div``).

    Differentiable in ``target`` too (LA-Net does not detach t). Returns (B,).
    """
    return F.kl_div(torch.log_softmax(logits.float(), 1), target.float(), reduction="none").sum(1)


# --------------------------------------------------------------------------- expression-landmark contrast
def pseudo_labels(target: torch.Tensor, index: torch.Tensor, confidence: float) -> torch.Tensor:
    """y_hat_i = argmax t_i if max t_i >= confidence, else the unique id -(i + 1) (LA-Net, EL loss).

    target : (B, C); index : (B,) dataset positions i. DEPARTURE: the code uses -i, so an ambiguous sample 0
    collides with class 0 (docs/methods/lanet.md, A5). Returns (B,) int64.
    """
    conf, cls = target.detach().max(1)
    return torch.where(conf >= confidence, cls, -(index.long() + 1))


def supcon_loss(query: torch.Tensor, keys: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor,
                bank_labels: torch.Tensor, temperature: float, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised contrastive loss of one direction of L_EL (LA-Net, EL loss; code ``MoCo_ResNet._cal``).

    For anchor i with positives P_i = {j in the same group: y_hat_j = y_hat_i} (i included) and negatives the
    bank entries n with a different stored pseudo-label::

        l_ij = -log( exp(a_i.k_j / tau) / (exp(a_i.k_j / tau) + sum_n exp(a_i.bank_n / tau)) )
        L_i  = (1 / |P_i|) sum_{j in P_i} l_ij

    query : (B, D) a (L2-normalised); keys : (B, D) k (momentum keys of the other modality); bank : (M, D);
    labels : (B,) y_hat; bank_labels : (M,); temperature : tau; groups : (B,) ids, positives only within a
    group (``positive_batch``). Returns (B,) L_i (the code averages them).
    """
    query, keys, bank = query.float(), keys.float(), bank.float()
    pos = query @ keys.T / temperature                                         # (B, B)
    neg = (query @ bank.T / temperature).masked_fill(labels[:, None] == bank_labels[None, :], -1e10)
    neg_lse = torch.logsumexp(neg, dim=1, keepdim=True)                        # (B, 1)
    losses = torch.logaddexp(pos, neg_lse) - pos                               # (B, B) l_ij
    same = labels[:, None] == labels[None, :]
    if groups is not None:
        same = same & (groups[:, None] == groups[None, :])
    same = same.float()
    return (losses * same).sum(1) / same.sum(1)


class KeyQueue(nn.Module):
    """FIFO queue of M keys and their pseudo-labels (MoCo, He et al., CVPR 2020; LA-Net ``fer_bank``/``lm_bank``).

    Starts with random unit keys whose label matches no pseudo-label (as the code's -1e10), so they are
    negatives for every anchor until overwritten. Enqueuing more than M keys keeps the last M.
    """

    EMPTY = torch.iinfo(torch.long).min

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("labels", torch.full((size,), self.EMPTY, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Write (n, D) keys and (n,) labels at the pointer, wrapping around; the pointer advances by n mod M."""
        size, n = len(self.keys), len(keys)
        start = int(self.ptr) + max(n - size, 0)
        keys, labels = keys[-size:], labels[-size:]
        pos = (start + torch.arange(len(keys), device=self.keys.device)) % size
        self.keys[pos] = keys.to(self.keys.dtype)
        self.labels[pos] = labels.long()
        self.ptr.fill_((int(self.ptr) + n) % size)


@torch.no_grad()
def momentum_update(online: Sequence[nn.Module], key: Sequence[nn.Module], momentum: float) -> None:
    """theta_k <- m theta_k + (1 - m) theta_q for parameters; buffers copied (MoCo; LA-Net ``_update``)."""
    pairs = [(list(q.parameters()), list(k.parameters()), list(q.buffers()), list(k.buffers()))
             for q, k in zip(online, key)]
    for p_q, p_k, b_q, b_k in pairs:
        if len(p_q) != len(p_k) or len(b_q) != len(b_k):
            raise ValueError("momentum_update: the online and key modules differ in structure")
        if p_k:
            torch._foreach_lerp_(p_k, [p.detach() for p in p_q], 1 - momentum)   # m p_k + (1 - m) p_q
        if b_k:
            torch._foreach_copy_(b_k, b_q)


# --------------------------------------------------------------------------- progressive sampler
def progressive_class_probs(counts, epoch: int, num_epochs: int) -> np.ndarray:
    """Class mix of LA-Net's progressively balanced sampling at epoch e (code ``MySampler``; not in the paper).

    p_c(e) = (1 - e/E) n_c/N + (e/E) / C: instance-balanced at e = 0, class-balanced at e = E.
    counts : (C,) n_c of the given labels; epoch : e, 0-based; num_epochs : E. Classes with n_c = 0 get
    p_c = 0 and do not count in C. Returns (C,) float64 summing to 1.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"counts must be a 1-D array of non-negative class counts with a positive sum, got {counts}")
    if num_epochs < 1 or epoch < 0:
        raise ValueError(f"need epoch >= 0 and num_epochs >= 1, got epoch={epoch}, num_epochs={num_epochs}")
    present = counts > 0
    r = min(epoch / num_epochs, 1.0)
    return (1 - r) * counts / counts.sum() + r * present / present.sum()


def progressive_balanced_order(labels, epoch: int, num_epochs: int, gen: torch.Generator) -> torch.Tensor:
    """One epoch's visiting order under LA-Net's progressively balanced sampling (code ``MySampler``).

    Class c contributes m_c = ceil(p_c(e) N) of its samples (:func:`progressive_class_probs`): drawn without
    replacement when m_c <= n_c, else every sample floor(m_c / n_c) times plus m_c mod n_c more
    (oversampling). The classes' draws are then shuffled together.

    labels : (N,) int given labels; gen : the generator to draw from (the engine's, so resume is exact).
    Returns (sum_c m_c,) int64 indices into ``labels``, at least N of them.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    probs = progressive_class_probs(counts, epoch, num_epochs)
    parts = []
    for c in np.flatnonzero(counts):
        members = torch.from_numpy(np.flatnonzero(labels == c))
        m = math.ceil(probs[c] * len(labels))
        passes = [torch.randperm(len(members), generator=gen) for _ in range(m // len(members) + 1)]
        parts.append(members[torch.cat(passes)[:m]])
    order = torch.cat(parts)
    return order[torch.randperm(len(order), generator=gen)]


def entropy(dist: torch.Tensor) -> torch.Tensor:
    """-sum_c t_c log t_c per row (0 log 0 = 0)."""
    return -torch.special.xlogy(dist, dist).sum(-1)

