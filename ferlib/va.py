"""Auxiliary spaces for neighbour-based label distributions: valence-arousal (VA) and other auxiliary sources,
and a batched kNN.

LDLVA (Le et al., WACV 2023) builds each sample's neighbourhood in an auxiliary space: VA annotations
(AffectNet) or pseudo-VA predicted by a pretrained regressor (RAF-DB). No VA model can be downloaded here, so
the source is pluggable. Every consumer (LDLVA's ``aux`` option, the data-preparation view's ``va_source``) names
a source with ONE string grammar, ``name`` or ``name:argument``, resolved by :func:`resolve_aux` to an ``(N, d)``
float32 array aligned with the rows of a :class:`~ferlib.data.dataset.FERData`:

==========================  ====================================================================================
``landmarks[:<backend>]``   68 facial landmarks (:func:`ferlib.landmarks.extract_landmarks`, default ``dlib``),
                            flattened to 136 columns (standardised by LDLVA)
``features``                the bound model's pooled features (only where the caller has a model: LDLVA)
``file:<path>``             :func:`aux_from_file`: a ``.npy`` (row-aligned) or ``.csv`` (keyed by id) of any values;
                            a bare path ending in ``.npy`` / ``.csv`` means the same
``csv:<path>``              :func:`va_from_csv`: the ``valence, arousal`` columns of a CSV keyed by id
``onnx:<path>``             :func:`va_from_onnx`: an ONNX VA regressor (HSEmotion ``enet_b0_8_va_mtl.onnx`` style)
``affectnet[:<root>]``      AffectNet's own VA annotations (:func:`ferlib.data.affectnet_va`)
``oracle_votes``            ORACLE ONLY: :func:`oracle_va_from_votes`, the circumplex projection of human votes
==========================  ====================================================================================

A new source is one function registered with :func:`register_aux_source`; :func:`list_aux_sources` and the
error of a bad string list it, and every consumer accepts it. The array functions below
(:func:`va_from_probs` for a teacher's probabilities, :func:`aux_from_array`, ...) are the building blocks.
:func:`knn` then gives each sample's ``k`` nearest neighbours (itself excluded) in chunks of ``torch.cdist``.
"""
from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._registry import Registry
from .classes import CLASSES_8

__all__ = [
    "VA_COLUMNS", "IMAGENET_MEAN", "IMAGENET_STD", "RUSSELL_1980_ANCHORS", "EXPRESSION_ANCHORS", "KNN_METRICS",
    "va_from_csv", "va_from_onnx", "circumplex_coordinates", "va_from_probs", "class_mean_va",
    "aux_from_array", "aux_from_file", "oracle_va_from_votes", "knn",
    "AuxSource", "AuxUnavailable", "register_aux_source", "list_aux_sources", "aux_source", "aux_source_help",
    "parse_aux",
    "resolve_aux", "describe_aux",
]

VA_COLUMNS: tuple[str, str] = ("valence", "arousal")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
KNN_METRICS: tuple[str, ...] = ("euclidean", "manhattan", "cosine")

# Russell, J. A. (1980). "A circumplex model of affect". Journal of Personality and Social Psychology 39(6),
# 1161-1178. The abstract places eight affect concepts on a circle, in degrees from the pleasure (valence)
# axis towards the arousal axis. A concept at angle t sits at (valence, arousal) = (cos t, sin t).
RUSSELL_1980_ANCHORS: dict[str, float] = {
    "pleasure": 0.0, "excitement": 45.0, "arousal": 90.0, "distress": 135.0,
    "displeasure": 180.0, "depression": 225.0, "sleepiness": 270.0, "relaxation": 315.0,
}

# Which Russell anchor each expression class is put on. Neutral goes to the centre of the circle. This
# assignment is ferlib's choice: Russell's paper scales affect words, not these eight expressions. Anger and
# fear share "distress"; disgust and contempt share "displeasure", so a projection cannot separate them. For a
# finer table, pass ``coords`` from :func:`class_mean_va` computed on a dataset with VA annotations
# (AffectNet's own).
EXPRESSION_ANCHORS: dict[str, str | None] = {
    "neutral": None, "happiness": "pleasure", "surprise": "arousal", "sadness": "depression",
    "anger": "distress", "disgust": "displeasure", "fear": "distress", "contempt": "displeasure",
}


# --------------------------------------------------------------------------- (1) CSV keyed by sample id
def _read_keyed_csv(path: str | os.PathLike, ids: Sequence[str], *, id_column: str,
                    columns: Sequence[str] | None) -> np.ndarray:
    """Rows of a CSV matched to ``ids`` by its ``id_column``; ``columns=None`` takes every other column."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"auxiliary CSV not found: {path}")
    table = pd.read_csv(path)
    if id_column not in table.columns:
        raise ValueError(f"{path}: no {id_column!r} column (columns: {list(table.columns)})")
    columns = [c for c in table.columns if c != id_column] if columns is None else list(columns)
    absent = [c for c in columns if c not in table.columns]
    if absent or not columns:
        raise ValueError(f"{path}: missing column(s) {absent or 'any value column'}; has {list(table.columns)}")
    table[id_column] = table[id_column].astype(str)
    dup = table[id_column][table[id_column].duplicated()].unique()
    if len(dup):
        raise ValueError(f"{path}: {len(dup)} id(s) appear more than once, e.g. {list(dup[:5])}")
    ids = np.asarray(ids).astype(str)
    missing = np.setdiff1d(ids, table[id_column].to_numpy())
    if len(missing):
        raise KeyError(f"{path}: {len(missing)} of {len(ids)} sample id(s) missing, e.g. {list(missing[:5])}")
    values = table.set_index(id_column).loc[ids, columns].to_numpy(dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: non-finite values in columns {columns}")
    return values


def va_from_csv(path: str | os.PathLike, ids: Sequence[str], *, id_column: str = "id",
                columns: Sequence[str] = VA_COLUMNS) -> np.ndarray:
    """Per-image VA read from a CSV keyed by sample id.

    Parameters
    ----------
    path : CSV file with an ``id`` column (``FERData.ids`` spelling) and ``valence``, ``arousal`` columns.
        Extra rows (other splits, other images) are ignored.
    ids : (N,) sample ids to align to, e.g. ``train.ids``.

    Returns
    -------
    (N, 2) float32, row ``i`` the values of ``ids[i]``.

    Raises
    ------
    FileNotFoundError, KeyError, ValueError
        Naming the file and, for missing ids, how many and the first few.
    """
    return _read_keyed_csv(path, ids, id_column=id_column, columns=columns)


# --------------------------------------------------------------------------- (2) an ONNX VA regressor
def _onnx_session(path: Path, providers: Sequence[str]):
    if not path.is_file():
        raise FileNotFoundError(
            f"ONNX VA model not found: {path}. Place a VA regressor there, e.g. HSEmotion's "
            "enet_b0_8_va_mtl.onnx (github.com/av-savchenko/face-emotion-recognition, "
            "models/affectnet_emotions/onnx/), or pass its path; ferlib never downloads models.")
    try:
        import onnxruntime as ort
    except ImportError as exc:  # the 'va' extra
        raise ImportError("va_from_onnx needs onnxruntime: pip install 'ferlib[va]'") from exc
    return ort.InferenceSession(str(path), providers=list(providers))


def _static_dim(dim, default: int) -> int:
    return dim if isinstance(dim, int) and dim > 0 else default


def _onnx_input(images: np.ndarray, size: int, channels: int, mean: Sequence[float],
                std: Sequence[float]) -> np.ndarray:
    """uint8 (B, H, W, C) -> float32 (B, channels, size, size): resize, scale to [0, 1], normalise."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != channels:
        raise ValueError(f"images have {x.shape[1]} channel(s) but the ONNX model expects {channels}")
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - mean_t) / std_t).numpy()


def va_from_onnx(path: str | os.PathLike, images: np.ndarray, *, input_size: int | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 batch_size: int = 64, providers: Sequence[str] = ("CPUExecutionProvider",)) -> np.ndarray:
    """Pseudo-VA from an ONNX regressor run with onnxruntime.

    The defaults follow HSEmotion's ONNX package (``hsemotion_onnx/facial_emotions.py`` in
    av-savchenko/face-emotion-recognition): one input, float32 NCHW RGB, 224 x 224 for the ``enet_b0_*``
    models (260 for ``enet_b2_*``), pixels scaled to [0, 1] then normalised with the ImageNet mean and std;
    the first output of ``enet_b0_8_va_mtl`` is (B, 10): eight expression logits, then valence, arousal.

    Parameters
    ----------
    path : the ``.onnx`` file (a clear error says where to place it when missing).
    images : uint8 (N, H, W, C), C = 1 (replicated to 3 when the model wants RGB) or 3, RGB order.
    input_size : side the model expects; None reads it from the model's static input shape, else 224.
    mean, std : per-channel normalisation after scaling to [0, 1].
    batch_size : images per onnxruntime call.

    Returns
    -------
    (N, 2) float32: the LAST two columns of the first output, (valence, arousal).
    """
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    session = _onnx_session(Path(path), providers)
    spec = session.get_inputs()[0]
    shape = list(spec.shape) + [None] * (4 - len(spec.shape))
    channels = _static_dim(shape[1], 3)
    size = input_size or _static_dim(shape[2], 224)
    out = []
    for start in range(0, len(images), batch_size):
        x = _onnx_input(images[start:start + batch_size], size, channels, mean, std)
        y = np.asarray(session.run(None, {spec.name: x})[0])
        if y.ndim != 2 or y.shape[1] < 2:
            raise ValueError(f"{path}: first output has shape {y.shape}; expected (B, >=2) ending in valence, arousal")
        out.append(y[:, -2:])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 2), np.float32)


# --------------------------------------------------------------------------- (3) circumplex projection
def circumplex_coordinates(classes: Sequence[str] = CLASSES_8) -> np.ndarray:
    """(K, 2) float32 (valence, arousal) per class: its Russell (1980) anchor on the unit circle.

    Anchors from :data:`RUSSELL_1980_ANCHORS`, class-to-anchor assignment from :data:`EXPRESSION_ANCHORS`
    (neutral at the origin). Unknown class names raise with the known ones.
    """
    rows = []
    for name in classes:
        if name not in EXPRESSION_ANCHORS:
            raise KeyError(f"no circumplex anchor for class {name!r}; known: {', '.join(EXPRESSION_ANCHORS)}")
        anchor = EXPRESSION_ANCHORS[name]
        angle = math.radians(RUSSELL_1980_ANCHORS[anchor]) if anchor else 0.0
        rows.append((math.cos(angle), math.sin(angle)) if anchor else (0.0, 0.0))
    return np.asarray(rows, dtype=np.float32)


def va_from_probs(probs: np.ndarray, *, coords: np.ndarray | None = None,
                  classes: Sequence[str] | None = None) -> np.ndarray:
    """Circumplex projection of class probabilities: VA_i = sum_k p_ik (v_k, a_k).

    The teacher producing ``probs`` must be trained on the NOISY training labels only (never on votes or
    clean labels), or the auxiliary space leaks the information a noisy-label method must not see. The
    caller trains the teacher and passes its softmax outputs.

    Parameters
    ----------
    probs : (N, K) non-negative, rows summing to 1 (teacher softmax on the train images).
    coords : (K, 2) per-class (valence, arousal); default :func:`circumplex_coordinates` of ``classes``.
    classes : class names, default the first K canonical names (:data:`ferlib.classes.CLASSES_8`).

    Returns
    -------
    (N, 2) float32.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or (probs < 0).any() or not np.allclose(probs.sum(1), 1.0, atol=1e-3):
        raise ValueError(f"probs must be (N, K) non-negative rows summing to 1, got shape {probs.shape}")
    if coords is None:
        coords = circumplex_coordinates(classes if classes is not None else CLASSES_8[:probs.shape[1]])
    coords = np.asarray(coords, dtype=np.float32)
    if coords.shape != (probs.shape[1], 2):
        raise ValueError(f"coords must have shape ({probs.shape[1]}, 2), got {coords.shape}")
    return probs @ coords


def class_mean_va(va: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, 2) per-class mean VA of an annotated set (e.g. AffectNet's own VA): a ``coords`` table.

    va : (N, 2); labels : (N,) in [0, K). A class with no sample raises (naming it).
    """
    va, labels = np.asarray(va, dtype=np.float32), np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"class(es) {np.flatnonzero(counts == 0).tolist()} have no sample")
    sums = np.zeros((num_classes, va.shape[1]), np.float64)
    np.add.at(sums, labels, va)
    return (sums / counts[:, None]).astype(np.float32)


# --------------------------------------------------------------------------- (4) any per-sample array
def aux_from_array(aux: np.ndarray, *, standardise: bool = False) -> np.ndarray:
    """Landmarks (flattened), frozen features or any (N, d) values as the auxiliary space.

    standardise : subtract each column's mean and divide by its standard deviation (constant columns kept
        at 0), so that no coordinate dominates the distances by its unit alone.

    Returns (N, d) float32; a 1-d array is read as (N, 1); non-finite values raise.
    """
    aux = np.asarray(aux, dtype=np.float32)
    aux = aux[:, None] if aux.ndim == 1 else aux.reshape(len(aux), -1)
    if not np.isfinite(aux).all():
        raise ValueError("auxiliary values must be finite")
    if standardise:
        std = aux.std(0)
        aux = (aux - aux.mean(0)) / np.where(std > 0, std, 1.0)
    return aux.astype(np.float32)


def aux_from_file(path: str | os.PathLike, ids: Sequence[str], *, id_column: str = "id") -> np.ndarray:
    """Per-sample values from a file: ``.npy`` row-aligned with ``ids``, or ``.csv`` keyed by ``id_column``.

    A CSV contributes every column but the id one (e.g. ``valence, arousal`` or landmark coordinates).
    Returns (N, d) float32 for the N = len(ids) samples.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return aux_from_array(_read_keyed_csv(path, ids, id_column=id_column, columns=None))
    if path.suffix.lower() != ".npy":
        raise ValueError(f"auxiliary file {path} must be .npy (row-aligned) or .csv (keyed by {id_column!r})")
    if not path.is_file():
        raise FileNotFoundError(f"auxiliary file not found: {path}")
    aux = np.load(path, allow_pickle=False)
    if len(aux) != len(ids):
        raise ValueError(f"{path} has {len(aux)} rows for {len(ids)} samples; a .npy must be row-aligned "
                         "with the train split (use a .csv keyed by id otherwise)")
    return aux_from_array(aux)


# --------------------------------------------------------------------------- ORACLE
def oracle_va_from_votes(votes: np.ndarray, *, coords: np.ndarray | None = None) -> np.ndarray:
    """ORACLE: circumplex projection of the FERPlus human vote distributions.

    Reads the annotators' votes, which no noisy-label method may see: an upper-bound auxiliary space for
    ablations only, never a default. votes : (N, K) counts; returns (N, 2) float32 (rows with no vote at 0).
    """
    votes = np.asarray(votes, dtype=np.float32)
    total = votes.sum(1, keepdims=True)
    probs = np.where(total > 0, votes / np.maximum(total, 1e-12), 1.0 / votes.shape[1])
    va = va_from_probs(probs, coords=coords)
    va[total[:, 0] <= 0] = 0.0
    return va


# --------------------------------------------------------------------------- the source registry
class AuxUnavailable(RuntimeError):
    """A source cannot give values for this data or caller (no votes, no model features, no AffectNet root)."""


@dataclass(frozen=True)
class AuxSource:
    """A registered auxiliary source (see :func:`register_aux_source`).

    name : its name in a source string. fn : ``fn(data, arg, **context) -> (N, d)`` values for the N rows of
    ``data``. arg : what its argument means (``"path"``, ``"backend"``), or None when it takes none.
    default : the argument when the string omits it. required : the string must give the argument. check :
    ``check(arg)`` raising ValueError, run when the string is parsed (before any data loads). oracle : it reads
    information a noisy-label method must not see. standardise : its columns should be standardised before
    distances. runs_model : it runs a model on every image (slow on CPU; previews may take a subset).
    context : the keyword-only parameters of ``fn``, filled from :func:`resolve_aux`'s ``context``.
    """

    name: str
    fn: Callable
    arg: str | None = None
    default: str | None = None
    required: bool = False
    check: Callable[[str], None] | None = None
    oracle: bool = False
    standardise: bool = False
    runs_model: bool = False
    context: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """The first line of the source function's docstring."""
        return (inspect.getdoc(self.fn) or self.name).splitlines()[0].rstrip(".")

    @property
    def usage(self) -> str:
        """How the source is written: ``name``, ``name:<arg>`` or ``name[:<arg>]``, ``(ORACLE)`` flagged."""
        text = self.name if self.arg is None else (
            f"{self.name}:<{self.arg}>" if self.required else f"{self.name}[:<{self.arg}>]")
        return f"{text} (ORACLE)" if self.oracle else text


def aux_source_help() -> str:
    """The registered sources as a source string writes them, e.g. ``landmarks[:<backend>], features, ...``."""
    return ", ".join(aux_source(name).usage for name in _AUX_SOURCES.names())


_AUX_SOURCES: Registry[AuxSource] = Registry("aux source", listing=aux_source_help)


def register_aux_source(name: str, *, arg: str | None = None, default: str | None = None, required: bool = False,
                        check: Callable[[str], None] | None = None, oracle: bool = False,
                        standardise: bool = False, runs_model: bool = False):
    """Decorator registering ``fn(data, arg, **context) -> (N, d) array`` as aux source ``name``.

    ``data`` is a :class:`~ferlib.data.dataset.FERData` (usually the train split) and ``arg`` the string's
    argument (or ``default``); keyword-only parameters of ``fn`` receive the caller's context of the same name
    (``features``, ``root``) and are None when the caller has none. The function raises :class:`AuxUnavailable`
    (or FileNotFoundError / ImportError) with one line when it cannot give values. A name registered twice
    raises ValueError. See :class:`AuxSource` for the other fields.
    """
    if arg is None and (default is not None or required):
        raise ValueError(f"aux source {name!r}: default and required need an arg")
    register = _AUX_SOURCES.register(name)

    def add(fn: Callable) -> Callable:
        context = tuple(k for k, p in inspect.signature(fn).parameters.items() if p.kind == p.KEYWORD_ONLY)
        register(AuxSource(name, fn, arg=arg, default=default, required=required, check=check, oracle=oracle,
                           standardise=standardise, runs_model=runs_model, context=context))
        return fn

    return add


def list_aux_sources() -> list[str]:
    """Names of the registered aux sources, sorted."""
    return _AUX_SOURCES.names()


def aux_source(name: str) -> AuxSource:
    """The registered source ``name``; an unknown name raises ValueError listing the valid sources."""
    return _AUX_SOURCES.get(name)


def _is_bare_path(spec: str) -> bool:
    return Path(spec).suffix.lower() in (".npy", ".csv") and spec.partition(":")[0] not in _AUX_SOURCES


def parse_aux(spec: str, *, where: str = "aux", kind: str = "aux source") -> tuple[AuxSource, str | None]:
    """``"name"`` or ``"name:argument"`` -> (the registered :class:`AuxSource`, its argument or default).

    A bare path ending in ``.npy`` or ``.csv`` reads as ``file:<path>``. Raises ValueError with one line naming
    ``where`` (the parameter) and listing the valid sources for an unknown name, a missing required argument, an
    argument to a source that takes none, or what the source's own check refuses.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{where}: expected a string naming a {kind}, got {spec!r}; valid: {aux_source_help()}")
    name, sep, arg = ("file", ":", spec) if _is_bare_path(spec) else spec.partition(":")
    if name not in _AUX_SOURCES:
        raise ValueError(f"{where}: unknown {kind} {name!r} in {spec!r}; valid: {aux_source_help()}")
    source = aux_source(name)
    if source.arg is None and sep:
        raise ValueError(f"{where}: {kind} {name!r} takes no argument, got {spec!r}; valid: {aux_source_help()}")
    if source.required and not arg:
        raise ValueError(f"{where}: {kind} {name!r} needs its {source.arg}: {source.usage}, got {spec!r}")
    arg = arg or source.default
    if source.check is not None and arg is not None:
        try:
            source.check(arg)
        except ValueError as exc:
            raise ValueError(f"{where}: {spec!r}: {exc}") from None
    return source, arg


def resolve_aux(spec: str, data, *, where: str = "aux", **context) -> np.ndarray:
    """The values of source string ``spec`` (see :func:`parse_aux`) for every row of ``data``.

    Parameters
    ----------
    spec : ``name`` or ``name:argument``, one of :func:`aux_source_help`.
    data : the :class:`~ferlib.data.dataset.FERData` whose rows to describe (usually the train split).
    where : the parameter that gave ``spec``, for error messages.
    **context : what the caller can offer a source that asks for it: ``features`` (N, D) model features
        (LDLVA), ``root`` the dataset root (AffectNet VA).

    Returns
    -------
    (N, d) float32, finite, row ``i`` for ``data``'s row ``i``.

    Raises
    ------
    ValueError
        A bad string (naming ``where`` and the valid sources) or values of the wrong shape.
    AuxUnavailable, FileNotFoundError, ImportError, KeyError
        The source cannot give values here (one line naming it).
    """
    source, arg = parse_aux(spec, where=where)
    values = source.fn(data, arg, **{k: context.get(k) for k in source.context})
    values = aux_from_array(values)
    if len(values) != len(data):
        raise ValueError(f"{where}: aux source {source.name!r} gave {len(values)} rows for {len(data)} samples")
    return values


def describe_aux(spec: str) -> str:
    """One line saying what ``spec`` is, starting with ``ORACLE:`` for an oracle source."""
    source, arg = parse_aux(spec)
    text = f"{source.title} ({source.name}{':' + arg if arg else ''})"
    return f"ORACLE: {text}" if source.oracle else text


# --------------------------------------------------------------------------- the registered sources
def _check_backend(backend: str) -> None:
    from .landmarks import list_backends

    if backend not in list_backends():
        raise ValueError(f"unknown landmark backend {backend!r}; valid: {', '.join(list_backends())}")


@register_aux_source("landmarks", arg="backend", default="dlib", check=_check_backend, standardise=True,
                     runs_model=True)
def _landmarks(data, backend: str) -> np.ndarray:
    """68 facial landmarks (x, y fractions) flattened to 136 columns."""
    from .landmarks import extract_landmarks

    return extract_landmarks(data, backend=backend).points.reshape(len(data), -1)


@register_aux_source("features")
def _features(data, arg: None, *, features: np.ndarray | None = None) -> np.ndarray:
    """The bound model's pooled features on the un-augmented images."""
    if features is None:
        raise AuxUnavailable("aux source 'features' needs a model's features; only a method that binds a model "
                             "(LDLVA) can use it")
    return np.asarray(features)


@register_aux_source("file", arg="path", required=True)
def _file(data, path: str) -> np.ndarray:
    """Per-sample values from a .npy (row-aligned) or a .csv keyed by id."""
    return aux_from_file(path, data.ids)


@register_aux_source("csv", arg="path", required=True)
def _csv(data, path: str) -> np.ndarray:
    """Valence-arousal from a CSV keyed by id."""
    return va_from_csv(path, data.ids)


@register_aux_source("onnx", arg="path", required=True, runs_model=True)
def _onnx(data, path: str) -> np.ndarray:
    """Pseudo valence-arousal from an ONNX regressor."""
    return va_from_onnx(path, data.images)


@register_aux_source("affectnet", arg="root")
def _affectnet(data, arg: str | None, *, root: str | os.PathLike | None = None) -> np.ndarray:
    """AffectNet valence-arousal annotations."""
    from .data import affectnet_va

    root = arg or root
    if root is None:
        raise AuxUnavailable("aux source 'affectnet' needs the AffectNet root: affectnet:<root>")
    table = affectnet_va(root).drop_duplicates("id").set_index("id")
    missing = np.setdiff1d(np.asarray(data.ids).astype(str), table.index.to_numpy())
    if len(missing):
        raise KeyError(f"aux source 'affectnet': {len(missing)} of {len(data)} sample id(s) have no annotation "
                       f"in {root}, e.g. {list(missing[:5])}")
    return table.loc[np.asarray(data.ids).astype(str), list(VA_COLUMNS)].to_numpy(np.float32)


@register_aux_source("oracle_votes", oracle=True)
def _oracle_votes(data, arg: None) -> np.ndarray:
    """Circumplex projection of the human votes."""
    if data.votes is None:
        raise AuxUnavailable("aux source 'oracle_votes' needs human votes; this dataset has none")
    return oracle_va_from_votes(data.votes)


# --------------------------------------------------------------------------- nearest neighbours
def knn(aux: np.ndarray | torch.Tensor, k: int, *, metric: str = "euclidean", chunk_size: int = 1024,
        device: str | torch.device | None = None) -> np.ndarray:
    """Indices of each sample's ``k`` nearest neighbours, the sample itself excluded.

    Parameters
    ----------
    aux : (N, d) auxiliary values.
    k : neighbours per sample, 1 <= k < N.
    metric : ``euclidean``, ``manhattan`` (L1) or ``cosine`` (euclidean on L2-normalised rows, same order).
    chunk_size : query rows per ``torch.cdist`` call (memory chunk_size * N floats).
    device : where to compute (default CPU).

    Returns
    -------
    (N, k) int64, nearest first. Ties are broken arbitrarily; duplicates of a sample may be its neighbours.
    """
    if metric not in KNN_METRICS:
        raise ValueError(f"metric must be one of {KNN_METRICS}, got {metric!r}")
    x = torch.as_tensor(np.asarray(aux, dtype=np.float32) if not torch.is_tensor(aux) else aux,
                        dtype=torch.float32, device=device)
    x = x.reshape(len(x), -1)
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"k must satisfy 1 <= k < N = {n}, got {k}")
    if metric == "cosine":
        x = F.normalize(x, dim=1)
    p = 1.0 if metric == "manhattan" else 2.0
    out = torch.empty((n, k), dtype=torch.int64)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        dist = torch.cdist(x[start:stop], x, p=p)
        rows = torch.arange(stop - start, device=dist.device)
        dist[rows, rows + start] = float("inf")
        out[start:stop] = dist.topk(k, dim=1, largest=False).indices.cpu()
    return out.numpy()
