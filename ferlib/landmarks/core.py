"""The front door :func:`extract_landmarks`: a name -> backend registry, batching, failure handling, cache.

A backend is a class registered by ``@register_backend("<name>")`` at its definition, whose constructor
takes keyword-only options (loading its model there) and whose ``predict(images)`` maps a batch
``uint8 (B, H, W, C)`` to ``points (B, 68, 2)`` float32 ``(x, y)`` fractions of width/height and ``ok (B,)``
bool. Everything else (validation, blank-image and plausibility checks, mean-shape filling, the warning, the
cache) happens here, once, for all backends.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._registry import Registry, full_options
from ..results import atomic_savez
from .layout import MEAN_SHAPE_68, NUM_POINTS, PARTS_68

__all__ = ["Landmarks", "Backend", "BACKENDS", "register_backend", "list_backends", "create_backend",
           "extract_landmarks", "landmarks_cache_path", "landmarks_cache_file", "plausible_shapes"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1            # bump when a backend's output changes for the same images and options
MIN_PIXEL_STD = 2.0          # images whose grey levels vary less than this (0-255 scale) count as blank
_NOT_IN_KEY = ("device",)    # backend options that do not change the result


class Backend(Protocol):
    """What :func:`register_backend` expects: ``cls(**options)`` then ``predict``."""

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``uint8 (B, H, W, C)`` -> ``points (B, 68, 2)`` float32 fractions, ``ok (B,)`` bool."""
        ...


@dataclass(frozen=True)
class Landmarks:
    """68-point landmarks of N images.

    Attributes
    ----------
    points : np.ndarray, shape (N, 68, 2), float32
        ``(x, y)`` as fractions of the image width/height (edge coordinates, see :mod:`ferlib.landmarks.layout`).
        Rows with ``ok == False`` hold the mean shape of the successful rows.
    ok : np.ndarray, shape (N,), bool
        Whether the backend produced a plausible shape for that image.
    backend : str
        Backend name.
    options : dict
        The backend options the points were made with (defaults filled in).
    """

    points: np.ndarray
    ok: np.ndarray
    backend: str
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ok)
        if self.points.shape != (n, NUM_POINTS, 2):
            raise ValueError(f"points must have shape ({n}, {NUM_POINTS}, 2) for {n} ok flags, got {self.points.shape}")

    def __len__(self) -> int:
        return len(self.ok)

    @property
    def failures(self) -> int:
        """Number of images whose landmarks failed (``ok == False``)."""
        return int((~self.ok).sum())

    def in_pixels(self, width: float, height: float | None = None) -> np.ndarray:
        """Points in pixel edge coordinates of a ``width x height`` image, shape (N, 68, 2) float32."""
        height = width if height is None else height
        return (self.points * np.array([width, height], np.float32)).astype(np.float32)

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` atomically (temporary file, then rename)."""
        meta = json.dumps(dict(backend=self.backend, options=self.options, version=CACHE_VERSION), default=str)
        return atomic_savez(path, points=self.points, ok=self.ok, meta=np.array(meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Landmarks":
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(points=z["points"], ok=z["ok"].astype(bool), backend=meta["backend"], options=meta["options"])


# ---------------------------------------------------------------------------------------------- registry
_BACKENDS: Registry[type] = Registry("landmark backend")
#: Backend name -> class; a live read-only view of the registry.
BACKENDS = _BACKENDS.view()


def register_backend(name: str):
    """Class decorator registering a backend as ``name`` (a name registered twice raises ValueError).

    The class takes keyword-only options (loading its model there) and has a ``predict`` (see :class:`Backend`);
    its keyword-only parameters are the backend's options and, with their defaults, its cache key.
    """
    return _BACKENDS.register(name)


def list_backends() -> list[str]:
    """Names accepted by :func:`extract_landmarks` ``backend=``."""
    return _BACKENDS.names()


def _full_options(name: str, cls: type, options: dict) -> dict:
    """``options`` with the backend's defaults filled in; unknown names raise TypeError listing valid ones."""
    return full_options(cls, options, what=f"landmark backend {name!r}")


def create_backend(name: str, **options) -> Backend:
    """Instantiate backend ``name`` (one of :func:`list_backends`) with its keyword options."""
    cls = _BACKENDS.get(name)
    _full_options(name, cls, options)
    return cls(**options)


# ---------------------------------------------------------------------------------------------- checks
def given_model_file(path: str | os.PathLike, backend: str, param: str) -> Path:
    """``Path(path)`` when that file exists, else a FileNotFoundError naming the backend, parameter and path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark backend {backend!r}: {param} {path} does not exist")
    return path


def plausible_shapes(points: np.ndarray, *, margin: float = 0.25) -> np.ndarray:
    """Whether each 68-point shape looks like an upright face.

    Parameters
    ----------
    points : np.ndarray, shape (N, 68, 2)
        ``(x, y)`` fractions.
    margin : float
        How far outside the image (as a fraction of its size) points may lie.

    Returns
    -------
    np.ndarray, shape (N,), bool
        True where all points are finite and within ``[-margin, 1 + margin]``, the eyes lie above the nose
        tip, the nose tip above the mouth centre, and the image-left eye left of the image-right eye.
    """
    finite = np.isfinite(points).all(axis=(1, 2))
    p = np.nan_to_num(points)
    inside = ((p >= -margin) & (p <= 1 + margin)).all(axis=(1, 2))
    left_eye = p[:, list(PARTS_68["left_eye"])].mean(1)
    right_eye = p[:, list(PARTS_68["right_eye"])].mean(1)
    mouth = p[:, list(PARTS_68["outer_lip"])].mean(1)
    nose_tip = p[:, 30]
    eyes_y = (left_eye[:, 1] + right_eye[:, 1]) / 2
    ordered = (eyes_y < nose_tip[:, 1]) & (nose_tip[:, 1] < mouth[:, 1]) & (left_eye[:, 0] < right_eye[:, 0])
    return finite & inside & ordered


def _blank(images: np.ndarray) -> np.ndarray:
    """(N,) bool: images without structure (grey-level std below :data:`MIN_PIXEL_STD`)."""
    return images.std(axis=(1, 2, 3), dtype=np.float32) < MIN_PIXEL_STD


# ---------------------------------------------------------------------------------------------- cache
def _as_images(data) -> np.ndarray:
    """The images (N, H, W, C) uint8 of a FERData or an image array."""
    images = data.images if hasattr(data, "images") else np.asarray(data)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise ValueError(f"data must be a FERData or uint8 images (N, H, W) / (N, H, W, C) with C in (1, 3); "
                         f"got {images.dtype} {images.shape}")
    return images


def _image_hash(images: np.ndarray) -> str:
    """The content hash of uint8 ``images`` in the cache key. It hashes the images only (not
    ``FERData.fingerprint()``, which also covers ids and labels), so relabelled copies of a dataset (noise
    injection) reuse the landmarks of the clean one."""
    h = hashlib.sha1(f"{images.shape}".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:16]


def _key_value(value: Any) -> Any:
    """A JSON-able stand-in for an option value (torch modules by a digest of their weights)."""
    if hasattr(value, "state_dict") and callable(value.state_dict):
        h = hashlib.sha1(type(value).__name__.encode())
        for k, t in value.state_dict().items():
            h.update(k.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return f"module:{h.hexdigest()[:16]}"
    if isinstance(value, os.PathLike):
        return str(Path(value).resolve())
    return value


def landmarks_cache_path(image_hash: str, backend: str, options: dict, *,
                         cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache file for images with content hash ``image_hash`` under ``backend`` and its full ``options``.

    Files are written atomically and never deleted automatically; remove ``<cache_dir>/landmarks`` to reclaim space.
    """
    key_opts = {k: _key_value(v) for k, v in sorted(options.items()) if k not in _NOT_IN_KEY}
    key = json.dumps(dict(version=CACHE_VERSION, options=key_opts), sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    if cache_dir is None:
        from ferlib.data.cache import default_cache_dir
        cache_dir = default_cache_dir()
    return Path(cache_dir) / "landmarks" / f"{backend}-{image_hash}-{digest}.npz"


def landmarks_cache_file(data, *, backend: str = "dlib", cache_dir: str | os.PathLike | None = None,
                         **options) -> Path:
    """The cache file :func:`extract_landmarks` reads and writes for these images (a FERData or uint8 images),
    ``backend`` and its ``options`` (:func:`landmarks_cache_path`), whether or not it exists yet."""
    full = _full_options(backend, _BACKENDS.get(backend), options)
    return landmarks_cache_path(_image_hash(_as_images(data)), backend, full, cache_dir=cache_dir)


def _load_cached(path: Path, n: int) -> Landmarks | None:
    if not path.is_file():
        return None
    try:
        lm = Landmarks.load(path)
    except Exception:  # truncated or older format: recompute and overwrite
        log.warning("ignoring unreadable landmark cache %s", path)
        return None
    return lm if len(lm) == n else None


# ---------------------------------------------------------------------------------------------- extraction
def _predict_all(model: Backend, images: np.ndarray, batch_size: int, progress: bool, desc: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    n = len(images)
    points = np.full((n, NUM_POINTS, 2), np.nan, np.float32)
    ok = np.zeros(n, bool)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, desc=desc, unit="img", mininterval=2.0)
    for start in range(0, n, batch_size):
        batch = images[start:start + batch_size]
        p, o = model.predict(batch)
        if np.shape(p) != (len(batch), NUM_POINTS, 2) or np.shape(o) != (len(batch),):
            raise ValueError(f"{type(model).__name__}.predict returned points {np.shape(p)} and ok {np.shape(o)} "
                             f"for {len(batch)} images; expected ({len(batch)}, {NUM_POINTS}, 2) and ({len(batch)},)")
        points[start:start + len(batch)] = p
        ok[start:start + len(batch)] = np.asarray(o, bool) & ~_blank(batch)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return points, ok


def _fill_failures(points: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``points`` with failed rows replaced by the mean successful shape (:data:`MEAN_SHAPE_68` if none)."""
    points = points.copy()
    mean = points[ok].mean(axis=0) if ok.any() else MEAN_SHAPE_68
    points[~ok] = mean
    return points.astype(np.float32)


def _report(lm: Landmarks, source: str) -> None:
    if lm.failures:
        warnings.warn(f"landmarks ({lm.backend}, {source}): {lm.failures} of {len(lm)} images failed; "
                      f"they hold the mean shape and ok=False", RuntimeWarning, stacklevel=3)
    log.info("landmarks (%s, %s): %d/%d ok", lm.backend, source, len(lm) - lm.failures, len(lm))


def extract_landmarks(data, *, backend: str = "dlib", cache_dir: str | os.PathLike | None = None,
                      cache: bool = True, batch_size: int = 64, progress: bool = True, **options) -> Landmarks:
    """68-point landmarks of every image, computed once per dataset and backend and then read from cache.

    Parameters
    ----------
    data : FERData or np.ndarray
        A :class:`~ferlib.data.dataset.FERData` (its ``images`` are used) or uint8 images of shape (N, H, W) or
        (N, H, W, C), C in (1, 3).
    backend : str
        One of :func:`list_backends`: ``"dlib"`` (default, ships with the ``landmarks`` extra),
        ``"face_alignment"`` (2DFAN-4 weights needed) or ``"mediapipe"`` (``face_landmark.tflite`` needed).
    cache_dir : str or PathLike, optional
        Cache folder; default ``$FERLIB_CACHE`` or ``~/.cache/ferlib``. Files go to ``<cache_dir>/landmarks/``,
        named ``<backend>-<image hash>-<options digest>.npz``: a content hash of the images alone (labels and
        ids do not change landmarks, so noisy relabellings share one entry) and a digest of the backend options
        with their defaults (``device`` excluded).
    cache : bool
        Read and write the cache (False: always compute, write nothing).
    batch_size : int
        Images per backend call (and progress-bar step).
    progress : bool
        Show a tqdm progress bar.
    **options
        Backend options (see each backend class: :class:`~ferlib.landmarks.backend_dlib.DlibBackend`,
        :class:`~ferlib.landmarks.backend_fan.FanBackend`,
        :class:`~ferlib.landmarks.backend_mediapipe.MediapipeBackend`); unknown names raise TypeError.

    Returns
    -------
    Landmarks
        ``points`` (N, 68, 2) float32 fractions, ``ok`` (N,) bool, ``failures``. An image fails when it is
        blank (grey-level std < :data:`MIN_PIXEL_STD`), when the backend reports failure, or when the shape
        is implausible (:func:`plausible_shapes`); failed rows hold the mean successful shape and a
        RuntimeWarning gives their count.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = _as_images(data)
    cls = _BACKENDS.get(backend)
    full = _full_options(backend, cls, options)
    path = landmarks_cache_file(images, backend=backend, cache_dir=cache_dir, **options) if cache else None
    lm = _load_cached(path, len(images)) if cache else None
    if lm is not None:
        _report(lm, f"cached {path.name}")
        return lm
    model = cls(**options)
    points, ok = _predict_all(model, images, batch_size, progress, desc=f"landmarks ({backend})")
    ok &= plausible_shapes(points)
    lm = Landmarks(points=_fill_failures(points, ok), ok=ok, backend=backend,
                   options={k: _key_value(v) for k, v in full.items()})
    if cache:
        lm.save(path)
    _report(lm, "computed")
    return lm
