"""Facial landmarks for FER crops: 68 points per image from one of several backends, cached per dataset.

>>> from ferlib.landmarks import extract_landmarks, plot_landmarks
>>> lm = extract_landmarks(data, backend="dlib")          # FERData or uint8 images (N, H, W[, C])
>>> lm.points.shape, lm.ok.mean(), lm.failures             # (N, 68, 2) (x, y) fractions of width/height
>>> fig = plot_landmarks(data.images[:16], lm.points[:16], lm.ok[:16])

==================  ==================================================================================
backend             model (nothing is downloaded at run time)
==================  ==================================================================================
``dlib``            dlib 68-point shape predictor, file from the ``face_recognition_models`` package
``face_alignment``  2DFAN-4 TorchScript archive in the torch hub cache or a given path
``mediapipe``       MediaPipe ``face_landmark.tflite`` (468-point mesh mapped to 68) via ``ai_edge_litert``
==================  ==================================================================================

All backends give the iBUG 68-point semantics (:mod:`ferlib.landmarks.layout`: parts, regions,
``FLIP_PERMUTATION_68`` for horizontal flips, a template ``MEAN_SHAPE_68``). Importing this package loads
neither dlib, torch nor the TFLite runtime; each backend imports its dependency when it is created.

Adding a backend: write ``backend_<name>.py`` with a class decorated with ``@register_backend("<name>")``
(keyword-only options, a ``predict`` mapping uint8 ``(B, H, W, C)`` to ``points (B, 68, 2)`` fractions and
``ok (B,)``; see :class:`~ferlib.landmarks.core.Backend`) and import it below. :func:`extract_landmarks`, the
``landmarks:<backend>`` aux source of :mod:`ferlib.va` and ``tests/test_landmarks.py`` (its registry contract)
pick it up by name.
"""
from __future__ import annotations

from .backend_dlib import DlibBackend
from .backend_fan import FAN_CHECKPOINTS, FanBackend, decode_heatmaps
from .backend_mediapipe import MESH_TO_68, MediapipeBackend
from .core import (
    BACKENDS,
    Landmarks,
    create_backend,
    extract_landmarks,
    landmarks_cache_file,
    landmarks_cache_path,
    list_backends,
    plausible_shapes,
    register_backend,
)
from .layout import (
    CLOSED_PARTS_68,
    FLIP_PERMUTATION_68,
    MEAN_SHAPE_68,
    NUM_POINTS,
    PARTS_68,
    REGIONS_68,
    flip_points,
)
from .plot import plot_landmarks

__all__ = [
    "Landmarks", "extract_landmarks", "list_backends", "create_backend", "register_backend", "BACKENDS",
    "landmarks_cache_path", "landmarks_cache_file", "plausible_shapes", "plot_landmarks",
    "DlibBackend", "FanBackend", "MediapipeBackend", "FAN_CHECKPOINTS", "MESH_TO_68", "decode_heatmaps",
    "NUM_POINTS", "PARTS_68", "CLOSED_PARTS_68", "REGIONS_68", "FLIP_PERMUTATION_68", "MEAN_SHAPE_68", "flip_points",
]
