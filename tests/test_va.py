"""Tests of ferlib.va: the auxiliary-space sources (CSV, ONNX, circumplex, arrays, oracle), their registry and
one string grammar, and the kNN."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ferlib.classes import CLASSES_8
from ferlib.data.dataset import FERData
from ferlib.va import (
    AuxUnavailable,
    aux_from_array,
    aux_from_file,
    aux_source,
    aux_source_help,
    circumplex_coordinates,
    class_mean_va,
    describe_aux,
    knn,
    list_aux_sources,
    oracle_va_from_votes,
    parse_aux,
    register_aux_source,
    resolve_aux,
    va_from_csv,
    va_from_onnx,
    va_from_probs,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "ferplus_sample" / "FER2013Train"


# --------------------------------------------------------------------------- CSV
def write_va_csv(path, ids, va):
    pd.DataFrame({"id": ids, "valence": va[:, 0], "arousal": va[:, 1]}).to_csv(path, index=False)


def test_csv_aligns_by_id(tmp_path):
    ids = np.array([f"img{i}" for i in range(5)])
    va = np.arange(10, dtype=np.float32).reshape(5, 2) / 10
    order = np.array([3, 0, 4, 1, 2])
    write_va_csv(tmp_path / "va.csv", ids[order], va[order])
    out = va_from_csv(tmp_path / "va.csv", ids)
    assert out.dtype == np.float32 and out.shape == (5, 2)
    np.testing.assert_allclose(out, va)


def test_csv_missing_id_names_file_and_id(tmp_path):
    ids = np.array(["a", "b", "c"])
    write_va_csv(tmp_path / "va.csv", ids[:2], np.zeros((2, 2), np.float32))
    with pytest.raises(KeyError, match=r"va\.csv.*1 of 3.*'c'"):
        va_from_csv(tmp_path / "va.csv", ids)


def test_csv_missing_column_and_file(tmp_path):
    pd.DataFrame({"id": ["a"], "valence": [0.1]}).to_csv(tmp_path / "v.csv", index=False)
    with pytest.raises(ValueError, match="arousal"):
        va_from_csv(tmp_path / "v.csv", ["a"])
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        va_from_csv(tmp_path / "nope.csv", ["a"])


# --------------------------------------------------------------------------- ONNX
def tiny_va_onnx(path, weight: np.ndarray, size: int = 8):
    """(N, 3, size, size) -> global average pool -> (N, 3) @ weight (3, 10): the last two columns are 'VA'."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["scores"])],
        "tiny_va",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(weight.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_onnx_source_runs_a_tiny_exported_model(tmp_path):
    pytest.importorskip("onnxruntime")
    weight = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
    tiny_va_onnx(tmp_path / "va.onnx", weight)
    images = np.random.default_rng(1).integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = va_from_onnx(tmp_path / "va.onnx", images, mean=mean, std=std, batch_size=2)
    # Expected: channel mean of the (replicated) grey image, normalised per channel, times W, last 2 columns.
    grey = images[..., 0].reshape(5, -1).mean(1) / 255
    pooled = (grey[:, None] - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(out, (pooled @ weight)[:, -2:], rtol=1e-4, atol=1e-4)
    assert out.dtype == np.float32 and out.shape == (5, 2)


def test_onnx_resizes_to_the_static_input_size(tmp_path):
    pytest.importorskip("onnxruntime")
    tiny_va_onnx(tmp_path / "va.onnx", np.eye(3, 10, dtype=np.float32), size=8)
    images = np.full((2, 20, 20, 3), 128, np.uint8)
    assert va_from_onnx(tmp_path / "va.onnx", images).shape == (2, 2)


def test_onnx_missing_file_says_what_to_place_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx.*enet_b0_8_va_mtl\.onnx"):
        va_from_onnx(tmp_path / "missing.onnx", np.zeros((1, 8, 8, 3), np.uint8))


# --------------------------------------------------------------------------- circumplex, arrays, oracle
def test_circumplex_table_and_projection():
    coords = circumplex_coordinates(CLASSES_8)
    assert coords.shape == (8, 2)
    np.testing.assert_allclose(coords[CLASSES_8.index("neutral")], [0, 0])
    np.testing.assert_allclose(coords[CLASSES_8.index("happiness")], [1, 0], atol=1e-6)
    np.testing.assert_allclose(coords[CLASSES_8.index("surprise")], [0, 1], atol=1e-6)
    assert coords[CLASSES_8.index("sadness")].max() < 0  # depression: negative valence and arousal
    probs = np.full((3, 8), 1 / 8, np.float32)
    probs[0] = np.eye(8)[1]
    out = va_from_probs(probs)
    np.testing.assert_allclose(out[0], coords[1], atol=1e-6)
    np.testing.assert_allclose(out[1], coords.mean(0), atol=1e-6)
    with pytest.raises(KeyError, match="known"):
        circumplex_coordinates(["joy-ish"])
    with pytest.raises(ValueError, match="rows summing to 1"):
        va_from_probs(np.ones((2, 8)))


def test_custom_coords_from_class_means():
    va = np.array([[0.0, 0.0], [1.0, 0.5], [0.5, 0.5], [-1.0, -1.0]], np.float32)
    table = class_mean_va(va, np.array([0, 1, 1, 2]), 3)
    np.testing.assert_allclose(table, [[0, 0], [0.75, 0.5], [-1, -1]])
    np.testing.assert_allclose(va_from_probs(np.eye(3), coords=table), table)
    with pytest.raises(ValueError, match=r"\[2\]"):
        class_mean_va(va, np.array([0, 1, 1, 1]), 3)


def test_oracle_is_the_vote_projection():
    votes = np.zeros((2, 8), np.float32)
    votes[0, [1, 2]] = [6, 4]
    out = oracle_va_from_votes(votes)
    coords = circumplex_coordinates()
    np.testing.assert_allclose(out[0], 0.6 * coords[1] + 0.4 * coords[2], atol=1e-6)
    np.testing.assert_allclose(out[1], [0, 0])  # no vote
    assert "ORACLE" in oracle_va_from_votes.__doc__


def test_aux_array_standardise_and_files(tmp_path):
    x = np.random.default_rng(0).normal(3, 5, size=(20, 4))
    x[:, 3] = 1.0  # constant column stays finite
    z = aux_from_array(x, standardise=True)
    np.testing.assert_allclose(z[:, :3].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, :3].std(0), 1, atol=1e-5)
    assert np.isfinite(z).all()
    ids = [f"s{i}" for i in range(20)]
    np.save(tmp_path / "aux.npy", x)
    np.testing.assert_allclose(aux_from_file(tmp_path / "aux.npy", ids), x.astype(np.float32))
    with pytest.raises(ValueError, match="row-aligned"):
        aux_from_file(tmp_path / "aux.npy", ids[:5])
    pd.DataFrame({"id": ids[::-1], "lx": x[::-1, 0], "ly": x[::-1, 1]}).to_csv(tmp_path / "lm.csv", index=False)
    np.testing.assert_allclose(aux_from_file(tmp_path / "lm.csv", ids), x[:, :2].astype(np.float32), rtol=1e-5)


# --------------------------------------------------------------------------- kNN
def test_knn_hand_made_set():
    pts = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    out = knn(pts, 2)
    np.testing.assert_array_equal(out, [[1, 2], [0, 2], [1, 0], [2, 1], [3, 2]])
    assert out.dtype == np.int64


@pytest.mark.parametrize("metric", ["euclidean", "manhattan", "cosine"])
def test_knn_matches_brute_force_and_excludes_self(metric):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float64)
    out = knn(x, 4, metric=metric, chunk_size=7)
    y = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
    ordn = 1 if metric == "manhattan" else 2
    dist = np.linalg.norm(y[:, None] - y[None], ord=ordn, axis=-1)
    np.fill_diagonal(dist, np.inf)
    np.testing.assert_array_equal(np.sort(out, 1), np.sort(np.argsort(dist, 1)[:, :4], 1))
    assert not (out == np.arange(50)[:, None]).any()


def test_knn_validates():
    with pytest.raises(ValueError, match="metric"):
        knn(np.zeros((5, 2)), 2, metric="chebyshev")
    with pytest.raises(ValueError, match="k must"):
        knn(np.zeros((5, 2)), 5)


# --------------------------------------------------------------------------- the source registry
@pytest.fixture(scope="module")
def faces() -> FERData:
    """12 shipped FERPlus training faces (48 px grey) as a train split, ids ``1/imgNN.jpg``, random votes."""
    files = sorted(SAMPLE.glob("*.png"))[:12]
    if len(files) < 12:
        pytest.skip(f"the FERPlus sample is missing from {SAMPLE}")
    rng = np.random.default_rng(0)
    return FERData(images=np.stack([np.asarray(Image.open(f).convert("L")) for f in files])[..., None],
                   labels=rng.integers(0, 8, 12).astype(np.int64), split=np.array(["train"] * 12),
                   ids=np.array([f"1/img{i:02d}.jpg" for i in range(12)]), classes=CLASSES_8, name="toy",
                   votes=rng.integers(0, 5, (12, 8)).astype(np.float32))


def _keyed_csv(path: Path, data: FERData, columns: tuple[str, ...]) -> Path:
    """A CSV of random values keyed by ``data.ids``, rows shuffled (so only the id can align them)."""
    rng = np.random.default_rng(1)
    order = rng.permutation(len(data))
    table = pd.DataFrame({"id": data.ids[order], **{c: rng.normal(size=len(data)) for c in columns}})
    table.to_csv(path, index=False)
    return path


def _affectnet_tree(tmp: Path, data: FERData, write_affectnet) -> Path:
    return write_affectnet(tmp / "affectnet", [("training.csv", i, 1) for i in data.ids])


def _onnx_model(tmp: Path) -> Path:
    pytest.importorskip("onnxruntime")
    tiny_va_onnx(tmp / "va.onnx", np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32))
    return tmp / "va.onnx"


#: One working use of each registered source on ``faces``: ``name -> (tmp, data, fixtures) -> (spec, context)``.
#: A new source gets the checks below once it has an entry here (the registry test fails until it has one).
AUX_EXAMPLES = {
    "landmarks": lambda tmp, data, fx: ("landmarks:dlib", {}),
    "features": lambda tmp, data, fx: ("features", {"features": np.random.default_rng(2).normal(size=(12, 6))}),
    "file": lambda tmp, data, fx: (f"file:{_keyed_csv(tmp / 'aux.csv', data, ('a', 'b', 'c'))}", {}),
    "csv": lambda tmp, data, fx: (f"csv:{_keyed_csv(tmp / 'va.csv', data, ('valence', 'arousal'))}", {}),
    "onnx": lambda tmp, data, fx: (f"onnx:{_onnx_model(tmp)}", {}),
    "affectnet": lambda tmp, data, fx: ("affectnet", {"root": _affectnet_tree(tmp, data, fx["write_affectnet"])}),
    "oracle_votes": lambda tmp, data, fx: ("oracle_votes", {}),
}


@pytest.mark.parametrize("name", list_aux_sources())
def test_every_registered_aux_source_keeps_the_contract(name, faces, tmp_path, monkeypatch, write_affectnet):
    """One grammar (name / name:argument, errors naming the parameter and the valid sources); (N, d) finite
    float32 values whose rows follow the data's rows; an ORACLE source says so."""
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "cache"))
    assert name in AUX_EXAMPLES, f"add a working example of aux source {name!r} to AUX_EXAMPLES"
    source = aux_source(name)
    if source.arg is None:
        with pytest.raises(ValueError, match=f"^opt: aux source '{name}' takes no argument.*valid: "):
            parse_aux(f"{name}:x", where="opt")
    elif source.required:
        with pytest.raises(ValueError, match=f"^opt: aux source '{name}' needs its {source.arg}"):
            parse_aux(name, where="opt")
    assert source.usage in aux_source_help() and source.title
    assert all(inspect.signature(source.fn).parameters[k].default is None for k in source.context)
    spec, context = AUX_EXAMPLES[name](tmp_path, faces, {"write_affectnet": write_affectnet})
    values = resolve_aux(spec, faces, **context)
    assert values.dtype == np.float32 and values.ndim == 2 and len(values) == len(faces) and values.shape[1] >= 1
    assert np.isfinite(values).all() and values.std(0).max() > 0  # not one constant row
    order = np.random.default_rng(3).permutation(len(faces))
    moved = {k: np.asarray(v)[order] if k == "features" else v for k, v in context.items()}
    np.testing.assert_allclose(resolve_aux(spec, faces.select(order), **moved), values[order], rtol=1e-4, atol=1e-5)
    assert describe_aux(spec).startswith("ORACLE") == source.oracle


def test_one_grammar_with_errors_naming_the_parameter_and_the_valid_sources(faces, tmp_path):
    assert parse_aux("landmarks") == parse_aux("landmarks:dlib")  # the default argument
    source, arg = parse_aux(str(tmp_path / "x.npy"))  # a bare .npy / .csv path is file:<path>, as LDLVA took it
    assert (source.name, arg) == ("file", str(tmp_path / "x.npy"))
    valid = r"valid: affectnet\[:<root>\], csv:<path>, features, file:<path>, landmarks\[:<backend>\], onnx:<path>, " \
            r"oracle_votes \(ORACLE\)$"
    with pytest.raises(ValueError, match=r"^va_source: unknown aux source 'votes' in 'votes:x'; " + valid):
        parse_aux("votes:x", where="va_source")
    with pytest.raises(ValueError, match=r"^aux: 'landmarks:hrnet': unknown landmark backend 'hrnet'; valid: dlib"):
        parse_aux("landmarks:hrnet")
    with pytest.raises(AuxUnavailable, match="'oracle_votes' needs human votes"):
        resolve_aux("oracle_votes", dataclasses.replace(faces, votes=None))
    with pytest.raises(AuxUnavailable, match="'features' needs a model's features"):
        resolve_aux("features", faces)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        resolve_aux(f"csv:{tmp_path / 'nope.csv'}", faces)


def test_a_source_name_is_registered_once():
    with pytest.raises(ValueError, match="aux source name 'csv' is empty or already registered"):
        register_aux_source("csv", arg="path", required=True)
    assert list_aux_sources().count("csv") == 1
