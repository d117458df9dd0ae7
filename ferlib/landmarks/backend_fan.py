"""``face_alignment`` backend: the 2D-FAN-4 heatmap network (Bulat & Tzimiropoulos, ICCV 2017) without the
``face_alignment`` package.

The network is the TorchScript archive that face-alignment >= 1.3 downloads to the torch hub cache
(``torch.hub.get_dir()/checkpoints/``, see :data:`FAN_CHECKPOINTS`), loaded with ``torch.jit.load``; or any
``torch.nn.Module`` you built and loaded yourself (e.g. a FAN re-implementation with a state dict) passed as
``checkpoint``. It maps a (B, 3, 256, 256) RGB float input in [0, 1] to (B, 68, 64, 64) heatmaps (a list
of per-stack outputs is accepted: the last is used). What this module does itself, following
face-alignment's ``get_landmarks_from_image``:

1. **Box -> crop.** A face box ``(x0, y0, x1, y1)`` (default: the whole image, since FER crops are faces)
   becomes a centre ``((x0 + x1) / 2, (y0 + y1) / 2 - 0.12 (y1 - y0))`` and a square side
   ``200 (w + h) / 195`` (the S3FD detector's reference scale), exactly as face-alignment turns detector
   boxes into crops; the square is resampled bilinearly to 256 x 256 (zeros outside the image).
2. **Forward** (optionally also on the mirrored crop, heatmaps mirrored back with
   :data:`~ferlib.landmarks.layout.FLIP_PERMUTATION_68` and summed: face-alignment's ``flip_input``).
3. **Decoding** (:func:`decode_heatmaps`): arg-max per heatmap, a quarter-pixel step towards the larger
   neighbour on each axis (interior peaks only), the result taken as the pixel centre (``+ 0.5``), then mapped
   back through the crop. Our crop and its inverse use one edge-coordinate convention, so the mapping is exact;
   face-alignment's own 1-based crop can differ from it by up to one 256-grid pixel.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .core import given_model_file, register_backend
from .layout import FLIP_PERMUTATION_68, NUM_POINTS

__all__ = ["FanBackend", "FAN_CHECKPOINTS", "find_fan_checkpoint", "decode_heatmaps", "fan_crop_box"]

#: File names face-alignment gives the 2DFAN-4 TorchScript archive in ``<torch hub>/checkpoints/``
#: (default, torch 1.6 build, torch 1.5 build); the first one found is used.
FAN_CHECKPOINTS: tuple[str, ...] = ("2DFAN4-cd938726ad.zip", "2DFAN4_1.6-c827573f02.zip", "2DFAN4_1.5-a60332318a.zip")
FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-cd938726ad.zip"
INPUT_SIZE = 256
REFERENCE_SCALE = 195.0  # face-alignment's S3FD reference scale: side = 200 * (w + h) / 195


def find_fan_checkpoint(checkpoint: str | os.PathLike | None = None) -> Path:
    """The 2DFAN-4 archive: ``checkpoint`` if given, else the first of :data:`FAN_CHECKPOINTS` in the hub cache.

    Raises
    ------
    FileNotFoundError
        Naming the path(s) looked at and where to place the file.
    """
    if checkpoint is not None:
        return given_model_file(checkpoint, "face_alignment", "checkpoint")
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for name in FAN_CHECKPOINTS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"landmark backend 'face_alignment' needs the 2DFAN-4 TorchScript weights: place {FAN_CHECKPOINTS[0]} "
        f"(from {FAN_URL}) at {folder / FAN_CHECKPOINTS[0]} (also accepted there: "
        f"{', '.join(FAN_CHECKPOINTS[1:])}), or pass checkpoint=PATH. Nothing is downloaded at run time.")


def fan_crop_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float]:
    """Face box in fractions -> ``(cx, cy, side)`` of the square crop in pixels (face-alignment's convention)."""
    x0, y0, x1, y1 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.12 * (y1 - y0)
    side = 200.0 * ((x1 - x0) + (y1 - y0)) / REFERENCE_SCALE
    return cx, cy, side


def decode_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peak positions of landmark heatmaps.

    Parameters
    ----------
    heatmaps : np.ndarray, shape (B, K, R, R)
        One heatmap per landmark.

    Returns
    -------
    points : np.ndarray, shape (B, K, 2), float32
        ``(x, y)`` in heatmap edge coordinates (0 to R): arg-max pixel centre ``+ 0.5``, moved 0.25 towards the
        larger of its two neighbours on each axis when the peak is not on the border.
    scores : np.ndarray, shape (B, K), float32
        The heatmap maxima.
    """
    b, k, r, c = heatmaps.shape
    flat = heatmaps.reshape(b, k, r * c)
    idx = flat.argmax(-1)
    scores = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
    px, py = idx % c, idx // c
    interior = (px > 0) & (px < c - 1) & (py > 0) & (py < r - 1)
    bi, ki = np.indices((b, k))
    sx, sy = np.clip(px, 1, c - 2), np.clip(py, 1, r - 2)
    dx = heatmaps[bi, ki, py, sx + 1] - heatmaps[bi, ki, py, sx - 1]
    dy = heatmaps[bi, ki, sy + 1, px] - heatmaps[bi, ki, sy - 1, px]
    pts = np.stack([px + 0.5 + 0.25 * np.sign(dx) * interior, py + 0.5 + 0.25 * np.sign(dy) * interior], -1)
    return pts.astype(np.float32), scores.astype(np.float32)


@register_backend("face_alignment")
class FanBackend:
    """2DFAN-4 landmarks on a given face box.

    Parameters
    ----------
    checkpoint : str, PathLike or torch.nn.Module, optional
        The TorchScript archive (default: found by :func:`find_fan_checkpoint`) or a ready module.
    box : tuple of 4 floats
        Face box ``(x0, y0, x1, y1)`` as fractions of width/height; default the whole image.
    flip_input : bool
        Also run the mirrored crop and sum the heatmaps (twice the compute).
    min_score : float
        An image fails (``ok=False``) when its mean heatmap maximum is not above this (default 0: only
        non-finite or all-zero outputs fail).
    device : str
        Torch device, e.g. ``"cpu"`` or ``"cuda"`` (not part of the cache key).
    """

    def __init__(self, *, checkpoint=None, box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
                 flip_input: bool = False, min_score: float = 0.0, device: str = "cpu"):
        import torch

        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"box must be (x0, y0, x1, y1) fractions with x0 < x1 and y0 < y1, got {box}")
        if isinstance(checkpoint, torch.nn.Module):
            model = checkpoint
        else:
            path = find_fan_checkpoint(checkpoint)
            try:
                with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; FAN ships only as such
                    warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
                    model = torch.jit.load(str(path), map_location=device)
            except RuntimeError as e:
                raise ValueError(f"landmark backend 'face_alignment': {path} is not a TorchScript archive ({e}); "
                                 f"build the FAN module yourself, load its state dict and pass it as checkpoint="
                                 ) from None
        self.model = model.to(device).eval()
        self.box, self.flip_input, self.min_score, self.device = tuple(box), flip_input, min_score, device

    def _crop(self, images: np.ndarray):
        """uint8 (B, H, W, C) -> float (B, 3, 256, 256) in [0, 1] crop, and ``(cx, cy, side)``."""
        import torch
        import torch.nn.functional as F

        b, h, w, c = images.shape
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255
        x = x.expand(-1, 3, -1, -1) if c == 1 else x
        cx, cy, side = fan_crop_box(self.box, w, h)
        theta = torch.tensor([[side / w, 0, 2 * cx / w - 1], [0, side / h, 2 * cy / h - 1]], dtype=torch.float32)
        grid = F.affine_grid(theta.expand(b, 2, 3).to(self.device), [b, 3, INPUT_SIZE, INPUT_SIZE],
                             align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False), (cx, cy, side)

    def _heatmaps(self, x):
        import torch

        def run(inp):
            out = self.model(inp)
            return out[-1] if isinstance(out, (list, tuple)) else out

        with torch.no_grad():
            hm = run(x)
            if self.flip_input:
                hm = hm + run(x.flip(-1)).flip(-1)[:, FLIP_PERMUTATION_68.tolist()]
        return hm.float().cpu().numpy()

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``uint8 (B, H, W, C)`` -> ``points (B, 68, 2)`` float32 fractions, ``ok (B,)`` bool."""
        _, h, w, _ = images.shape
        x, (cx, cy, side) = self._crop(images)
        hm = self._heatmaps(x)
        if hm.shape[1] != NUM_POINTS:
            raise ValueError(f"landmark backend 'face_alignment': the network gave {hm.shape[1]} heatmaps, "
                             f"expected {NUM_POINTS}")
        pts, scores = decode_heatmaps(hm)
        res = np.array(hm.shape[-1:] + hm.shape[-2:-1], np.float32)  # (R_x, R_y)
        xy = np.array([cx - side / 2, cy - side / 2], np.float32) + pts * (side / res)
        points = (xy / np.array([w, h], np.float32)).astype(np.float32)
        ok = np.isfinite(points).all(axis=(1, 2)) & (scores.mean(-1) > self.min_score)
        return points, ok
