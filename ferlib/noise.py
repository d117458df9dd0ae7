"""Synthetic label noise and class imbalance for FER training sets (cleanlab style).

One API. Each protocol is ONE function on numpy arrays, registered under its name by
``@register_noise(...)`` at its definition (timm's registry idiom; :func:`protocol_help` lists them as specs
write them, and each function's docstring says what it does). :func:`apply_noise` is the front door: it parses a :class:`NoiseSpec` such as
``"imbalance:20+symmetric:0.3"``, validates the spec, the seed and the data once, then runs the protocols in
order on the train split of a :class:`~ferlib.data.dataset.FERData`, all drawing from one
``np.random.default_rng(seed)``: the same seed gives the same labels, different seeds different ones.
:func:`transition_matrix`, :func:`noise_report` and :func:`annotator_transition` describe noise on arrays.

A new protocol is one registered function (its name, what its number means, whether it relabels or
subsamples, and an optional check of the data, see :func:`register_noise`); specs, the CLI and the study
accept it at once.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from ferlib._registry import Registry
from ferlib.classes import CLASSES_8, class_index
from ferlib.data.dataset import FERData

__all__ = [
    "DEFAULT_PAIR_MAP",
    "PROTOCOLS",
    "NoiseProtocol",
    "NoiseContext",
    "register_noise",
    "protocol_help",
    "NoiseSpec",
    "apply_noise",
    "no_noise",
    "symmetric_noise",
    "class_dependent_noise",
    "annotator_noise",
    "annotator_matched_noise",
    "imbalance_indices",
    "annotator_transition",
    "transition_matrix",
    "noise_report",
]

#: Pair map of the class-dependent protocol, by canonical class name: ``source -> target``.
#: LA-Net's ``_add_class_dependent_noise`` map (fear->surprise, disgust->anger, happiness->neutral,
#: sadness->neutral, surprise->anger, neutral->sadness, anger->disgust), extended with
#: contempt->neutral for the 8-class space. Read-only.
DEFAULT_PAIR_MAP: Mapping[str, str] = MappingProxyType({
    "fear": "surprise",
    "disgust": "anger",
    "happiness": "neutral",
    "sadness": "neutral",
    "surprise": "anger",
    "neutral": "sadness",
    "anger": "disgust",
    "contempt": "neutral",
})


# ---------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class NoiseContext:
    """What a protocol sees besides the current train labels.

    num_classes : C. votes : (N, C) float64 vote counts of the train samples, or None when the data has none.
    extra : what the protocols' ``prepare`` functions returned (e.g. ``pair_target`` of ``class_dependent``).
    """

    num_classes: int
    votes: np.ndarray | None = None
    extra: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class NoiseProtocol:
    """A registered noise protocol (see :func:`register_noise`).

    name : its name in specs. param : what its number means (``rate`` in [0, 1), ``factor`` >= 1), or None.
    kind : ``labels`` (``step`` returns the new labels, shape (N,)) or ``subset`` (``step`` returns the sorted
    positions of the samples kept, shape (M,)). step : the protocol's function, ``step(labels, value, rng,
    context)``. prepare : None, or ``prepare(data, pair_map) -> dict``, called once before any draw: it checks
    the data (ValueError naming what is missing) and returns entries for ``context.extra``.
    """

    name: str
    param: str | None
    kind: str
    step: Callable
    prepare: Callable | None = None


def protocol_help() -> str:
    """The registered protocols as specs write them, in registration order: ``none, symmetric:<rate>, ...``."""
    return ", ".join(p.name if p.param is None else f"{p.name}:<{p.param}>" for p in _REGISTRY.view().values())


_REGISTRY: Registry[NoiseProtocol] = Registry("noise protocol", listing=protocol_help)


class _Params(Mapping):
    """Protocol name -> what its parameter means (None: it takes none); a live view of the registry."""

    def __getitem__(self, name: str) -> str | None:
        return _REGISTRY.view()[name].param

    def __iter__(self):
        return iter(_REGISTRY.view())

    def __len__(self) -> int:
        return len(_REGISTRY.view())


PROTOCOLS: Mapping[str, str | None] = _Params()


def register_noise(name: str, *, param: str | None = None, kind: str = "labels", prepare: Callable | None = None):
    """Decorator registering a function as noise protocol ``name`` (the shared :class:`~ferlib._registry.Registry`
    idiom: a name registered twice raises).

    The function is ``step(labels, value, rng, context)``: ``labels`` (N,) int64 the current train labels in
    ``[0, C)``, ``value`` the spec's number for the protocol (checked by :class:`NoiseSpec`: a ``rate`` in
    [0, 1), a ``factor`` >= 1) or None, ``rng`` the run's ``np.random.Generator`` and ``context`` a
    :class:`NoiseContext`. Its inputs are validated by :func:`apply_noise` (and the data by ``prepare``), so it
    only computes. ``param``, ``kind`` and ``prepare``: see :class:`NoiseProtocol`.
    """
    if param not in (None, *_PARAM_CHECKS) or kind not in ("labels", "subset"):
        raise ValueError(f"noise protocol {name!r}: param must be None, 'rate' or 'factor' and kind 'labels' or "
                         f"'subset', got {param!r}, {kind!r}")
    add = _REGISTRY.register(name)

    def register(step: Callable) -> Callable:
        add(NoiseProtocol(name, param, kind, step, prepare))
        return step

    return register


# ---------------------------------------------------------------------------------------- validation
def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return int(num_classes)


def _check_labels(labels, num_classes: int, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got [{arr.min()}, {arr.max()}]")
    return arr


def _check_pair(clean, noisy, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    clean = _check_labels(clean, num_classes, "clean")
    noisy = _check_labels(noisy, num_classes, "noisy")
    if clean.shape != noisy.shape:
        raise ValueError(f"clean and noisy must have the same shape, got {clean.shape} and {noisy.shape}")
    return clean, noisy


def _check_number(value, what: str, ok, expected: str) -> float:
    """``float(value)`` if ``ok`` holds for it, else a ValueError naming ``what`` and the ``expected`` range."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be {expected}, got {value!r}") from None
    if not ok(number):
        raise ValueError(f"{what} must be {expected}, got {value!r}")
    return number


_PARAM_CHECKS = {
    "rate": lambda v: _check_number(v, "rate", lambda r: 0.0 <= r < 1.0, "a number in [0, 1)"),
    "factor": lambda v: _check_number(v, "imbalance factor", lambda f: math.isfinite(f) and f >= 1.0,
                                      "a finite number >= 1"),
}
_PARAM_EXAMPLES = {"rate": "0.3", "factor": "50"}


def _rows(bad: np.ndarray) -> str:
    return "rows " + ", ".join(map(str, bad[:10])) + (" ..." if bad.size > 10 else "")


def _check_votes(votes, rows: Callable[[np.ndarray], str] = _rows) -> np.ndarray:
    """Votes as float64 (N, K), K >= 2, finite, non-negative, every row with a vote; ``rows(bad)`` names the
    rows without a vote in the message (default: their positions)."""
    arr = np.asarray(votes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"votes must have shape (N, K) with K >= 2, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or (arr.size and arr.min() < 0):
        raise ValueError("votes must be finite and non-negative")
    zero = np.flatnonzero(arr.sum(axis=1) <= 0)
    if zero.size:
        raise ValueError(f"{zero.size} image(s) have no emotion votes ({rows(zero)}); annotator noise needs at "
                         "least one vote per image")
    return arr


def _resolve_pair_map(pair_map: Mapping[str, str], num_classes: int) -> np.ndarray:
    """Validate a name map and return ``target`` of shape (C,): partner index, or -1 (never flipped)."""
    if not isinstance(pair_map, Mapping):
        raise ValueError(f"pair_map must be a mapping of class names, got {type(pair_map).__name__}")
    target = np.full(num_classes, -1, dtype=np.int64)
    for src, dst in pair_map.items():
        s, d = class_index(src, 8), class_index(dst, 8)  # KeyError listing valid names when unknown
        if s == d:
            raise ValueError(f"pair_map maps class {src!r} to itself; a pair must name two different classes")
        if s >= num_classes or d >= num_classes:
            continue  # e.g. contempt in the 7-class space: the pair does not exist there
        target[s] = d
    return target


# ---------------------------------------------------------------------------------------- the protocols
@register_noise("none")
def no_noise(labels: np.ndarray, value: None, rng: np.random.Generator, context: NoiseContext) -> np.ndarray:
    """No noise: the labels (N,) as they are; draws nothing."""
    return labels


@register_noise("symmetric", param="rate")
def symmetric_noise(labels: np.ndarray, rate: float, rng: np.random.Generator, context: NoiseContext) -> np.ndarray:
    """Symmetric (uniform) label noise, the protocol of SCN (Wang et al., "Suppressing Uncertainties for
    Large-Scale Facial Expression Recognition", CVPR 2020, ``generate.py``), reused by EAC (Zhang et al.,
    ECCV 2022) and LA-Net (Wu & Cui, ICCV 2023).

    Each label is flipped independently with probability ``rate``; a flipped label takes a class drawn uniformly
    from the other ``C - 1`` classes (never itself).

    Parameters
    ----------
    labels : np.ndarray of int64, shape (N,)
        Labels in ``[0, C)``, ``C = context.num_classes``.
    rate : float in [0, 1)
        Probability that a label is flipped (the expected realised noise rate).
    rng : np.random.Generator
    context : NoiseContext
        Uses ``num_classes``.

    Returns
    -------
    np.ndarray of int64, shape (N,)
        The noisy labels (a new array).
    """
    flip = rng.random(labels.shape[0]) < rate
    shift = rng.integers(1, context.num_classes, size=labels.shape[0])  # 1..C-1: uniform over the other classes
    return np.where(flip, (labels + shift) % context.num_classes, labels).astype(np.int64)


def _prepare_class_dependent(data: FERData, pair_map: Mapping[str, str]) -> dict:
    if tuple(data.classes) != tuple(CLASSES_8[:data.num_classes]) or data.num_classes not in (7, 8):
        raise ValueError(f"class_dependent noise needs the canonical 7 or 8 classes in order, got "
                         f"{list(data.classes)}")
    return {"pair_target": _resolve_pair_map(pair_map, data.num_classes)}


@register_noise("class_dependent", param="rate", prepare=_prepare_class_dependent)
def class_dependent_noise(labels: np.ndarray, rate: float, rng: np.random.Generator,
                          context: NoiseContext) -> np.ndarray:
    """Class-dependent (pair) label noise along a map of confusable expressions.

    A label of class ``s`` that the pair map names as a source is flipped with probability ``rate`` to its
    partner; classes absent from the map are never flipped. The map is :func:`apply_noise`'s ``pair_map``
    (default :data:`DEFAULT_PAIR_MAP`, LA-Net's ``_add_class_dependent_noise`` map): names may be any spelling
    known to :data:`ferlib.classes.SYNONYMS`, and a pair naming a class outside the data's class space (contempt
    with 7 classes) is ignored.

    Parameters
    ----------
    labels : np.ndarray of int64, shape (N,)
        Labels in ``[0, C)``, canonical class order (:mod:`ferlib.classes`), C in {7, 8}.
    rate : float in [0, 1)
        Flip probability of each label of a mapped class.
    rng : np.random.Generator
    context : NoiseContext
        Uses ``extra["pair_target"]``, shape (C,): each class's partner index, or -1 (never flipped).

    Returns
    -------
    np.ndarray of int64, shape (N,)
        The noisy labels (a new array).
    """
    partner = context.extra["pair_target"][labels]
    flip = (rng.random(labels.shape[0]) < rate) & (partner >= 0)
    return np.where(flip, partner, labels).astype(np.int64)


def _prepare_annotator(data: FERData, pair_map: Mapping[str, str]) -> dict:
    if data.votes is None:
        raise ValueError(f"'annotator' needs human vote counts; dataset {data.name or '?'!r} has none "
                         "(only FERPlus has votes)")
    train = np.flatnonzero(data.split == "train")

    def rows(bad: np.ndarray) -> str:
        ids = ", ".join(map(str, data.ids[train[bad[:5]]])) + (" ..." if bad.size > 5 else "")
        return f"train rows {train[bad[:5]].tolist()}, ids {ids}"

    _check_votes(data.votes[train], rows)
    return {}


def _draw_one(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One class per row, class ``k`` of row ``i`` with probability ``weights[i, k] / weights[i].sum()``.
    weights : (N, K) float64, non-negative, every row with a positive entry. Returns (N,) int64."""
    n, k = weights.shape
    cum = np.cumsum(weights, axis=1)
    u = rng.random(n) * cum[:, -1]
    label = (u[:, None] >= cum).sum(axis=1)  # first k with cum[k] > u: skips zero-weight classes
    last = k - 1 - np.argmax(weights[:, ::-1] > 0, axis=1)  # guard against u rounding up to the total
    return np.minimum(label, last).astype(np.int64)


@register_noise("annotator", prepare=_prepare_annotator)
def annotator_noise(labels: np.ndarray, value: None, rng: np.random.Generator, context: NoiseContext) -> np.ndarray:
    """Annotator noise (FERPlus): each image takes the label of ONE of its annotators, drawn from its votes.

    Image ``i`` gets class ``k`` with probability ``votes[i, k] / votes[i].sum()``: the label that one annotator
    chosen uniformly at random among its voters gave. The current labels are not used.

    Parameters
    ----------
    labels : np.ndarray of int64, shape (N,)
        The current labels (unused).
    value : None
    rng : np.random.Generator
    context : NoiseContext
        Uses ``votes``, shape (N, C), float64: vote counts over the C emotion classes only (FERPlus "unknown" /
        "not a face" are no columns), every row with at least one vote.

    Returns
    -------
    np.ndarray of int64, shape (N,)
        Sampled labels in ``[0, C)``; always a class with a nonzero vote.
    """
    return _draw_one(context.votes, rng)


@register_noise("annotator_matched", prepare=_prepare_annotator)
def annotator_matched_noise(labels: np.ndarray, value: None, rng: np.random.Generator,
                            context: NoiseContext) -> np.ndarray:
    """The synthetic twin of ``annotator`` noise (CIFAR-N's comparison, Wei et al., "Learning with Noisy Labels
    Revisited: A Study Using Real-World Human Annotations", ICLR 2022).

    Each label ``c`` is redrawn from row ``c`` of the transition matrix that ``annotator`` noise has in
    expectation (:func:`annotator_transition` of these votes and labels), independently of the image: the same
    amount and the same class pairs as the annotators' noise, spread over the faces at random instead of on the
    ambiguous ones.

    Parameters
    ----------
    labels : np.ndarray of int64, shape (N,)
        The clean labels, in ``[0, C)``.
    value : None
    rng : np.random.Generator
    context : NoiseContext
        Uses ``num_classes`` and ``votes`` (N, C) (only their class-wise averages).

    Returns
    -------
    np.ndarray of int64, shape (N,)
        Noisy labels; their expected transition matrix equals ``annotator`` noise's.
    """
    return _draw_one(_annotator_transition(context.votes, labels, context.num_classes)[labels], rng)


@register_noise("imbalance", param="factor", kind="subset")
def imbalance_indices(labels: np.ndarray, factor: float, rng: np.random.Generator,
                      context: NoiseContext) -> np.ndarray:
    """Positions of a long-tailed subsample with imbalance factor ``rho = n_max / n_min``.

    Exponential profile (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019;
    Cao et al., LDAM, NeurIPS 2019): the classes present are ranked by their count, descending (ties by class
    index), and the class of rank ``r = 0 .. C'-1`` keeps ::

        n_r = min(count_r, max(1, floor(n_max * rho ** (-r / (C' - 1)))))

    samples drawn without replacement, where ``n_max`` is the largest class count and ``C'`` the number of
    classes with at least one sample. So the head class keeps everything and the tail class keeps
    ``n_max / rho`` (fewer if it has fewer). ``factor == 1`` keeps everything.

    Parameters
    ----------
    labels : np.ndarray of int64, shape (N,)
        Labels in ``[0, C)``, ``C = context.num_classes``.
    factor : float >= 1
        Imbalance factor rho.
    rng : np.random.Generator
    context : NoiseContext
        Uses ``num_classes``.

    Returns
    -------
    np.ndarray of int64, shape (M,)
        Sorted positions in ``labels`` of the kept samples, ``M <= N``.
    """
    counts = np.bincount(labels, minlength=context.num_classes)
    keep = _imbalance_targets(counts, factor)
    kept = [rng.choice(np.flatnonzero(labels == c), size=int(keep[c]), replace=False)
            for c in range(context.num_classes) if keep[c] > 0]
    return np.sort(np.concatenate(kept)).astype(np.int64) if kept else np.zeros(0, np.int64)


def _imbalance_targets(counts: np.ndarray, factor: float) -> np.ndarray:
    """Samples to keep per class (shape (C,)) under the exponential profile."""
    keep = counts.copy()
    present = np.flatnonzero(counts > 0)
    if present.size < 2 or factor == 1.0:
        return keep
    order = present[np.argsort(-counts[present], kind="stable")]
    n_max = counts[order[0]]
    for r, c in enumerate(order):
        want = int(math.floor(n_max * factor ** (-r / (present.size - 1)) + 1e-9))
        keep[c] = min(counts[c], max(1, want))
    return keep


# ---------------------------------------------------------------------------------------- describing noise
def annotator_transition(votes, labels, *, num_classes: int) -> np.ndarray:
    """The transition matrix of ``annotator`` noise in expectation, given the images' labels.

    ``T[c, k]`` = mean, over the images labelled ``c``, of the share of their votes for ``k``: the
    probability that one annotator drawn at random labels ``k`` an image whose label is ``c``.

    Parameters
    ----------
    votes : array_like, shape (N, K), non-negative
        Vote counts over the K = ``num_classes`` emotion classes; every row has at least one vote.
    labels : array_like of int, shape (N,)
        The images' labels in ``[0, K)`` (the clean, e.g. plurality, labels).
    num_classes : int >= 2

    Returns
    -------
    np.ndarray of float64, shape (K, K)
        Row = label, column = annotator's class; rows sum to 1. A class no image has keeps its label
        (its row is the identity's).
    """
    num_classes = _check_num_classes(num_classes)
    votes = _check_votes(votes)
    labels = _check_labels(labels, num_classes)
    if votes.shape != (labels.shape[0], num_classes):
        raise ValueError(f"votes must have shape ({labels.shape[0]}, {num_classes}) to match labels, "
                         f"got {votes.shape}")
    return _annotator_transition(votes, labels, num_classes)


def _annotator_transition(votes: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    share = votes / votes.sum(axis=1, keepdims=True)
    total = np.zeros((num_classes, num_classes))
    np.add.at(total, labels, share)
    count = np.bincount(labels, minlength=num_classes)[:, None]
    return np.where(count > 0, total / np.maximum(count, 1), np.eye(num_classes))


def transition_matrix(clean, noisy, *, num_classes: int) -> np.ndarray:
    """Empirical noise transition matrix ``T[i, j] = P(noisy = j | clean = i)``.

    Parameters
    ----------
    clean, noisy : array_like of int, shape (N,)
        Clean and given labels of the same samples, in ``[0, num_classes)``.
    num_classes : int >= 2
        Number of classes C.

    Returns
    -------
    np.ndarray of float64, shape (C, C)
        Row = clean class, column = noisy class; each row sums to 1, except the rows of classes
        with no clean sample, which are all zeros. The identity when there is no noise.
    """
    num_classes = _check_num_classes(num_classes)
    return _transition(*_check_pair(clean, noisy, num_classes), num_classes)


def _confusion(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(clean * num_classes + noisy, minlength=num_classes**2).reshape(num_classes, num_classes)


def _transition(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    conf = _confusion(clean, noisy, num_classes).astype(np.float64)
    rows = conf.sum(axis=1, keepdims=True)
    return np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)


def noise_report(clean, noisy, *, class_names: Sequence[str]) -> dict:
    """Summary of the noise between clean and given labels (JSON-serialisable).

    Parameters
    ----------
    clean, noisy : array_like of int, shape (N,)
        Clean and given labels of the same samples, in ``[0, len(class_names))``.
    class_names : sequence of str
        Class names, index = label; its length is C.

    Returns
    -------
    dict
        ``overall_rate`` : float, fraction of samples with ``noisy != clean`` (0.0 when N == 0).
        ``per_class_rate`` : ``{name: float}``, fraction flipped among the samples of that clean
        class (0.0 for a class with no sample; see ``counts["clean"]``).
        ``transition`` : C x C nested list, :func:`transition_matrix`.
        ``counts`` : ``{"total": N, "flipped": int, "clean": {name: int}, "noisy": {name: int}}``.
    """
    names = [str(n) for n in class_names]
    return _report(*_check_pair(clean, noisy, _check_num_classes(len(names))), names)


def _report(clean: np.ndarray, noisy: np.ndarray, names: list[str]) -> dict:
    c = len(names)
    conf = _confusion(clean, noisy, c)
    n_clean = conf.sum(axis=1)
    kept = np.diag(conf)
    per_class = {names[i]: (float(1 - kept[i] / n_clean[i]) if n_clean[i] else 0.0) for i in range(c)}
    flipped = int(len(clean) - kept.sum())
    return {
        "overall_rate": float(flipped / len(clean)) if len(clean) else 0.0,
        "per_class_rate": per_class,
        "transition": _transition(clean, noisy, c).tolist(),
        "counts": {
            "total": int(len(clean)),
            "flipped": flipped,
            "clean": {names[i]: int(n_clean[i]) for i in range(c)},
            "noisy": {names[i]: int(conf[:, i].sum()) for i in range(c)},
        },
    }


# ---------------------------------------------------------------------------------------- spec
def _fmt_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class NoiseSpec:
    """One noise protocol with its number, optionally followed by more (``then``).

    Parsed from strings by :meth:`parse`; ``str(spec)`` gives the canonical string back, and
    ``NoiseSpec.parse(str(spec)) == spec``. A step is a registered protocol's name, followed by ``:<number>``
    when it takes one (:func:`protocol_help` lists them, e.g. ``symmetric:<rate>``, ``annotator``,
    ``imbalance:<factor>``); ``none`` stands only alone. Steps join with ``+`` and apply left to right, e.g.
    ``"imbalance:20+symmetric:0.3"``.

    Attributes
    ----------
    protocol : str
        One of :data:`PROTOCOLS`.
    value : float or None
        The protocol's number, what :data:`PROTOCOLS` names for it: a flip rate in [0, 1) (``symmetric``,
        ``class_dependent``), an imbalance factor >= 1 (``imbalance``); None for a protocol without one.
    then : NoiseSpec or None
        The next step, applied after this one.
    """

    protocol: str
    value: float | None = None
    then: "NoiseSpec | None" = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown noise protocol {self.protocol!r}; valid protocols: {protocol_help()}")
        param = PROTOCOLS[self.protocol]
        if param is None:
            if self.value is not None:
                raise ValueError(f"noise protocol {self.protocol!r} takes no parameter, got {self.value!r}")
        elif self.value is None:
            raise ValueError(f"noise protocol {self.protocol!r} needs a {param}, e.g. {self.protocol}:"
                             f"{_PARAM_EXAMPLES[param]}")
        else:
            object.__setattr__(self, "value", _PARAM_CHECKS[param](self.value))
        if self.then is not None:
            if not isinstance(self.then, NoiseSpec):
                raise ValueError(f"then must be a NoiseSpec or None, got {type(self.then).__name__}")
            if self.protocol == "none" or any(s.protocol == "none" for s in self.then.steps):
                raise ValueError("noise protocol 'none' cannot be combined with others")

    @property
    def steps(self) -> tuple["NoiseSpec", ...]:
        """The single steps in order of application (each with ``then=None``)."""
        out, node = [], self
        while node is not None:
            out.append(NoiseSpec(node.protocol, node.value))
            node = node.then
        return tuple(out)

    @property
    def relabels(self) -> bool:
        """Whether a step may change a given label: a ``labels`` protocol other than ``none``, at a rate > 0."""
        return any(_REGISTRY.get(s.protocol).kind == "labels" and s.protocol != "none" and s.value != 0
                   for s in self.steps)

    def __str__(self) -> str:
        head = self.protocol if self.value is None else f"{self.protocol}:{_fmt_number(self.value)}"
        return head if self.then is None else f"{head}+{self.then}"

    @classmethod
    def parse(cls, text: "str | NoiseSpec") -> "NoiseSpec":
        """Parse ``"symmetric:0.3"``, ``"imbalance:20+symmetric:0.3"``, ... (a NoiseSpec passes through).

        Raises ``ValueError`` naming the whole spec and the bad part, and listing valid protocols.
        """
        if isinstance(text, NoiseSpec):
            return text
        if not isinstance(text, str):
            raise ValueError(f"noise spec must be a str or NoiseSpec, got {type(text).__name__}")
        steps = []
        for part in text.split("+"):
            name, sep, number = part.strip().partition(":")
            name = name.strip().lower().replace("-", "_")
            try:
                if not name:
                    raise ValueError("empty step")
                if name not in PROTOCOLS:
                    raise ValueError(f"unknown protocol {name!r}")
                if sep and not number.strip():
                    raise ValueError("missing value after ':'")
                try:
                    value = float(number) if sep else None
                except ValueError:
                    raise ValueError(f"{number.strip()!r} is not a number") from None
                steps.append((name, value))
                NoiseSpec(name, value)  # validate the step alone
            except ValueError as err:
                raise ValueError(f"bad noise spec {text!r}: in {part.strip()!r}: {err}; "
                                 f"valid protocols: {protocol_help()}") from None
        spec = None
        try:
            for name, value in reversed(steps):
                spec = cls(name, value, spec)
        except ValueError as err:
            raise ValueError(f"bad noise spec {text!r}: {err}; valid protocols: {protocol_help()}") from None
        return spec


# ---------------------------------------------------------------------------------------- front door
def apply_noise(data: FERData, spec: "str | NoiseSpec", *, seed: int,
                pair_map: Mapping[str, str] = DEFAULT_PAIR_MAP) -> tuple[FERData, dict]:
    """Apply a noise spec to the TRAIN split of ``data``; valid and test are left untouched.

    Validates the spec, the seed and the data once (each protocol's ``prepare``), then runs the steps left to
    right on the current given labels of the train samples, all drawing from one ``np.random.default_rng(seed)``.
    Label steps change labels only; subset steps (``imbalance``) remove train samples (via
    :meth:`FERData.select`), counting classes by the current given labels.

    Parameters
    ----------
    data : FERData
        The dataset with all its splits; must have train samples and at least 2 classes.
    spec : str or NoiseSpec
        E.g. ``"none"``, ``"symmetric:0.3"``, ``"class_dependent:0.2"``, ``"annotator"``,
        ``"annotator_matched"``, ``"imbalance:50"``, ``"imbalance:20+symmetric:0.3"``.
    seed : int >= 0
        Seed of ``np.random.default_rng``.
    pair_map : mapping of str to str
        Pair map of the ``class_dependent`` steps (default :data:`DEFAULT_PAIR_MAP`).

    Returns
    -------
    noisy : FERData
        New object (``data`` is not modified): train labels are the noisy ones, ``clean_labels``
        holds the clean labels of every sample (set even for ``"none"``).
    report : dict
        ``spec`` (canonical string), ``seed``, ``steps`` (one dict per step: ``protocol`` and ``rate``, which
        holds the step's :attr:`NoiseSpec.value`, the imbalance factor too: the key keeps its name so that
        committed ``noise.json`` files read the same; subset steps add ``counts_before`` / ``counts_after`` per
        class name and ``kept`` / ``removed``), and ``train``: :func:`noise_report` of clean vs noisy train labels.

    Raises
    ------
    ValueError
        Bad spec or seed, no train samples, fewer than 2 classes, ``annotator`` on data without votes, or a train
        image whose emotion votes are all zero (named by id), or a bad ``pair_map``; KeyError for an unknown
        class name in ``pair_map`` (listing the valid ones).
    """
    spec = NoiseSpec.parse(spec)
    _check_seed(seed)
    if not isinstance(data, FERData):
        raise ValueError(f"data must be a FERData, got {type(data).__name__}")
    if not (data.split == "train").any():
        raise ValueError("data has no train samples to add noise to")
    if data.num_classes < 2:
        raise ValueError(f"data has {data.num_classes} class(es); noise needs at least 2")
    extra = _prepare(data, spec, pair_map)
    rng = np.random.default_rng(seed)
    out = data.with_labels(data.labels)  # clean_labels := the current clean labels, for every sample
    step_reports = []
    for step in spec.steps:
        out, rec = _apply_step(out, step, rng, extra)
        step_reports.append(rec)
    train = out.split == "train"
    report = {"spec": str(spec), "seed": int(seed), "steps": step_reports,
              "train": _report(out.clean_labels[train], out.labels[train], list(data.classes))}
    return out, report


def _prepare(data: FERData, spec: NoiseSpec, pair_map: Mapping[str, str]) -> dict:
    """Each protocol's check of the data, once, before any draw; their ``context.extra`` entries."""
    extra: dict = {}
    for name in dict.fromkeys(s.protocol for s in spec.steps):
        prepare = _REGISTRY.get(name).prepare
        if prepare is not None:
            try:
                extra.update(prepare(data, pair_map))
            except ValueError as err:
                raise ValueError(f"noise spec {str(spec)!r}: {err}") from None
    return extra


def _apply_step(data: FERData, step: NoiseSpec, rng: np.random.Generator, extra: Mapping) -> tuple[FERData, dict]:
    """``data`` after one step on its train samples, and the step's record for the report."""
    protocol = _REGISTRY.get(step.protocol)
    names, c = list(data.classes), data.num_classes
    train = data.split == "train"
    idx = np.flatnonzero(train)
    given = data.labels[idx].astype(np.int64)
    votes = None if data.votes is None else np.asarray(data.votes[idx], dtype=np.float64)
    result = protocol.step(given, step.value, rng, NoiseContext(c, votes, extra))
    rec: dict = {"protocol": step.protocol, "rate": step.value}
    if protocol.kind == "labels":
        labels = data.labels.copy()
        labels[idx] = result
        return data.with_labels(labels), rec  # keeps the clean labels already stored
    mask = ~train
    mask[idx[result]] = True
    out = data.select(mask)
    before, after = np.bincount(given, minlength=c), np.bincount(out.labels[out.split == "train"], minlength=c)
    rec.update(counts_before={names[i]: int(before[i]) for i in range(c)},
               counts_after={names[i]: int(after[i]) for i in range(c)},
               kept=int(len(result)), removed=int(len(idx) - len(result)))
    return out, rec
