"""Synthetic label noise and class imbalance for FER training sets (cleanlab style).

Every protocol is a plain function on numpy arrays with keyword-only options and an explicit
``seed`` (``np.random.default_rng(seed)``): the same seed gives the same labels, different seeds
give different ones. Public functions validate their inputs once and hand off to a private
``_...`` function that only computes (and takes a ``np.random.Generator``).

Protocols
---------
``symmetric``
    Each label is flipped independently with probability ``rate`` to a class drawn uniformly from
    the *other* ``C - 1`` classes. This is the protocol of SCN (Wang et al., "Suppressing
    Uncertainties for Large-Scale Facial Expression Recognition", CVPR 2020, ``generate.py``),
    reused by EAC (Zhang et al., ECCV 2022) and LA-Net (Wu & Cui, ICCV 2023).
``class_dependent``
    Each label of a class in a pair map is flipped with probability ``rate`` to its partner class
    (:data:`DEFAULT_PAIR_MAP`, the LA-Net ``_add_class_dependent_noise`` map extended with contempt).
``annotator``
    FERPlus only: each image takes the label of ONE of its annotators, drawn from its vote counts.
``annotator_matched``
    FERPlus only: the synthetic twin of ``annotator`` (CIFAR-N's comparison, Wei et al., "Learning with Noisy
    Labels Revisited: A Study Using Real-World Human Annotations", ICLR 2022): each label of class ``c`` is
    redrawn from row ``c`` of the transition matrix that ``annotator`` has in expectation
    (:func:`annotator_transition`), independently of the image. Same amount and same class pairs as the
    annotators' noise, but spread over faces at random instead of on the ambiguous ones.
``imbalance``
    Long-tailed subsampling with an exponential profile (Cui et al., CVPR 2019; Cao et al., LDAM,
    NeurIPS 2019): see :func:`imbalance_indices`.

The front door is :func:`apply_noise`, which applies a :class:`NoiseSpec` such as
``"imbalance:20+symmetric:0.3"`` to the train split of a :class:`~ferlib.data.dataset.FERData`.

A new protocol is one function registered with :func:`register_noise` (its name, what its number means,
whether it relabels or subsamples, and an optional check of the data); specs, the CLI and the study accept
it at once.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from ferlib._registry import Registry
from ferlib.classes import CLASSES_8, class_index, class_names as _canonical_names
from ferlib.data.dataset import FERData

__all__ = [
    "DEFAULT_PAIR_MAP",
    "PROTOCOLS",
    "NoiseProtocol",
    "NoiseContext",
    "register_noise",
    "protocol_help",
    "NoiseSpec",
    "symmetric_noise",
    "class_dependent_noise",
    "annotator_noise",
    "annotator_transition",
    "annotator_matched_noise",
    "imbalance_indices",
    "transition_matrix",
    "noise_report",
    "apply_noise",
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
    """What a protocol's step sees besides the current train labels.

    num_classes : C. votes : (n, K) vote counts of the train samples, or None when the data has none.
    extra : what the protocols' ``prepare`` functions returned (e.g. ``pair_target`` of ``class_dependent``).
    """

    num_classes: int
    votes: np.ndarray | None = None
    extra: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class NoiseProtocol:
    """A registered noise protocol (see :func:`register_noise`).

    name : its name in specs. param : what its number means (``rate`` in [0, 1), ``factor`` >= 1), or None.
    kind : ``labels`` (``step`` returns the new labels (n,) of the train samples) or ``subset`` (``step``
    returns the sorted positions of the train samples kept). step : ``step(given, value, rng, context)``
    with ``given`` (n,) the current train labels, ``value`` the checked parameter or None, ``rng`` the run's
    ``np.random.Generator`` and ``context`` a :class:`NoiseContext`. prepare : None, or
    ``prepare(data, pair_map) -> dict`` called once before any draw: it checks the data (ValueError naming
    what is missing) and returns entries for ``context.extra``.
    """

    name: str
    param: str | None
    kind: str
    step: Callable
    prepare: Callable | None = None


def protocol_help() -> str:
    """The registered protocols as specs show them, in registration order: ``none, symmetric:<rate>, ...``."""
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
    """Decorator registering ``step`` as noise protocol ``name`` (see :class:`NoiseProtocol`); the shared
    :class:`~ferlib._registry.Registry` idiom (a name registered twice raises)."""
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


def _check_number(value, what: str, ok, expected: str) -> float:
    """``float(value)`` if ``ok`` holds for it, else a ValueError naming ``what`` and the ``expected`` range."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be {expected}, got {value!r}") from None
    if not ok(number):
        raise ValueError(f"{what} must be {expected}, got {value!r}")
    return number


def _check_rate(rate) -> float:
    return _check_number(rate, "rate", lambda r: 0.0 <= r < 1.0, "a number in [0, 1)")


def _check_factor(factor) -> float:
    return _check_number(factor, "imbalance factor", lambda f: math.isfinite(f) and f >= 1.0, "a finite number >= 1")


_PARAM_CHECKS = {"rate": _check_rate, "factor": _check_factor}
_PARAM_EXAMPLES = {"rate": "0.3", "factor": "50"}


def _check_votes(votes) -> np.ndarray:
    arr = np.asarray(votes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"votes must have shape (N, K) with K >= 2, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or (arr.size and arr.min() < 0):
        raise ValueError("votes must be finite and non-negative")
    zero = np.flatnonzero(arr.sum(axis=1) <= 0)
    if zero.size:
        shown = ", ".join(map(str, zero[:10])) + (" ..." if zero.size > 10 else "")
        raise ValueError(f"{zero.size} image(s) have no emotion votes (rows {shown}); "
                         "drop them before annotator noise")
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


# ---------------------------------------------------------------------------------------- protocols
def symmetric_noise(labels, *, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Symmetric (uniform) label noise, the SCN / EAC / LA-Net protocol.

    Each label is flipped independently with probability ``rate``; a flipped label takes a class
    drawn uniformly from the other ``num_classes - 1`` classes (never itself), as in SCN
    (Wang et al., CVPR 2020, ``generate.py``).

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        Labels in ``[0, num_classes)``.
    rate : float in [0, 1)
        Probability that a label is flipped (the expected realised noise rate).
    num_classes : int >= 2
        Number of classes C.
    seed : int >= 0
        Seed of ``np.random.default_rng``.

    Returns
    -------
    np.ndarray of int64, shape (N,)
        The noisy labels (a new array).
    """
    num_classes = _check_num_classes(num_classes)
    labels = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    _check_seed(seed)
    return _symmetric(labels, rate, num_classes, np.random.default_rng(seed))


def _symmetric(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    flip = rng.random(labels.shape[0]) < rate
    shift = rng.integers(1, num_classes, size=labels.shape[0])  # 1..C-1: uniform over the other classes
    return np.where(flip, (labels + shift) % num_classes, labels).astype(np.int64)


def class_dependent_noise(labels, *, rate: float, pair_map: Mapping[str, str] = DEFAULT_PAIR_MAP,
                          num_classes: int, seed: int) -> np.ndarray:
    """Class-dependent (pair) label noise along a map of confusable expressions.

    A label of class ``s`` that appears as a key of ``pair_map`` is flipped with probability
    ``rate`` to ``pair_map[s]``; classes absent from the map are never flipped. Names may be any
    spelling known to :data:`ferlib.classes.SYNONYMS`. Pairs naming a class outside the
    ``num_classes`` space (contempt when ``num_classes == 7``) are ignored.

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        Labels in ``[0, num_classes)``, canonical order (:mod:`ferlib.classes`).
    rate : float in [0, 1)
        Flip probability of each label of a mapped class.
    pair_map : mapping of str to str
        ``source class name -> target class name``; default :data:`DEFAULT_PAIR_MAP`.
    num_classes : {7, 8}
        Size of the canonical class space.
    seed : int >= 0
        Seed of ``np.random.default_rng``.

    Returns
    -------
    np.ndarray of int64, shape (N,)
        The noisy labels (a new array).

    Raises
    ------
    KeyError
        A name in ``pair_map`` is not a canonical class (the message lists the valid ones).
    ValueError
        A class is mapped to itself, or another argument is out of range.
    """
    _canonical_names(num_classes)  # 7 or 8 only: the map is by canonical names
    labels = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    _check_seed(seed)
    target = _resolve_pair_map(pair_map, num_classes)
    return _class_dependent(labels, rate, target, np.random.default_rng(seed))


def _class_dependent(labels: np.ndarray, rate: float, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    partner = target[labels]
    flip = (rng.random(labels.shape[0]) < rate) & (partner >= 0)
    return np.where(flip, partner, labels).astype(np.int64)


def annotator_noise(votes, *, seed: int) -> np.ndarray:
    """Annotator noise (FERPlus): each image takes the label of one annotator drawn from its votes.

    Image ``i`` gets class ``k`` with probability ``votes[i, k] / votes[i].sum()``, i.e. the label a
    single annotator chosen uniformly at random among its voters gave.

    Parameters
    ----------
    votes : array_like, shape (N, K), non-negative
        Vote counts over the K emotion classes only (FERPlus "unknown" / "not a face" are not
        columns). Every row must have at least one vote.
    seed : int >= 0
        Seed of ``np.random.default_rng``.

    Returns
    -------
    np.ndarray of int64, shape (N,)
        Sampled labels in ``[0, K)``; always a class with a nonzero vote.

    Raises
    ------
    ValueError
        An image's emotion votes are all zero (the message names the rows), or votes are negative.
    """
    votes = _check_votes(votes)
    _check_seed(seed)
    return _annotator(votes, np.random.default_rng(seed))


def _annotator(votes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, k = votes.shape
    cum = np.cumsum(votes, axis=1)
    u = rng.random(n) * cum[:, -1]
    label = (u[:, None] >= cum).sum(axis=1)  # first k with cum[k] > u: skips zero-vote classes
    last_voted = k - 1 - np.argmax(votes[:, ::-1] > 0, axis=1)  # guard against u rounding up to the total
    return np.minimum(label, last_voted).astype(np.int64)


def annotator_transition(votes, labels, *, num_classes: int) -> np.ndarray:
    """The transition matrix of :func:`annotator_noise` in expectation, given the images' labels.

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


def annotator_matched_noise(labels, votes, *, seed: int) -> np.ndarray:
    """Synthetic noise matched to annotator noise: label ``c`` is redrawn from row ``c`` of
    :func:`annotator_transition` (estimated on these ``votes`` and ``labels``), independently per image.

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        The clean labels, in ``[0, K)``.
    votes : array_like, shape (N, K)
        The images' vote counts (only their class-wise averages are used).
    seed : int >= 0

    Returns
    -------
    np.ndarray of int64, shape (N,)
        Noisy labels; their expected transition matrix equals :func:`annotator_noise`'s.
    """
    votes = _check_votes(votes)
    transition = annotator_transition(votes, labels, num_classes=votes.shape[1])
    _check_seed(seed)
    return _annotator(transition[np.asarray(labels)], np.random.default_rng(seed))


def imbalance_indices(labels, *, factor: float, num_classes: int, seed: int) -> np.ndarray:
    """Indices of a long-tailed subsample with imbalance factor ``rho = n_max / n_min``.

    Exponential profile (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples",
    CVPR 2019; Cao et al., LDAM, NeurIPS 2019): the classes present are ranked by their count,
    descending (ties by class index), and the class of rank ``r = 0 .. C'-1`` keeps ::

        n_r = min(count_r, max(1, floor(n_max * rho ** (-r / (C' - 1)))))

    samples drawn without replacement, where ``n_max`` is the largest class count and ``C'`` the
    number of classes with at least one sample. So the head class keeps everything and the
    tail class keeps ``n_max / rho`` (fewer if it has fewer). ``factor == 1`` keeps everything.

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        Labels in ``[0, num_classes)``.
    factor : float >= 1
        Imbalance factor rho.
    num_classes : int >= 2
        Number of classes C.
    seed : int >= 0
        Seed of ``np.random.default_rng``.

    Returns
    -------
    np.ndarray of int64, shape (M,)
        Sorted indices into ``labels`` of the kept samples, ``M <= N``.
    """
    num_classes = _check_num_classes(num_classes)
    labels = _check_labels(labels, num_classes)
    factor = _check_factor(factor)
    _check_seed(seed)
    return _imbalance(labels, factor, num_classes, np.random.default_rng(seed))


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


def _imbalance(labels: np.ndarray, factor: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    counts = np.bincount(labels, minlength=num_classes)
    keep = _imbalance_targets(counts, factor)
    kept = [rng.choice(np.flatnonzero(labels == c), size=int(keep[c]), replace=False)
            for c in range(num_classes) if keep[c] > 0]
    return np.sort(np.concatenate(kept)).astype(np.int64) if kept else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------- reports
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
    clean = _check_labels(clean, num_classes, "clean")
    noisy = _check_labels(noisy, num_classes, "noisy")
    if clean.shape != noisy.shape:
        raise ValueError(f"clean and noisy must have the same shape, got {clean.shape} and {noisy.shape}")
    return _transition(clean, noisy, num_classes)


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
    c = _check_num_classes(len(names))
    clean = _check_labels(clean, c, "clean")
    noisy = _check_labels(noisy, c, "noisy")
    if clean.shape != noisy.shape:
        raise ValueError(f"clean and noisy must have the same shape, got {clean.shape} and {noisy.shape}")
    return _report(clean, noisy, names)


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
    """One noise protocol with its parameter, optionally followed by more (``then``).

    Parsed from strings by :meth:`parse`; ``str(spec)`` gives the canonical string back, and
    ``NoiseSpec.parse(str(spec)) == spec``. Valid steps::

        none                     no noise (only alone)
        symmetric:<rate>         rate in [0, 1)
        class_dependent:<rate>   rate in [0, 1)
        annotator                needs votes (FERPlus)
        imbalance:<factor>       factor >= 1

    Steps join with ``+`` and apply left to right, e.g. ``"imbalance:20+symmetric:0.3"``.

    Attributes
    ----------
    protocol : str
        One of :data:`PROTOCOLS`.
    rate : float or None
        Flip rate (``symmetric``, ``class_dependent``), imbalance factor (``imbalance``), or None.
    then : NoiseSpec or None
        The next step, applied after this one.
    """

    protocol: str
    rate: float | None = None
    then: "NoiseSpec | None" = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown noise protocol {self.protocol!r}; valid protocols: {protocol_help()}")
        param = PROTOCOLS[self.protocol]
        if param is None:
            if self.rate is not None:
                raise ValueError(f"noise protocol {self.protocol!r} takes no parameter, got {self.rate!r}")
        elif self.rate is None:
            raise ValueError(f"noise protocol {self.protocol!r} needs a {param}, e.g. {self.protocol}:"
                             f"{_PARAM_EXAMPLES[param]}")
        else:
            object.__setattr__(self, "rate", _PARAM_CHECKS[param](self.rate))
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
            out.append(NoiseSpec(node.protocol, node.rate))
            node = node.then
        return tuple(out)

    @property
    def relabels(self) -> bool:
        """Whether a step may change a given label: a ``labels`` protocol other than ``none``, at a rate > 0."""
        return any(_REGISTRY.get(s.protocol).kind == "labels" and s.protocol != "none" and s.rate != 0
                   for s in self.steps)

    def __str__(self) -> str:
        head = self.protocol if self.rate is None else f"{self.protocol}:{_fmt_number(self.rate)}"
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
            name, sep, value = part.strip().partition(":")
            name = name.strip().lower().replace("-", "_")
            try:
                if not name:
                    raise ValueError("empty step")
                if name not in PROTOCOLS:
                    raise ValueError(f"unknown protocol {name!r}")
                if sep and not value.strip():
                    raise ValueError("missing value after ':'")
                try:
                    rate = float(value) if sep else None
                except ValueError:
                    raise ValueError(f"{value.strip()!r} is not a number") from None
                steps.append((name, rate))
                NoiseSpec(name, rate)  # validate the step alone
            except ValueError as err:
                raise ValueError(f"bad noise spec {text!r}: in {part.strip()!r}: {err}; "
                                 f"valid protocols: {protocol_help()}") from None
        spec = None
        try:
            for name, rate in reversed(steps):
                spec = cls(name, rate, spec)
        except ValueError as err:
            raise ValueError(f"bad noise spec {text!r}: {err}; valid protocols: {protocol_help()}") from None
        return spec


# ---------------------------------------------------------------------------------------- front door
def apply_noise(data: FERData, spec: "str | NoiseSpec", *, seed: int,
                pair_map: Mapping[str, str] = DEFAULT_PAIR_MAP) -> tuple[FERData, dict]:
    """Apply a noise spec to the TRAIN split of ``data``; valid and test are left untouched.

    Steps apply left to right to the current given labels of the train samples, all drawing from
    one ``np.random.default_rng(seed)``. Label steps change labels only; ``imbalance`` removes
    train samples (via :meth:`FERData.select`), counting classes by the current given labels.

    Parameters
    ----------
    data : FERData
        The dataset with all its splits; must have train samples.
    spec : str or NoiseSpec
        E.g. ``"none"``, ``"symmetric:0.3"``, ``"class_dependent:0.2"``, ``"annotator"``,
        ``"imbalance:50"``, ``"imbalance:20+symmetric:0.3"``.
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
        ``spec`` (canonical string), ``seed``, ``steps`` (one dict per step: ``protocol``,
        ``rate``; imbalance steps add ``counts_before`` / ``counts_after`` per class name and
        ``kept`` / ``removed``), and ``train``: :func:`noise_report` of clean vs noisy train labels.

    Raises
    ------
    ValueError
        Bad spec, no train samples, ``annotator`` on data without votes, or a train image whose
        emotion votes are all zero (named by id).
    """
    spec = NoiseSpec.parse(spec)
    _check_seed(seed)
    if not isinstance(data, FERData):
        raise ValueError(f"data must be a FERData, got {type(data).__name__}")
    if not (data.split == "train").any():
        raise ValueError("data has no train samples to add noise to")
    names, c = list(data.classes), data.num_classes
    extra: dict = {}
    for name in dict.fromkeys(s.protocol for s in spec.steps):  # each protocol's check, once, before any draw
        prepare = _REGISTRY.get(name).prepare
        if prepare is not None:
            try:
                extra.update(prepare(data, pair_map))
            except ValueError as err:
                raise ValueError(f"noise spec {str(spec)!r}: {err}") from None

    rng = np.random.default_rng(seed)
    out = data.with_labels(data.labels)  # clean_labels := the current clean labels, for every sample
    step_reports = []
    for step in spec.steps:
        protocol = _REGISTRY.get(step.protocol)
        train = out.split == "train"
        idx = np.flatnonzero(train)
        given = out.labels[idx]
        votes = None if out.votes is None else np.asarray(out.votes[idx])
        result = protocol.step(given, step.rate, rng, NoiseContext(c, votes, extra))
        rec: dict = {"protocol": step.protocol, "rate": step.rate}
        if protocol.kind == "subset":
            before = np.bincount(given, minlength=c)
            mask = ~train
            mask[idx[result]] = True
            out = out.select(mask)
            after = np.bincount(out.labels[out.split == "train"], minlength=c)
            rec.update(counts_before={names[i]: int(before[i]) for i in range(c)},
                       counts_after={names[i]: int(after[i]) for i in range(c)},
                       kept=int(len(result)), removed=int(len(idx) - len(result)))
        else:
            labels = out.labels.copy()
            labels[idx] = result
            out = out.with_labels(labels)  # keeps the clean labels already stored
        step_reports.append(rec)

    train = out.split == "train"
    report = {
        "spec": str(spec),
        "seed": int(seed),
        "steps": step_reports,
        "train": _report(out.clean_labels[train], out.labels[train], names),
    }
    return out, report


# ---------------------------------------------------------------------------------------- the protocols
@register_noise("none")
def _no_noise(given: np.ndarray, value, rng: np.random.Generator, context: NoiseContext) -> np.ndarray:
    return given


@register_noise("symmetric", param="rate")
def _symmetric_step(given: np.ndarray, rate: float, rng: np.random.Generator, context: NoiseContext) -> np.ndarray:
    return _symmetric(given, rate, context.num_classes, rng)


def _prepare_class_dependent(data: FERData, pair_map: Mapping[str, str]) -> dict:
    if tuple(data.classes) != tuple(CLASSES_8[:data.num_classes]):
        raise ValueError(f"class_dependent noise needs the canonical class order, got {list(data.classes)}")
    return {"pair_target": _resolve_pair_map(pair_map, data.num_classes)}


@register_noise("class_dependent", param="rate", prepare=_prepare_class_dependent)
def _class_dependent_step(given: np.ndarray, rate: float, rng: np.random.Generator,
                          context: NoiseContext) -> np.ndarray:
    return _class_dependent(given, rate, context.extra["pair_target"], rng)


def _prepare_annotator(data: FERData, pair_map: Mapping[str, str]) -> dict:
    if data.votes is None:
        raise ValueError(f"'annotator' needs human vote counts; dataset {data.name or '?'!r} has none "
                         "(only FERPlus has votes)")
    zero = np.flatnonzero((data.split == "train") & (np.asarray(data.votes).sum(axis=1) <= 0))
    if zero.size:
        ids = ", ".join(map(str, data.ids[zero[:5]])) + (" ..." if zero.size > 5 else "")
        raise ValueError(f"{zero.size} train image(s) have no emotion votes (rows {zero[:5].tolist()}, "
                         f"ids {ids}); annotator noise needs at least one vote per image")
    return {}


@register_noise("annotator", prepare=_prepare_annotator)
def _annotator_step(given: np.ndarray, value, rng: np.random.Generator, context: NoiseContext) -> np.ndarray:
    return _annotator(np.asarray(context.votes, dtype=np.float64), rng)


@register_noise("annotator_matched", prepare=_prepare_annotator)
def _annotator_matched_step(given: np.ndarray, value, rng: np.random.Generator, context: NoiseContext) -> np.ndarray:
    votes = np.asarray(context.votes, dtype=np.float64)
    return _annotator(_annotator_transition(votes, given, context.num_classes)[given], rng)


@register_noise("imbalance", param="factor", kind="subset")
def _imbalance_step(given: np.ndarray, factor: float, rng: np.random.Generator, context: NoiseContext) -> np.ndarray:
    return _imbalance(given, factor, context.num_classes, rng)
