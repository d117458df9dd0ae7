"""ferlib.landmarks: layout data, the FAN decoding on a planted stand-in network, dlib on real FERPlus faces,
failure handling, the cache, the mediapipe path on a fake interpreter, plotting."""
from __future__ import annotations

import inspect
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferlib.landmarks import (
    BACKENDS,
    FAN_CHECKPOINTS,
    FLIP_PERMUTATION_68,
    MEAN_SHAPE_68,
    MESH_TO_68,
    PARTS_68,
    REGIONS_68,
    DlibBackend,
    Landmarks,
    create_backend,
    extract_landmarks,
    flip_points,
    landmarks_cache_file,
    list_backends,
    plausible_shapes,
    plot_landmarks,
    register_backend,
)
from ferlib.landmarks import backend_mediapipe
from ferlib.landmarks.backend_fan import fan_crop_box

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "ferplus_sample" / "FER2013Train"
N_FACES = 16


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Never write the user's cache from tests."""
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """The first 16 shipped FERPlus training faces, uint8 (16, 48, 48, 1)."""
    files = sorted(SAMPLE.glob("*.png"))[:N_FACES]
    if len(files) < N_FACES:
        pytest.skip(f"the FERPlus sample is missing from {SAMPLE}")
    return np.stack([np.asarray(Image.open(f).convert("L")) for f in files])[..., None]


@pytest.fixture
def hub_dir(tmp_path):
    """An empty torch hub cache for the duration of one test."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def random_faces(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- layout
def test_flip_permutation_is_an_involution_that_mirrors_the_mean_face():
    perm = FLIP_PERMUTATION_68
    assert sorted(perm) == list(range(68))
    np.testing.assert_array_equal(perm[perm], np.arange(68))
    assert set(np.flatnonzero(perm == np.arange(68))) == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}
    np.testing.assert_allclose(flip_points(flip_points(MEAN_SHAPE_68)), MEAN_SHAPE_68, atol=1e-6)
    # faces are nearly symmetric: the mirrored mean face lies on the mean face when the indices are swapped
    assert np.abs(flip_points(MEAN_SHAPE_68) - MEAN_SHAPE_68).max() < 0.03


def test_parts_and_regions_cover_the_68_points_once():
    for groups in (PARTS_68, REGIONS_68):
        idx = sorted(i for g in groups.values() for i in g)
        assert idx == list(range(68))
    assert set(REGIONS_68) == {"jaw", "brows", "nose", "eyes", "mouth"}
    assert plausible_shapes(MEAN_SHAPE_68[None]).all()
    upside_down = MEAN_SHAPE_68 * [1, -1] + [0, 1]
    assert not plausible_shapes(upside_down[None]).any()


def test_mesh_table_is_68_distinct_vertices_and_respects_the_flip():
    assert MESH_TO_68.shape == (68,) and len(set(MESH_TO_68)) == 68 and MESH_TO_68.max() < 468
    # midline points use midline vertices of the mesh (its mirror axis holds 0, 2, 4, 5, 13, 14, 17, 152, 168, 197)
    midline = {0, 2, 4, 5, 13, 14, 17, 152, 168, 197}
    assert {MESH_TO_68[i] for i in np.flatnonzero(FLIP_PERMUTATION_68 == np.arange(68))} <= midline


def test_registry_and_option_errors(faces):
    assert list_backends() == ["dlib", "face_alignment", "mediapipe"]
    with pytest.raises(ValueError, match="valid: dlib, face_alignment, mediapipe"):
        extract_landmarks(faces, backend="hrnet")
    with pytest.raises(TypeError, match="valid: model_path, upscale, detect"):
        extract_landmarks(faces, backend="dlib", upscal=96)
    with pytest.raises(ValueError, match="uint8"):
        extract_landmarks(faces.astype(np.float32))


@pytest.mark.parametrize("name", list_backends())
def test_every_registered_backend_keeps_the_contract(name, faces, hub_dir):
    """Options only (keyword-only, defaulted, documented); unknown options named; then either 68 points per face
    in fractions, or, where its model is not installed here, one line naming the backend."""
    cls = BACKENDS[name]
    params = list(inspect.signature(cls).parameters.values())
    assert all(p.kind == p.KEYWORD_ONLY and p.default is not p.empty for p in params), params
    assert all(f"{p.name} :" in inspect.getdoc(cls) for p in params)  # each option in its Parameters section
    with pytest.raises(TypeError, match=f"no_such_option for landmark backend '{name}'; valid: "):
        create_backend(name, no_such_option=1)
    try:
        backend = create_backend(name)
    except FileNotFoundError as exc:  # no model file here (the hub cache is empty in this test)
        assert f"landmark backend '{name}'" in str(exc) and "\n" not in str(exc)
        return
    points, ok = backend.predict(faces[:4])
    assert np.shape(points) == (4, 68, 2) and np.shape(ok) == (4,) and np.asarray(ok).dtype == bool
    assert np.isfinite(points[ok]).all() and (np.abs(points[ok] - 0.5) < 1.5).all()  # fractions, not pixels


def test_a_backend_name_is_registered_once():
    with pytest.raises(ValueError, match="landmark backend name 'dlib' is empty or already registered"):
        register_backend("dlib")
    assert BACKENDS["dlib"] is DlibBackend


def test_import_is_cheap():
    code = ("import sys, ferlib.landmarks; "
            "print(sorted(m for m in ('torch', 'dlib', 'ai_edge_litert', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- face_alignment
class PlantedHeatmaps(torch.nn.Module):
    """Stand-in for 2DFAN-4: ignores the image and returns fixed (B, 68, 64, 64) heatmaps."""

    def __init__(self, heatmaps: torch.Tensor):
        super().__init__()
        self.register_buffer("heatmaps", heatmaps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3 or x.shape[2] != 256 or x.shape[3] != 256:
            raise ValueError("FAN input must be (B, 3, 256, 256)")
        return self.heatmaps.unsqueeze(0).repeat(x.shape[0], 1, 1, 1)


@pytest.fixture(autouse=True)
def _quiet_torchscript_deprecation():
    """torch >= 2.10 deprecates TorchScript, the format face-alignment ships its weights in."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit", FutureWarning)
        yield


def planted_network(size: int = 48):
    """A scripted stand-in whose peaks sit where MEAN_SHAPE_68 falls in the crop; the peaks, shape (68, 2)."""
    cx, cy, side = fan_crop_box((0, 0, 1, 1), size, size)
    hm_xy = (MEAN_SHAPE_68 * size - [cx - side / 2, cy - side / 2]) * 64 / side
    peaks = np.clip(np.floor(hm_xy), 1, 62).astype(int)
    hm = torch.zeros(68, 64, 64)
    hm[torch.arange(68), torch.as_tensor(peaks[:, 1]), torch.as_tensor(peaks[:, 0])] = 1.0
    hm[0, peaks[0, 1], peaks[0, 0] + 1] = 0.5   # point 0: right neighbour larger -> +0.25 in x
    hm[8, peaks[8, 1] - 1, peaks[8, 0]] = 0.5   # point 8: upper neighbour larger -> -0.25 in y
    return torch.jit.script(PlantedHeatmaps(hm)), peaks


def test_face_alignment_decodes_the_planted_peaks(hub_dir):
    net, peaks = planted_network()
    (hub_dir / "checkpoints").mkdir(parents=True)
    net.save(str(hub_dir / "checkpoints" / FAN_CHECKPOINTS[0]))
    lm = extract_landmarks(random_faces(3), backend="face_alignment", cache=False, progress=False)

    cx, cy, side = fan_crop_box((0, 0, 1, 1), 48, 48)
    hm_xy = peaks + 0.5
    hm_xy[0, 0] += 0.25
    hm_xy[8, 1] -= 0.25
    expected = (np.array([cx - side / 2, cy - side / 2]) + hm_xy * side / 64) / 48
    assert lm.ok.all() and lm.backend == "face_alignment"
    for pts in lm.points:
        np.testing.assert_allclose(pts, expected, atol=1e-5)


def test_face_alignment_accepts_a_path_and_flip_input(tmp_path, hub_dir):
    net, _ = planted_network()
    path = tmp_path / "fan.pt"
    net.save(str(path))
    plain = extract_landmarks(random_faces(2), backend="face_alignment", checkpoint=path, cache=False, progress=False)
    flipped = extract_landmarks(random_faces(2), backend="face_alignment", checkpoint=path, flip_input=True,
                                cache=False, progress=False)
    assert plain.ok.all() and flipped.points.shape == (2, 68, 2)


def test_face_alignment_missing_weights_names_the_expected_file(hub_dir, faces):
    expected = hub_dir / "checkpoints" / FAN_CHECKPOINTS[0]
    with pytest.raises(FileNotFoundError) as err:
        extract_landmarks(faces, backend="face_alignment", progress=False)
    assert str(expected) in str(err.value) and "checkpoint=" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nowhere.zip"):
        extract_landmarks(faces, backend="face_alignment", checkpoint=hub_dir / "nowhere.zip", progress=False)


# ---------------------------------------------------------------------------------------------- dlib (real)
def test_dlib_on_real_faces_and_a_blank_image(faces):
    images = np.concatenate([faces, np.full((1, 48, 48, 1), 128, np.uint8)])
    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match=r"of 17 images failed"):
        lm = extract_landmarks(images, backend="dlib", cache=False, progress=False)
    ms = (time.perf_counter() - t0) * 1000 / len(images)
    rate = lm.ok[:N_FACES].mean()
    print(f"\ndlib: {rate:.0%} of {N_FACES} FERPlus faces ok, {ms:.1f} ms/image (incl. model load)")

    assert lm.points.dtype == np.float32 and lm.points.shape == (17, 68, 2)
    assert not lm.ok[-1] and lm.failures == (~lm.ok).sum() >= 1
    np.testing.assert_allclose(lm.points[-1], lm.points[lm.ok].mean(0), atol=1e-6)
    assert rate >= 0.8

    mean = lm.points[lm.ok].mean(0)
    left_eye, right_eye = mean[list(PARTS_68["left_eye"])].mean(0), mean[list(PARTS_68["right_eye"])].mean(0)
    nose_tip, mouth = mean[30], mean[list(PARTS_68["outer_lip"])].mean(0)
    assert max(left_eye[1], right_eye[1]) < nose_tip[1] < mouth[1]
    assert left_eye[0] < right_eye[0]
    assert ((lm.points > -0.25) & (lm.points < 1.25)).all()


def test_cache_returns_the_same_arrays_without_recomputing(faces, tmp_path, monkeypatch):
    from ferlib.classes import CLASSES_8
    from ferlib.data.dataset import FERData

    n = len(faces)
    data = FERData(images=faces, labels=np.zeros(n, np.int64), split=np.array(["train"] * n),
                   ids=np.array([f"f{i}" for i in range(n)]), classes=CLASSES_8)
    first = extract_landmarks(data, backend="dlib", cache_dir=tmp_path, progress=False)
    files = list((tmp_path / "landmarks").glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("dlib-")
    assert landmarks_cache_file(data.images, backend="dlib", cache_dir=tmp_path) == files[0]  # found without reading
    assert landmarks_cache_file(data, backend="dlib", upscale=96, cache_dir=tmp_path) != files[0]

    def boom(self, images):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr(DlibBackend, "predict", boom)
    noisy = data.with_labels(np.ones(n, np.int64))  # other labels, same images: same entry
    second = extract_landmarks(noisy, backend="dlib", cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(second.points, first.points)
    np.testing.assert_array_equal(second.ok, first.ok)
    assert second.options == first.options and second.backend == "dlib"
    with pytest.raises(AssertionError, match="recomputed"):  # other options: another cache entry
        extract_landmarks(data, backend="dlib", upscale=96, cache_dir=tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------- mediapipe
class FakeMeshInterpreter:
    """Answers like face_landmark.tflite: mesh vertex MESH_TO_68[i] at MEAN_SHAPE_68[i] of a 48 px image."""

    def __init__(self, logit: float = 4.0, size: int = 48, roi_scale: float = 1.5):
        side = roi_scale * size
        mesh = np.zeros((468, 3), np.float32)
        mesh[MESH_TO_68, :2] = (MEAN_SHAPE_68 * size - (size / 2 - side / 2)) / side * 192
        self.mesh, self.logit, self.inputs = mesh.reshape(1, 1, 1, -1), np.full((1, 1, 1, 1), logit, np.float32), []

    def get_input_details(self):
        return [{"index": 0, "shape": np.array([1, 192, 192, 3])}]

    def get_output_details(self):
        return [{"index": 7, "shape": np.array([1, 1, 1, 1404])}, {"index": 9, "shape": np.array([1, 1, 1, 1])}]

    def set_tensor(self, index, value):
        self.inputs.append(value)

    def invoke(self):
        pass

    def get_tensor(self, index):
        return self.mesh if index == 7 else self.logit


@pytest.mark.parametrize("logit, ok", [(4.0, True), (-4.0, False)])
def test_mediapipe_maps_the_mesh_to_68_points(tmp_path, monkeypatch, logit, ok):
    fake = FakeMeshInterpreter(logit)
    monkeypatch.setattr(backend_mediapipe, "_load_interpreter", lambda path, threads: fake)
    model = tmp_path / "face_landmark.tflite"
    model.write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error" if ok else "ignore", RuntimeWarning)
        lm = extract_landmarks(random_faces(2), backend="mediapipe", model_path=model, cache=False, progress=False)
    assert fake.inputs[0].shape == (1, 192, 192, 3) and fake.inputs[0].dtype == np.float32
    assert lm.failures == (0 if ok else 2)
    np.testing.assert_allclose(lm.points, np.broadcast_to(MEAN_SHAPE_68, (2, 68, 2)), atol=1e-5)


def test_mediapipe_without_a_model_says_what_to_provide(tmp_path):
    with pytest.raises(FileNotFoundError, match="face_landmark.tflite"):
        extract_landmarks(random_faces(1), backend="mediapipe", progress=False)
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        extract_landmarks(random_faces(1), backend="mediapipe", model_path=tmp_path / "missing.tflite", progress=False)


# ---------------------------------------------------------------------------------------------- plotting, IO
def test_plot_landmarks_returns_a_figure(faces):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = np.broadcast_to(MEAN_SHAPE_68, (3, 68, 2))
    fig = plot_landmarks(faces[:3], pts, ok=np.array([True, False, True]), ncols=2)
    assert len(fig.axes) == 4
    plt.close(fig)
    fig, axes = plt.subplots(1, 3)
    assert plot_landmarks(faces[:3, ..., 0], pts, ax=axes) is fig
    plt.close(fig)
    with pytest.raises(ValueError, match="points must have shape"):
        plot_landmarks(faces[:2], pts)


def test_landmarks_save_load_roundtrip(tmp_path):
    lm = Landmarks(points=np.broadcast_to(MEAN_SHAPE_68, (2, 68, 2)).astype(np.float32), ok=np.array([True, False]),
                   backend="dlib", options={"upscale": 192})
    back = Landmarks.load(lm.save(tmp_path / "x.npz"))
    np.testing.assert_array_equal(back.points, lm.points)
    assert back.failures == 1 and back.options == {"upscale": 192}
    np.testing.assert_allclose(lm.in_pixels(100)[0, 30], MEAN_SHAPE_68[30] * 100, rtol=1e-6)
