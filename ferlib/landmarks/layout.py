"""The 68-point layout (iBUG 300-W / Multi-PIE markup, as used by dlib and face-alignment) as data.

Side convention
---------------
``left`` and ``right`` name the **image** side of an upright, unflipped face: ``left_eye`` (points 36-41) is
the eye nearer the image's left edge, i.e. the subject's right eye. (face_recognition uses the same names;
the iBUG papers name parts from the subject's view.) Points run as follows:

========  ==========  ==================================================================
indices   part        order
========  ==========  ==================================================================
0-16      jaw         image-left ear -> chin (8) -> image-right ear
17-21     left_brow   outer -> inner
22-26     right_brow  inner -> outer
27-30     nose_bridge top -> nose tip (30)
31-35     nose_lower  image-left nostril wing -> image-right
36-41     left_eye    outer corner (36), two upper lid points, inner corner (39), two lower lid points
42-47     right_eye   inner corner (42), two upper lid points, outer corner (45), two lower lid points
48-59     outer_lip   image-left mouth corner (48), upper lip to (54), lower lip back (clockwise)
60-67     inner_lip   image-left inner corner (60), upper to (64), lower back
========  ==========  ==================================================================

All coordinates in ferlib are ``(x, y)`` fractions of the image width/height in edge coordinates: 0 is the
left/top edge, 1 the right/bottom edge, and pixel column ``j`` has its centre at ``(j + 0.5) / W``.
"""
from __future__ import annotations

from types import MappingProxyType

import numpy as np

__all__ = ["NUM_POINTS", "PARTS_68", "CLOSED_PARTS_68", "REGIONS_68", "FLIP_PERMUTATION_68", "MEAN_SHAPE_68",
           "flip_points"]

NUM_POINTS = 68

#: Fine parts, ``name -> tuple of point indices`` in drawing order. Read-only.
PARTS_68 = MappingProxyType({
    "jaw": tuple(range(0, 17)),
    "left_brow": tuple(range(17, 22)),
    "right_brow": tuple(range(22, 27)),
    "nose_bridge": tuple(range(27, 31)),
    "nose_lower": tuple(range(31, 36)),
    "left_eye": tuple(range(36, 42)),
    "right_eye": tuple(range(42, 48)),
    "outer_lip": tuple(range(48, 60)),
    "inner_lip": tuple(range(60, 68)),
})

#: Parts drawn as closed polygons.
CLOSED_PARTS_68: frozenset[str] = frozenset({"left_eye", "right_eye", "outer_lip", "inner_lip"})

#: Coarse semantic regions: ``jaw``, ``brows``, ``nose``, ``eyes``, ``mouth`` -> point indices. Read-only.
REGIONS_68 = MappingProxyType({
    "jaw": PARTS_68["jaw"],
    "brows": PARTS_68["left_brow"] + PARTS_68["right_brow"],
    "nose": PARTS_68["nose_bridge"] + PARTS_68["nose_lower"],
    "eyes": PARTS_68["left_eye"] + PARTS_68["right_eye"],
    "mouth": PARTS_68["outer_lip"] + PARTS_68["inner_lip"],
})


def _flip_permutation() -> np.ndarray:
    """Index map ``perm`` with ``flipped[i] = mirrored(points[perm[i]])``; built from mirror pairs."""
    pairs = [(i, 16 - i) for i in range(8)]                                    # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]                              # brows
    pairs += [(31, 35), (32, 34)]                                              # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]      # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]                # outer lip
    pairs += [(60, 64), (61, 63), (65, 67)]                                    # inner lip
    perm = np.arange(NUM_POINTS)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    perm.setflags(write=False)
    return perm


#: Left/right swap for horizontal flips, shape (68,), int64: after ``x -> 1 - x`` the point that lands in
#: slot ``i`` is the old point ``FLIP_PERMUTATION_68[i]``. An involution (applying it twice is the
#: identity); points 8, 27-30, 33, 51, 57, 62 and 66 lie on the midline and map to themselves. Read-only.
FLIP_PERMUTATION_68: np.ndarray = _flip_permutation()

#: Template face, shape (68, 2), float32, (x, y) fractions: the mean of dlib's 68-point predictions
#: (``backend="dlib"``, whole-crop box, 192 px upscale) over the 1,398 of the 1,400 FERPlus faces of
#: ``data/ferplus_sample/FER2013Train`` that it fitted plausibly, rounded to 3 decimals. Stand-in shape of failed
#: images when no image of a call succeeded. Read-only.
MEAN_SHAPE_68: np.ndarray = np.array([
    [0.078, 0.383], [0.082, 0.493], [0.095, 0.602], [0.119, 0.708],
    [0.162, 0.806], [0.226, 0.890], [0.307, 0.955], [0.400, 0.998],
    [0.504, 1.007], [0.608, 0.997], [0.701, 0.952], [0.782, 0.887],
    [0.846, 0.801], [0.887, 0.702], [0.910, 0.594], [0.920, 0.483],
    [0.921, 0.373], [0.156, 0.281], [0.209, 0.239], [0.279, 0.227],
    [0.353, 0.236], [0.423, 0.264], [0.568, 0.262], [0.637, 0.231],
    [0.711, 0.220], [0.783, 0.231], [0.838, 0.272], [0.497, 0.357],
    [0.497, 0.430], [0.498, 0.502], [0.499, 0.575], [0.415, 0.627],
    [0.456, 0.642], [0.500, 0.654], [0.544, 0.641], [0.585, 0.626],
    [0.236, 0.370], [0.281, 0.342], [0.338, 0.342], [0.387, 0.377],
    [0.335, 0.390], [0.279, 0.390], [0.608, 0.375], [0.656, 0.338],
    [0.713, 0.337], [0.759, 0.363], [0.717, 0.384], [0.661, 0.386],
    [0.343, 0.773], [0.398, 0.742], [0.459, 0.726], [0.501, 0.737],
    [0.543, 0.725], [0.604, 0.740], [0.661, 0.770], [0.607, 0.827],
    [0.548, 0.852], [0.502, 0.856], [0.456, 0.852], [0.397, 0.828],
    [0.367, 0.774], [0.459, 0.763], [0.501, 0.766], [0.544, 0.762],
    [0.637, 0.773], [0.545, 0.797], [0.501, 0.802], [0.458, 0.797],
], dtype=np.float32)
MEAN_SHAPE_68.setflags(write=False)


def flip_points(points: np.ndarray) -> np.ndarray:
    """Landmarks of the horizontally flipped images.

    Parameters
    ----------
    points : np.ndarray, shape (..., 68, 2)
        ``(x, y)`` fractions of width/height.

    Returns
    -------
    np.ndarray, shape (..., 68, 2)
        ``x -> 1 - x`` with the left/right indices swapped by :data:`FLIP_PERMUTATION_68`, so index ``i`` keeps
        its meaning (36 is still the image-left eye's outer corner).
    """
    points = np.asarray(points)
    if points.shape[-2:] != (NUM_POINTS, 2):
        raise ValueError(f"points must have shape (..., {NUM_POINTS}, 2), got {points.shape}")
    out = points[..., FLIP_PERMUTATION_68, :].copy()
    out[..., 0] = 1 - out[..., 0]
    return out
