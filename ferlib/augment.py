"""Data augmentation on the tensor batch, on the training device (a GPU is never starved by a CPU pipeline).

Geometry (flip, pad+crop or random resized crop, resizing to the input size) is ONE affine map per sample
applied with ``grid_sample``; the map is returned so that methods with spatial targets (LA-Net's landmarks)
move them with the image: a point ``p_out`` of the output, in normalised [-1, 1] coordinates, comes from
``p_in = A[:, :2] @ p_out + A[:, 2]`` of the input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .options import NON_NEGATIVE, POSITIVE, PROBABILITY, UNIT_OPEN, check_ranges, check_types

__all__ = ["AugmentConfig", "augment_batch", "prepare_batch", "make_view", "VIEWS"]


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; probabilities in [0, 1], set one to 0 to switch it off.

    flip : probability of a horizontal mirror.
    crop : ``"pad"`` (translate by up to ``pad`` pixels, zero fill, as pad+random-crop), ``"resized"``
        (random resized crop with ``scale`` area and ``ratio`` aspect ranges) or ``"none"``.
    erase : probability of random erasing (Zhong et al., AAAI 2020) of a rectangle of ``erase_scale`` area.
    erase_fill : ``"zero"`` (the normalised mean, torchvision's default) or ``"random"`` (uniform random pixels
        in [0, 1] before normalisation, as LDLVA's code).
    brightness, contrast : maximum relative jitter (0.2 = factor in [0.8, 1.2]).
    noise_std : standard deviation of additive Gaussian noise on [0, 1] images.
    noise_p : probability that an image gets that noise (NLA's code: 0.5, sigma^2 = 30 on uint8).
    mean, std : normalisation applied after the photometric jitter (0.5 / 0.5 maps [0, 1] to [-1, 1]).
    """

    flip: float = 0.5
    crop: str = "pad"
    pad: int = 4
    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    erase: float = 0.25
    erase_scale: tuple[float, float] = (0.02, 0.2)
    erase_fill: str = "zero"
    brightness: float = 0.2
    contrast: float = 0.2
    noise_std: float = 0.0
    noise_p: float = 1.0
    mean: float = 0.5
    std: float = 0.5

    def __post_init__(self) -> None:
        if self.crop not in ("pad", "resized", "none"):
            raise ValueError(f"AugmentConfig.crop must be 'pad', 'resized' or 'none', got {self.crop!r}")
        check_types(self, where="AugmentConfig")
        if self.erase_fill not in ("zero", "random"):
            raise ValueError(f"AugmentConfig.erase_fill must be 'zero' or 'random', got {self.erase_fill!r}")
        check_ranges(self, _RANGES, where="AugmentConfig")


#: The values AugmentConfig accepts.
_RANGES = {"flip": PROBABILITY, "pad": NON_NEGATIVE, "scale": (lambda v: 0 < v <= 1, "in (0, 1]"),
           "ratio": POSITIVE, "erase": PROBABILITY, "erase_scale": (lambda v: 0 < v < 1, "in (0, 1)"),
           "brightness": UNIT_OPEN, "contrast": UNIT_OPEN, "noise_std": NON_NEGATIVE, "noise_p": PROBABILITY,
           "std": POSITIVE}


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def random_affine(n: int, size: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) affine maps (output -> input, normalised coordinates) for flip + crop; drawn on the CPU."""
    sx, sy = torch.ones(n), torch.ones(n)
    tx, ty = torch.zeros(n), torch.zeros(n)
    if cfg.crop == "pad":
        shift = 2 * cfg.pad / size
        tx, ty = _uniform(-shift, shift, n, gen), _uniform(-shift, shift, n, gen)
    elif cfg.crop == "resized":
        area = _uniform(*cfg.scale, n, gen)
        log_r = _uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), n, gen)
        sx = (area * log_r.exp()).sqrt().clamp(max=1.0)
        sy = (area / log_r.exp()).sqrt().clamp(max=1.0)
        tx = (1 - sx) * _uniform(-1, 1, n, gen)
        ty = (1 - sy) * _uniform(-1, 1, n, gen)
    flip = torch.rand(n, generator=gen) < cfg.flip
    sx = torch.where(flip, -sx, sx)
    zero = torch.zeros(n)
    return torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)


def _photometric(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    dev = x.device
    if cfg.contrast > 0:
        c = _uniform(1 - cfg.contrast, 1 + cfg.contrast, n, gen).to(dev).view(n, 1, 1, 1)
        m = x.mean((1, 2, 3), keepdim=True)
        x = (x - m) * c + m
    if cfg.brightness > 0:
        x = x * _uniform(1 - cfg.brightness, 1 + cfg.brightness, n, gen).to(dev).view(n, 1, 1, 1)
    if cfg.noise_std > 0:
        noise = torch.randn(x.shape, generator=gen).to(dev)
        chosen = (torch.rand(n, generator=gen) < cfg.noise_p).to(dev).view(n, 1, 1, 1)
        x = x + cfg.noise_std * noise * chosen
    return x.clamp(0, 1)


def _erase(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Fill one random rectangle per chosen image with zeros (the normalised mean) or random pixels."""
    n, _, h, w = x.shape
    area = _uniform(*cfg.erase_scale, n, gen)
    log_r = _uniform(math.log(0.3), math.log(3.3), n, gen)
    eh = (area / log_r.exp()).sqrt().clamp(max=1.0)
    ew = (area * log_r.exp()).sqrt().clamp(max=1.0)
    y0, x0 = (1 - eh) * torch.rand(n, generator=gen), (1 - ew) * torch.rand(n, generator=gen)
    chosen = torch.rand(n, generator=gen) < cfg.erase
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    in_y = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + eh)[:, None])
    in_x = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + ew)[:, None])
    mask = (in_y[:, :, None] & in_x[:, None, :] & chosen[:, None, None]).to(x.device)
    if cfg.erase_fill == "zero":
        return x.masked_fill(mask[:, None], 0.0)
    fill = (torch.rand(x.shape, generator=gen).to(x.device) - cfg.mean) / cfg.std
    return torch.where(mask[:, None], fill, x)


def prepare_batch(images: torch.Tensor, size: int, cfg: AugmentConfig) -> torch.Tensor:
    """Evaluation transform: uint8 (B, H, W, C) -> normalised float (B, C, size, size), no randomness."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - cfg.mean) / cfg.std


def augment_batch(images: torch.Tensor, size: int, cfg: AugmentConfig,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Training transform of a batch.

    Parameters
    ----------
    images : uint8 tensor (B, H, W, C) on the training device.
    size : output side in pixels.
    gen : CPU generator; every random draw comes from it, so a run is reproducible on any device.

    Returns
    -------
    x : float (B, C, size, size), normalised.
    affine : float (B, 2, 3), the geometric map applied (see module docstring).
    """
    x = images.permute(0, 3, 1, 2).float().div_(255)
    n, c = x.shape[:2]
    affine = random_affine(n, size, cfg, gen).to(x.device)
    grid = F.affine_grid(affine, [n, c, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = (_photometric(x, cfg, gen) - cfg.mean) / cfg.std
    if cfg.erase > 0:
        x = _erase(x, cfg, gen)
    return x, affine


VIEWS = {
    # NLA (and EAC clean mode): the horizontal mirror of the augmented image.
    "flip": lambda x, images, size, cfg, gen: x.flip(3),
    # An independently augmented second view of the same images.
    "second": lambda x, images, size, cfg, gen: augment_batch(images, size, cfg, gen)[0],
}


def make_view(name: str, x: torch.Tensor, images: torch.Tensor, size: int, cfg: AugmentConfig,
              gen: torch.Generator) -> torch.Tensor:
    """Extra view ``name`` of a batch (``x``: the augmented batch, ``images``: the raw uint8 batch)."""
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; valid: {', '.join(VIEWS)}")
    return VIEWS[name](x, images, size, cfg, gen)
