"""Two augmented views of a uint8 face batch, on the training device: the positive pairs of self-supervised
pretraining.

The recipe is SimCLR's (Chen et al., ICML 2020, Appendix A) and MoCo v2's (Chen et al., arXiv:2003.04297):
random resized crop, horizontal flip, colour jitter, random grayscale and Gaussian blur, adapted to small
faces and grayscale aware. The crop and flip are :func:`ferlib.augment.augment_batch`'s (one affine map per
sample through ``grid_sample``); the photometric steps below act on [0, 1] pixels and are drawn per sample from
the CPU generator (every draw is made whether or not its step applies, so a run is reproducible on any device).
On 1-channel images (FERPlus) saturation and grayscale do not exist and are skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..augment import AugmentConfig, augment_batch
from ..options import PROBABILITY, UNIT_OPEN, check_ranges, check_types

__all__ = ["ViewConfig", "two_views", "augment_view"]

#: The normalisation of every ferlib model input (:class:`ferlib.augment.AugmentConfig` defaults): the
#: pretrained backbone sees what a fine-tuning run will feed it.
MEAN, STD = AugmentConfig.mean, AugmentConfig.std


@dataclass(frozen=True)
class ViewConfig:
    """How each view of a face is drawn; probabilities in [0, 1], set one to 0 to switch its step off.

    scale : area range of the random resized crop (MoCo v2: (0.2, 1)); ``ratio`` its aspect range.
    flip : probability of a horizontal mirror.
    jitter : probability of the colour jitter, whose factors are drawn uniformly in [1 - x, 1 + x] for
        ``brightness``, ``contrast`` and (RGB only) ``saturation`` (SimCLR / MoCo v2: 0.8; 0.4 each; their hue
        jitter is left out: faces keep their hue).
    grayscale : probability of turning an RGB view gray (SimCLR: 0.2); ignored for 1-channel images.
    blur : probability of a Gaussian blur (MoCo v2: 0.5) with sigma drawn in ``blur_sigma`` pixels of the
        network's input. MoCo v2's (0.1, 2.0) is for 224 px; (0.1, 1.0) at 48 px blurs a face as much as
        about (0.5, 4.7) at 224 px, short of erasing its expression.
    """

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    grayscale: float = 0.2
    blur: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.0)

    def __post_init__(self) -> None:
        check_types(self, where="ViewConfig")
        check_ranges(self, _RANGES, where="ViewConfig")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"ViewConfig.blur_sigma must be (low, high) with 0 < low <= high, got {self.blur_sigma}")

    def geometry(self) -> AugmentConfig:
        """The crop and flip as an :class:`~ferlib.augment.AugmentConfig` returning [0, 1] pixels."""
        return AugmentConfig(flip=self.flip, crop="resized", scale=self.scale, ratio=self.ratio, erase=0.0,
                             brightness=0.0, contrast=0.0, mean=0.0, std=1.0)


_RANGES = {"scale": (lambda v: 0 < v <= 1, "in (0, 1]"), "ratio": (lambda v: v > 0, "> 0"), "flip": PROBABILITY,
           "jitter": PROBABILITY, "brightness": UNIT_OPEN, "contrast": UNIT_OPEN, "saturation": UNIT_OPEN,
           "grayscale": PROBABILITY, "blur": PROBABILITY}


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) on ``x``'s device, for broadcasting over a batch (B, C, H, W)."""
    return values.to(x.device).view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma (ITU-R 601, as torchvision's ``rgb_to_grayscale``)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _colour(x: torch.Tensor, cfg: ViewConfig, gen: torch.Generator) -> torch.Tensor:
    """Colour jitter (with probability ``cfg.jitter``) then random grayscale, on [0, 1] pixels (B, C, H, W)."""
    n, rgb = x.shape[0], x.shape[1] == 3
    chosen = _per_sample(torch.rand(n, generator=gen) < cfg.jitter, x)
    factor = lambda x_: _per_sample(_uniform(1 - x_, 1 + x_, n, gen), x)  # noqa: E731
    y = x * factor(cfg.brightness)
    mean = y.mean((1, 2, 3), keepdim=True)
    y = (y - mean) * factor(cfg.contrast) + mean
    if rgb:
        gray = _gray(y)
        y = gray + (y - gray) * factor(cfg.saturation)
    x = torch.where(chosen, y.clamp(0, 1), x)
    if rgb:
        x = torch.where(_per_sample(torch.rand(n, generator=gen) < cfg.grayscale, x), _gray(x).expand_as(x), x)
    return x


def _blur(x: torch.Tensor, cfg: ViewConfig, gen: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur of the chosen images (probability ``cfg.blur``), one sigma per image, reflect
    padding; the kernel spans +-2 of the largest sigma."""
    n, c, h, w = x.shape
    sigma = _uniform(*cfg.blur_sigma, n, gen)
    chosen = _per_sample(torch.rand(n, generator=gen) < cfg.blur, x)
    radius = max(1, math.ceil(2 * cfg.blur_sigma[1]))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0).to(x.device, x.dtype)  # (B*C, k)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=n * c)
    return torch.where(chosen, y.view(n, c, h, w), x)


def augment_view(images: torch.Tensor, size: int, cfg: ViewConfig, gen: torch.Generator) -> torch.Tensor:
    """One view of a batch.

    Parameters
    ----------
    images : uint8 tensor (B, H, W, C), C = 1 or 3, on the training device.
    size : output side in pixels.
    cfg : the view recipe.
    gen : CPU generator every random draw comes from.

    Returns
    -------
    float (B, C, size, size), normalised as every ferlib model input ((x - 0.5) / 0.5).
    """
    x, _ = augment_batch(images, size, cfg.geometry(), gen)
    x = _colour(x, cfg, gen)
    if cfg.blur > 0:
        x = _blur(x, cfg, gen)
    return (x - MEAN) / STD


def two_views(images: torch.Tensor, size: int, cfg: ViewConfig,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views (B, C, size, size) of uint8 ``images`` (B, H, W, C): a positive pair per face."""
    return augment_view(images, size, cfg, gen), augment_view(images, size, cfg, gen)
