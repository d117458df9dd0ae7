"""Building blocks of DMUE: the ramps, the auxiliary branches' subsets and targets, the mined latent distribution,
the soft loss, similarity-preserving distillation (SP-KD), the pairwise uncertainty estimate, the class-balanced
sampler.

She, Hu, Shi, Wang, Shen, Mei, "Dive into Ambiguity: Latent Distribution Mining and Pairwise Uncertainty Estimation
for Facial Expression Recognition", CVPR 2021. Official code ``JDAI-CV/FaceX-Zoo`` at 16b793a, folder
``addition_module/DMUE`` (paths below are relative to it). Notes: ``docs/methods/dmue.md``. Each function is one
equation of the paper as the official code computes it; :mod:`ferlib.methods.dmue` composes them. Every function
works in the dtype it is given (the tests run them in float64 against numpy translations of the code).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ramp_up", "ramp_down", "branch_subset", "sharpen", "latent_soft_label", "soft_loss", "batch_standardise",
    "row_normalised_gram", "spkd_term", "cosine_similarity_matrix", "class_similarity_stats",
    "uncertainty_input", "UncertaintyMLP", "AuxiliaryBranches", "class_balanced_order", "resnet_trunk",
    "RESNET_PARTS",
]

#: The parts of a timm ResNet the method reads: its stem and stages (the last one is replicated).
RESNET_PARTS = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4", "forward_head")


# --------------------------------------------------------------------------- the ramps
def ramp_up(epoch: int, a: float) -> float:
    """r_up(e) = exp(-5 (1 - e / a)^2) for e <= a, else 1: the weight of the target branch's losses (DMUE,
    CVPR 2021, training schedule; code ``utils/ramp.py:3-8``, called per epoch with the 0-based epoch,
    ``train.py:80``). epoch : 0-based; a : ``ramp_a`` > 0."""
    return 1.0 if epoch > a else math.exp(-5.0 * (1.0 - epoch / a) ** 2)


def ramp_down(epoch: int, a: float) -> float:
    """r_down(e) = 1 for e < a, else exp(-(1 - a / e)^2): the weight of the auxiliary branches' loss (code
    ``utils/ramp.py:10-15``, ``train.py:80``). epoch : 0-based; a : ``ramp_a`` > 0."""
    return 1.0 if epoch < a else math.exp(-((1.0 - a / epoch) ** 2))


# --------------------------------------------------------------------------- latent distribution mining
def branch_subset(label: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples auxiliary branch c trains on, and their labels among the other K - 1 classes (DMUE's latent
    distribution mining: branch c never sees class c; code ``split_feature``, ``models/resnet_multibranch.py:146-156``).

    label : (B,) int. Returns (rows (n,) int64 of the samples with label != c, labels (n,) in [0, K - 2]: y if
    y < c else y - 1)."""
    rows = (label != c).nonzero()[:, 0]
    y = label[rows]
    return rows, torch.where(y < c, y, y - 1)


def sharpen(probs: torch.Tensor, T: float) -> torch.Tensor:
    """p^(1/T) / sum p^(1/T) per row: DMUE's temperature "sharpening" of an auxiliary prediction (T = 1.2; code
    ``train.py:99-101``). probs : (n, M) rows summing to 1. With T > 1 the exponent is below 1, so T = 1.2 in fact
    flattens the distribution slightly (the code's comment says sharpening; T < 1 would sharpen)."""
    powered = probs ** (1.0 / T)
    return powered / powered.sum(1, keepdim=True)


def latent_soft_label(aux_logits: torch.Tensor, c: int, T: float) -> torch.Tensor:
    """The mined latent distribution of samples labelled c: auxiliary branch c's softmax over the K - 1 other
    classes, sharpened with T, put back into K slots with 0 at class c (DMUE eq. for the latent distribution;
    code ``train.py:96-108``). Detached, as the code (``targets_x.detach()``, ``train.py:102``).

    aux_logits : (n, K - 1) branch c's logits on the samples labelled c. Returns (n, K), rows summing to 1,
    column c zero."""
    target = sharpen(torch.softmax(aux_logits, dim=1), T).detach()
    zero = target.new_zeros(len(target), 1)
    return torch.cat([target[:, :c], zero, target[:, c:]], dim=1)


def soft_loss(logits: torch.Tensor, label: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """L_soft = mean over (rows x classes) of (p_masked - soft)^2, p = softmax(logits) with the given label's entry
    set to 0 (DMUE's latent-distribution loss on the target branch; code ``losses/softLoss.py:10-14``, on the
    target branch's logits before the uncertainty scaling, ``train.py:110``).

    logits : (n, K) target-branch logits; label : (n,); soft : (n, K) latent distributions. Returns a scalar."""
    probs = torch.softmax(logits, dim=1)
    mask = torch.ones_like(probs).scatter_(1, label[:, None], 0.0)
    return ((probs * mask - soft) ** 2).mean()


def batch_standardise(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(x - batch mean) / sqrt(biased batch variance + eps) per column: the code's BN neck in training mode.

    The neck (``nn.BatchNorm1d``, ``models/make_model.py:102-106``) is shared by all branches and applied to each
    branch's batch separately (``:121, 133, 137``); its weight stays at its initial 1 and its bias at 0 (the bias is
    frozen, ``:105``, and the neck is not in the optimiser, ``train.py:55-57``), so in training it is exactly this
    standardisation. x : (n, D). A single row gives zeros (its deviation from its own mean)."""
    mean = x.mean(0, keepdim=True)
    var = ((x - mean) ** 2).mean(0, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


# --------------------------------------------------------------------------- SP-KD
def row_normalised_gram(x: torch.Tensor) -> torch.Tensor:
    """G = x x^T with each row L2-normalised (Tung & Mori's similarity-preserving Gram; code
    ``models/make_model.py:141, 146-147``, ``F.normalize(G, p=2, dim=1)``). x : (n, d). Returns (n, n)."""
    return F.normalize(x @ x.t(), p=2, dim=1)


def spkd_term(aux: torch.Tensor, main: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """One branch's SP-KD error: mean squared difference between the row-normalised Gram of auxiliary branch c and
    the sub-block of the target branch's Gram on the same samples, taken before the row normalisation (DMUE's SP-KD
    loss; code ``models/make_model.py:141-147``, ``losses/SP_KD_Loss.py:10``). Neither side is detached.

    aux : (n, d_aux) branch c's outputs on its subset; main : (B, D) the target branch's (whole batch);
    rows : (n,) the subset's rows in the batch. Returns a scalar."""
    g_main = (main @ main.t())[rows][:, rows]
    return F.mse_loss(row_normalised_gram(aux), F.normalize(g_main, p=2, dim=1))


# --------------------------------------------------------------------------- pairwise uncertainty
def cosine_similarity_matrix(f: torch.Tensor) -> torch.Tensor:
    """S_ij = <f_i, f_j> / (|f_i| |f_j|) over the batch (DMUE's pairwise similarities, on the target branch's
    pooled features before dropout and neck; code ``models/make_model.py:126-130``). f : (B, D). Returns (B, B).
    The norms are clamped at 1e-12 (the code divides by them unguarded)."""
    norm = f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (f @ f.t()) / (norm @ norm.t())


def class_similarity_stats(cos: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each sample's mean similarity to the samples of each class, min-max normalised per row (DMUE's pairwise
    statistics; code ``models/make_model.py:156-160``: ``torch.mean(cos[:, class c])``, the sample itself
    included, then ``(m - min) / (max - min)``).

    cos : (B, B); label : (B,). Returns (B, K) in [0, 1]. DEPARTURE, only for batches the code never trains on
    (it skips any batch with fewer than 2 samples of a class, ``train.py:89-91``): a class absent from the batch
    gets 0 and is left out of the min and max, and a row whose class means are all equal gets 0 (the code: NaN)."""
    onehot = F.one_hot(label, num_classes).to(cos.dtype)
    counts = onehot.sum(0)
    means = (cos @ onehot) / counts.clamp_min(1.0)
    present = (counts > 0)[None, :].expand_as(means)
    lo = means.masked_fill(~present, float("inf")).amin(1, keepdim=True)
    hi = means.masked_fill(~present, float("-inf")).amax(1, keepdim=True)
    span = hi - lo
    scaled = (means - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return scaled.masked_fill(~present, 0.0)


def uncertainty_input(cos: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The pairwise-uncertainty module's input: [class similarity statistics ; one-hot label] (B, 2K) (code
    ``models/make_model.py:154, 161``)."""
    return torch.cat([class_similarity_stats(cos, label, num_classes),
                      F.one_hot(label, num_classes).to(cos.dtype)], dim=1)


class UncertaintyMLP(nn.Sequential):
    """s = sigmoid(Linear(K, 1)(PReLU(Linear(2K, K)(stats)))): DMUE's pairwise uncertainty estimate (code
    ``models/make_model.py:97-100, 163-164``; PyTorch's default initialisation, as the code). Returns (B,) in
    (0, 1): low s = an uncertain (ambiguous or mislabelled) sample; the target logits are multiplied by s."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(nn.Linear(2 * num_classes, num_classes), nn.PReLU(), nn.Linear(num_classes, 1))

    def forward(self, stats: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.sigmoid(super().forward(stats)).squeeze(1)


# --------------------------------------------------------------------------- the auxiliary branches
class AuxiliaryBranches(nn.Module):
    """K auxiliary branches: branch c = a copy of the backbone's last stage (``layer4``) + GAP + dropout + the
    neck (:func:`batch_standardise`) + a bias-free Linear(D, K - 1) over the classes other than c (code
    ``models/resnet_multibranch.py:100-102``, ``models/make_model.py:88-92, 119-122``).

    backbone : a timm ResNet whose ``layer4`` is deep-copied K times (all branches start from the target branch's
    weights; the code copies the pretrained layer4 into every branch, ``models/make_model.py:184-189``);
    feature_dim : D; num_classes : K; dropout : the branches' dropout rate (code 0.5, ``:94``). The classifiers
    start from N(0, 0.001^2) (code ``weights_init_classifier``, ``:46-51``).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.stages = nn.ModuleList(copy.deepcopy(backbone.layer4) for _ in range(num_classes))
        self.classifiers = nn.ModuleList(nn.Linear(feature_dim, num_classes - 1, bias=False)
                                         for _ in range(num_classes))
        for fc in self.classifiers:
            nn.init.normal_(fc.weight, std=0.001)
        self.dropout = nn.Dropout(dropout)

    def features(self, c: int, fmap: torch.Tensor) -> torch.Tensor:
        """GAP of branch c's last stage on ``fmap`` (n, C3, h, w) -> (n, D) (code ``:119, 136``)."""
        return self.stages[c](fmap).mean((2, 3))

    def logits(self, c: int, features: torch.Tensor, *, mining: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Branch c's head on its pooled ``features`` (n, D): (logits (n, K - 1), the neck's output (n, D)).

        Training subset (``mining=False``): dropout, neck, classifier (code ``models/make_model.py:120-122``).
        Mining the latent distribution of the samples labelled c (``mining=True``): neck and classifier, no dropout
        (code ``:136-137, 149``)."""
        neck = batch_standardise(features if mining else self.dropout(features))
        return self.classifiers[c](neck), neck


def resnet_trunk(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The shared part of a timm ResNet: stem and layer1-3 (code: ``conv1 .. layer3``,
    ``models/resnet_multibranch.py:122-128``). ``backbone.forward_head(backbone.layer4(trunk))`` is then exactly
    ``backbone(x)``, the plain model's pooled features."""
    x = backbone.maxpool(backbone.act1(backbone.bn1(backbone.conv1(x))))
    return backbone.layer3(backbone.layer2(backbone.layer1(x)))


# --------------------------------------------------------------------------- the sampler
def class_balanced_order(labels, gen: torch.Generator) -> torch.Tensor:
    """One epoch of DMUE's class-balanced sampler: N draws with replacement, sample i with weight 1 / n_{y_i}, so
    every class is drawn equally often in expectation (code ``ImbalancedDatasetSampler``,
    ``datasets/sampler.py:24-43``: ``torch.multinomial(weights, N, replacement=True)``, float64 weights).

    labels : (N,) int given labels; gen : the generator to draw from (the engine's, so that a resumed run draws the
    same order). Returns (N,) int64 indices into ``labels``."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = torch.from_numpy(1.0 / counts[labels].astype(np.float64))
    return torch.multinomial(weights, len(labels), replacement=True, generator=gen)
