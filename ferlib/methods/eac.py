"""EAC: Erasing Attention Consistency.

Zhang, Wang, Ling, Deng, "Learn From All: Erasing Attention Consistency for Noisy Label Facial Expression
Recognition", ECCV 2022 (arXiv 2207.10299). Official code: ``zyh-uaiaaaa/Erasing-Attention-Consistency`` at
61efdfd (``src/main.py``, ``src/model.py``, ``src/loss.py``, ``src/utils.py``, ``src/dataset.py``), whose
effective behaviour we reproduce. Notes: ``docs/methods/eac.md``.

Each step sees an image x and its horizontal mirror x', each randomly erased (independently of each other in
the code's noisy-label mode). With F(x) the last feature map (B, D, h, w) before pooling and W the classifier's
weights, DETACHED, the class activation maps are M(x)_k = sum_d W_kd F(x)_d, and the loss is::

    L = CE(f(x), y)  +  lam * mean_{i,k,h,w} (M(x) - flip(M(x')))^2          (lam = 5)

with the cross-entropy on the original view only (the "imbalanced" framework) and flip the exact mirror of a
map along its width. Inference is the plain model; the maps are used in training only.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import AugmentConfig, _erase
from ..options import NON_NEGATIVE, PROBABILITY, Interval, check_ranges, ranged
from .base import Method, Readout, register_method

__all__ = ["EAC", "EACConfig", "ERASINGS", "class_activation_maps", "flip_maps", "flip_images", "erase_views",
           "attention_consistency", "feature_map_and_logits"]

#: How the two views are erased: ``independent`` (the code on a noisy label file), ``shared`` (on the clean one).
ERASINGS = ("independent", "shared")


@dataclass(frozen=True)
class EACConfig:
    """EAC hyperparameters: the official code's values (``src/main.py`` argparser and transforms, 61efdfd).

    lam : float >= 0
        Weight of the attention consistency (code ``--lam``, ``src/main.py:35``: 5; ``loss1 + args.lam *
        flip_loss_l``, ``src/main.py:69``). Both terms are means (``nn.CrossEntropyLoss()``, ``F.mse_loss``;
        ``src/main.py:65``, ``src/loss.py:9``), so lam means the same at any batch size. The MSE also averages
        over classes and map positions: with 8 classes or a 3x3 map instead of the code's 7 classes and 7x7 map
        the per-element mean, hence lam, is unchanged.
    erase : float in [0, 1]
        Probability that the method erases a view (torchvision ``RandomErasing`` at its default p 0.5,
        ``src/main.py:134``). EAC's erasing is part of the method: the code's training transform is only resize,
        normalise and this erasing (``src/main.py:128-134``). DEPARTURE (unavoidable here): the engine's own
        augmentation (``AugmentConfig.erase``, flip, crop, jitter, noise) comes first and is common to both views
        (the mirror is taken of the engine's augmented image); the ``paper`` recipe sets the engine's erasing to
        0, so that the method's erasures are the only ones, as in the code. Under the ``shared`` recipe the
        engine's erasure (if drawn) is the same in both views, and the method's are added on top.
    erase_scale : (float, float) in (0, 1)
        Erased area as a fraction of the image (``RandomErasing(scale=(0.02, 0.25))``, ``src/main.py:134``);
        aspect ratio in (0.3, 3.3) and fill 0 in normalised space (the channel mean) as torchvision's defaults.
        ferlib's rectangle (:func:`ferlib.augment._erase`) clips a too-large one to the image where torchvision
        redraws up to 10 times.
    erasing : ``"independent"`` | ``"shared"``
        ``independent`` (default): the code's mode for any noisy label file (``src/dataset.py:30, 49-52``): the
        flipped view is the mirror of the un-erased image, then erased on its own draw (flip, then erase), so the
        two erasures are independent. ``shared``: the code's mode for the clean label file
        (``src/dataset.py:30, 58-62``): one erasure, then the mirror of the erased image, so both views hide the
        same (mirrored) region. The code picks the mode from the label file's name; ferlib always trains on
        labels that may be noisy, hence the default. DEPARTURE (unavoidable here): in the code the flipped view
        of the noisy mode gets no Gaussian pixel noise (``src/dataset.py:49-56``: noise is added to the
        original only); here the mirror shares whatever photometric noise the engine drew for the original.
    """

    lam: float = ranged(5.0, NON_NEGATIVE)
    erase: float = ranged(0.5, PROBABILITY)
    erase_scale: tuple[float, float] = ranged((0.02, 0.25), Interval(0, 1, lo_open=True, hi_open=True))
    erasing: str = "independent"

    def __post_init__(self) -> None:
        if self.erasing not in ERASINGS:
            raise ValueError(f"EACConfig.erasing must be one of {ERASINGS}, got {self.erasing!r}")
        check_ranges(self)
        lo, hi = self.erase_scale
        if not lo <= hi:
            raise ValueError(f"EACConfig.erase_scale must be (low, high) with low <= high, got {self.erase_scale!r}")


# --------------------------------------------------------------------------- the paper's equations
def class_activation_maps(feature_map: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """M(x)_k = sum_d W_kd F(x)_d, EAC's attention maps (ECCV 2022, the class activation maps of Zhou et al.,
    CVPR 2016; code ``Model.forward``, ``src/model.py:31-39``).

    feature_map : (B, D, h, w) F(x), the last feature map before global pooling; weight : (K, D) W, the
    classifier's weights. The weights are DETACHED here (the code reads ``params[-2].data``,
    ``src/model.py:32-34``): the consistency trains the backbone only; the classifier learns from the
    cross-entropy alone. No bias, no normalisation. Returns (B, K, h, w). For an average-pooled backbone with
    no dropout, mean_{h,w} M(x)_k + b_k is the logit of class k.
    """
    return torch.einsum("bdhw,kd->bkhw", feature_map, weight.detach().to(feature_map.dtype))


def flip_maps(maps: torch.Tensor) -> torch.Tensor:
    """flip(M): the mirror of maps along their last (width) axis, an exact involution (flip(flip(M)) = M).

    The code samples the map at a mirrored integer grid with ``grid_sample(..., align_corners=True)``
    (``src/utils.py:23-32``, ``src/loss.py:4-8``), which at grid points is the same permutation of columns up
    to float rounding of the bilinear weights; ``flip`` is exact, at any map size (the code's grid is fixed to
    7x7, ``src/main.py:32-33``, the map of a 224 px input).
    """
    return maps.flip(-1)


def flip_images(images: torch.Tensor) -> torch.Tensor:
    """x' = the horizontal mirror of images (B, C, H, W) (code ``cv2.flip(image, 1)``, ``src/utils.py:13-14``,
    and ``RandomHorizontalFlip(p=1)``, ``src/dataset.py:62``)."""
    return images.flip(-1)


def attention_consistency(maps: torch.Tensor, maps_flipped: torch.Tensor) -> torch.Tensor:
    """l_i = mean_{k,h,w} (M(x_i) - flip(M(x'_i)))^2, EAC's flip attention consistency per sample (ECCV 2022;
    code ``ACLoss``, ``src/loss.py:4-10``).

    maps : (B, K, h, w) M(x); maps_flipped : (B, K, h, w) M(x'), the maps of the mirrored view, mapped back by
    :func:`flip_maps`. Returns (B,) l_i; the code's loss ``F.mse_loss`` (mean over every element) is l.mean().
    """
    return (maps - flip_maps(maps_flipped)).pow(2).flatten(1).mean(1)


def erase_views(images: torch.Tensor, *, erase: float, scale: tuple[float, float], erasing: str,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views (x, x') of EAC from an augmented, normalised batch (B, C, H, W) (code ``src/dataset.py:42-64``).

    ``independent``: x = erase_1(images), x' = erase_2(mirror(images)), two independent draws (the code's noisy
    label mode: flip the image, then transform it with its own RandomErasing). ``shared``: x = erase_1(images),
    x' = mirror(x) (the clean label mode: the mirror of the transformed, erased image). Each erasure hits an
    image with probability ``erase``, a rectangle of ``scale`` area filled with 0 (the normalised mean); every
    draw comes from ``gen`` (CPU), x's first.
    """
    if erasing not in ERASINGS:
        raise ValueError(f"erasing must be one of {ERASINGS}, got {erasing!r}")
    cfg = AugmentConfig(erase=erase, erase_scale=scale, erase_fill="zero")
    first = _erase(images, cfg, gen) if erase > 0 else images
    if erasing == "shared":
        return first, flip_images(first)
    mirror = flip_images(images)
    return first, (_erase(mirror, cfg, gen) if erase > 0 else mirror)


def feature_map_and_logits(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F(x), f(x)): the backbone's last feature map (B, D, h, w) and the logits (B, K) of the same pass.

    f(x) = head(dropout(pool(F(x)))) with timm's ``forward_features`` / ``forward_head``, the path of
    ``model(x)`` (code ``Model.forward``: ``features`` then ``avgpool`` and ``fc``, ``src/model.py:17-29``).
    """
    backbone = model.backbone
    feature_map = backbone.forward_features(images)
    if feature_map.ndim != 4:
        raise ValueError(f"eac needs a convolutional feature map (B, D, h, w); {type(backbone).__name__}."
                         f"forward_features gives shape {tuple(feature_map.shape)}")
    return feature_map, model.head(model.dropout(backbone.forward_head(feature_map)))


def _float32_at_least(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# --------------------------------------------------------------------------- the method
@register_method
class EAC(Method):
    """Cross-entropy on the original view plus flip attention consistency between two erased views.

    Read-outs: ``consistency`` (l_i of each sample's latest visit) and ``score`` = l_i averaged over the sample's
    visits (our ranking, not in the paper: the paper argues that a model memorises a mislabelled face through a
    part of its features, whose attention then moves when that part is erased; random erasing makes a single
    visit's l_i noisy, hence the average). ``loss``, ``margin`` and ``aum`` come from the original view's logits.
    """

    name = "eac"
    Config = EACConfig
    ablations = {
        "no_consistency": {"lam": 0.0},          # CE on the erased original view (the code's baseline)
        "no_erase": {"erase": 0.0},              # flip attention consistency without erasing
        "shared_erase": {"erasing": "shared"},   # the code's clean-label mode: one erasure, mirrored
    }
    model_parts = ("backbone", "dropout", "head")  # the feature map before pooling, and the classifier weights

    def __init__(self, config: EACConfig, *, num_classes: int, num_train: int, feature_dim: int) -> None:
        super().__init__(config, num_classes=num_classes, num_train=num_train, feature_dim=feature_dim)
        self.register_buffer("consistency", torch.full((num_train,), float("nan")))
        self.register_buffer("consistency_sum", torch.zeros(num_train, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.seed = 0

    def bind(self, model: nn.Module, train, config) -> None:
        self.seed = int(config.seed)

    def generator(self) -> torch.Generator:
        """The erasing draws of the current step: a generator seeded by the run's seed and the step count (a
        checkpointed buffer), so a resumed run erases the same rectangles and no other random stream moves.
        (The code draws from torchvision's global generator in its data loader.)"""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))

    def erased_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, x') of the current step (:func:`erase_views`); a function of (seed, step, images)."""
        c = self.config
        return erase_views(images, erase=c.erase, scale=c.erase_scale, erasing=c.erasing, gen=self.generator())

    def training_step(self, model, batch):
        idx, label = batch["index"], batch["label"]
        x, x_flip = self.erased_views(batch["image"])
        # Two forward passes, as the code (src/main.py:59-60): batch-norm statistics per view.
        fmap, logits = feature_map_and_logits(model, x)
        fmap_flip, _ = feature_map_and_logits(model, x_flip)
        with torch.autocast(logits.device.type, enabled=False):
            logits = _float32_at_least(logits)
            weight = model.head.weight
            maps = class_activation_maps(_float32_at_least(fmap), weight)
            maps_flip = class_activation_maps(_float32_at_least(fmap_flip), weight)
            ce = F.cross_entropy(logits, label)
            per_sample = attention_consistency(maps, maps_flip)
            consistency = per_sample.mean()
        self.record(idx, logits.detach(), label)
        self._remember(idx, per_sample.detach())
        return {"loss": ce + self.config.lam * consistency, "ce": ce, "consistency": consistency}

    @torch.no_grad()
    def _remember(self, idx: torch.Tensor, per_sample: torch.Tensor) -> None:
        self.step += 1
        self.consistency[idx] = per_sample.float()
        self.consistency_sum.index_add_(0, idx, per_sample.double())

    def readout(self) -> Readout:
        base = super().readout()
        mean = torch.where(self.visits > 0, self.consistency_sum / self.visits.clamp(min=1), float("nan"))
        return dataclasses.replace(base, score=mean.float().cpu().numpy(),
                                   extra={"consistency": self.consistency.cpu().numpy()})
