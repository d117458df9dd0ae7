"""``mediapipe`` backend: the MediaPipe face-mesh model (``face_landmark.tflite``, Kartynnik et al., CVPR-W 2019)
run with ``ai_edge_litert`` (no mediapipe install needed, but its model file is).

The model takes a (1, 192, 192, 3) float RGB crop in [0, 1] and returns 468 (x, y, z) mesh points in crop
pixels plus a face-presence logit. As in MediaPipe's face-mesh graph, the crop is the face box enlarged
``roi_scale`` (1.5) times about its centre (square on the longer side, zeros outside the image); the face
box is the whole image, since FER crops are faces. The 468 mesh points are reduced to the 68-point
semantics with :data:`MESH_TO_68`, a nearest-vertex correspondence: mesh contour points follow the face
outline at a slightly different height than iBUG's jaw points, so jaw points (0-16) are approximate; eye,
brow, nose and lip points sit on the same features.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from .core import given_model_file, register_backend
from .layout import NUM_POINTS

__all__ = ["MediapipeBackend", "MESH_TO_68", "find_face_mesh_model"]

INPUT_SIZE = 192
MESH_POINTS = 468
MODEL_SUBPATH = Path("modules") / "face_landmark" / "face_landmark.tflite"

#: Mesh vertex used for each of the 68 points, shape (68,), int64 (image-side names as in ``layout``):
#: jaw 0-16 along the mesh face oval (127 image-left ear ... 152 chin ... 356 image-right ear);
#: brows 17-26 (70 63 105 66 107 | 336 296 334 293 300); nose bridge 27-30 (168 197 5 4, 4 = tip);
#: nostrils 31-35 (75 97 2 326 305); left eye 36-41 (33 outer, 160 158 upper, 133 inner, 153 144 lower);
#: right eye 42-47 (362 inner, 385 387 upper, 263 outer, 373 380 lower); outer lip 48-59 (61 corner,
#: 40 37 0 267 270 upper, 291 corner, 321 314 17 84 91 lower); inner lip 60-67 (78 82 13 312 308 317 14 87).
#: Mirror pairs of the mesh map onto the pairs of ``FLIP_PERMUTATION_68``. Read-only.
MESH_TO_68: np.ndarray = np.array([
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,  # jaw
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,                                      # brows
    168, 197, 5, 4, 75, 97, 2, 326, 305,                                                # nose
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,                          # eyes
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,                                 # outer lip
    78, 82, 13, 312, 308, 317, 14, 87,                                                  # inner lip
], dtype=np.int64)
MESH_TO_68.setflags(write=False)


def find_face_mesh_model(model_path: str | os.PathLike | None = None) -> Path:
    """``model_path`` if given, else ``<mediapipe package>/modules/face_landmark/face_landmark.tflite``.

    Raises
    ------
    FileNotFoundError
        Naming the path(s) looked at and how to provide the model.
    """
    if model_path is not None:
        return given_model_file(model_path, "mediapipe", "model_path")
    spec = importlib.util.find_spec("mediapipe")
    looked = "the mediapipe package is not installed"
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / MODEL_SUBPATH
        if path.is_file():
            return path
        looked = f"{path} does not exist"
    raise FileNotFoundError(
        f"landmark backend 'mediapipe' needs the face-mesh model face_landmark.tflite ({looked}): pass "
        f"model_path=PATH to the file (found in a mediapipe install under mediapipe/{MODEL_SUBPATH.as_posix()})")


def _load_interpreter(path: Path, num_threads: int):
    from ai_edge_litert.interpreter import Interpreter  # lazy: optional dependency

    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


@register_backend("mediapipe")
class MediapipeBackend:
    """MediaPipe face mesh reduced to 68 points.

    Parameters
    ----------
    model_path : str or PathLike, optional
        ``face_landmark.tflite``; default :func:`find_face_mesh_model`.
    roi_scale : float
        The crop is the whole image enlarged this many times about its centre (MediaPipe: 1.5).
    min_presence : float
        An image fails (``ok=False``) when the model's face-presence probability is not above this.
    num_threads : int
        CPU threads of the TFLite interpreter.
    """

    def __init__(self, *, model_path: str | os.PathLike | None = None, roi_scale: float = 1.5,
                 min_presence: float = 0.5, num_threads: int = 1):
        if roi_scale <= 0:
            raise ValueError(f"roi_scale must be > 0, got {roi_scale}")
        self.interpreter = _load_interpreter(find_face_mesh_model(model_path), num_threads)
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        outputs = self.interpreter.get_output_details()
        sizes = {o["index"]: int(np.prod(o["shape"])) for o in outputs}
        mesh = [i for i, s in sizes.items() if s >= 3 * MESH_POINTS]
        flag = [i for i, s in sizes.items() if s == 1]
        if not mesh or not flag:
            raise ValueError(f"landmark backend 'mediapipe': the model's outputs {sorted(sizes.values())} hold no "
                             f"{3 * MESH_POINTS}-value mesh and 1-value face flag: not a face_landmark model")
        self.mesh_index, self.flag_index = mesh[0], flag[0]
        self.roi_scale, self.min_presence = roi_scale, min_presence

    def _roi(self, h: int, w: int) -> tuple[float, float, float, float]:
        side = self.roi_scale * max(h, w)
        return w / 2 - side / 2, h / 2 - side / 2, w / 2 + side / 2, h / 2 + side / 2

    def _crop(self, image: np.ndarray, roi) -> np.ndarray:
        from PIL import Image

        rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
        out = Image.fromarray(rgb).transform((INPUT_SIZE, INPUT_SIZE), Image.EXTENT, roi, Image.BILINEAR)
        return (np.asarray(out, np.float32) / 255.0)[None]

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``uint8 (B, H, W, C)`` -> ``points (B, 68, 2)`` float32 fractions, ``ok (B,)`` bool."""
        _, h, w, _ = images.shape
        x0, y0, x1, y1 = roi = self._roi(h, w)
        points = np.empty((len(images), NUM_POINTS, 2), np.float32)
        ok = np.zeros(len(images), bool)
        for i, image in enumerate(images):
            self.interpreter.set_tensor(self.input_index, self._crop(image, roi))
            self.interpreter.invoke()
            mesh = self.interpreter.get_tensor(self.mesh_index).reshape(-1)[:3 * MESH_POINTS].reshape(MESH_POINTS, 3)
            logit = float(self.interpreter.get_tensor(self.flag_index).reshape(-1)[0])
            xy = mesh[MESH_TO_68, :2] / INPUT_SIZE * np.array([x1 - x0, y1 - y0]) + np.array([x0, y0])
            points[i] = xy / np.array([w, h])
            ok[i] = 1.0 / (1.0 + np.exp(-logit)) > self.min_presence
        return points, ok
