"""Overlay 68-point landmarks on faces (matplotlib, imported on first call)."""
from __future__ import annotations

import numpy as np

from .layout import CLOSED_PARTS_68, NUM_POINTS, PARTS_68

__all__ = ["plot_landmarks"]

_COLORS = {"jaw": "tab:gray", "left_brow": "tab:orange", "right_brow": "tab:orange", "nose_bridge": "tab:green",
           "nose_lower": "tab:green", "left_eye": "tab:blue", "right_eye": "tab:cyan", "outer_lip": "tab:red",
           "inner_lip": "tab:pink"}


def _draw_face(ax, image: np.ndarray, pts: np.ndarray, ok: bool) -> None:
    h, w = image.shape[:2]
    gray = image.ndim == 2 or image.shape[-1] == 1
    ax.imshow(image.reshape(h, w) if gray else image, cmap="gray" if gray else None, vmin=0, vmax=255,
              extent=(0, w, h, 0))
    xy = pts * np.array([w, h])
    for part, idx in PARTS_68.items():
        idx = list(idx) + ([idx[0]] if part in CLOSED_PARTS_68 else [])
        ax.plot(xy[idx, 0], xy[idx, 1], "-", color=_COLORS[part], lw=0.8)
        ax.plot(xy[idx, 0], xy[idx, 1], ".", color=_COLORS[part], ms=2)
    if not ok:
        ax.set_title("failed (mean shape)", color="red", fontsize=7)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")


def plot_landmarks(images: np.ndarray, points: np.ndarray, ok: np.ndarray | None = None, ncols: int = 8, ax=None):
    """Faces with their landmarks drawn part by part (eyes and lips as closed outlines).

    Parameters
    ----------
    images : np.ndarray, shape (N, H, W) or (N, H, W, C), uint8
        The faces.
    points : np.ndarray, shape (N, 68, 2)
        ``(x, y)`` fractions of width/height (e.g. ``Landmarks.points``).
    ok : np.ndarray, shape (N,), bool, optional
        Success flags; failed faces get a red "failed" title.
    ncols : int
        Grid columns when ``ax`` is None.
    ax : matplotlib Axes or sequence of Axes, optional
        Where to draw: one Axes per image (a single Axes when N == 1). Default: a new figure with a grid.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    images, points = np.asarray(images), np.asarray(points)
    n = len(images)
    if points.shape != (n, NUM_POINTS, 2):
        raise ValueError(f"points must have shape ({n}, {NUM_POINTS}, 2) for {n} images, got {points.shape}")
    ok = np.ones(n, bool) if ok is None else np.asarray(ok, bool)
    if ax is None:
        ncols = max(1, min(ncols, n))
        nrows = max(1, -(-n // ncols))
        fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.6 * nrows), squeeze=False)
        axes = axes.ravel()
        for extra in axes[n:]:
            extra.axis("off")
    else:
        axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
        if len(axes) < n:
            raise ValueError(f"ax holds {len(axes)} Axes for {n} images")
        fig = axes[0].figure
    for i in range(n):
        _draw_face(axes[i], images[i], points[i], bool(ok[i]))
    return fig
