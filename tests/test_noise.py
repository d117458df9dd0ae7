"""Tests of ferlib.noise through its one API: apply_noise runs the registered protocols; reports, spec parsing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ferlib.classes import CLASSES_7, CLASSES_8
from ferlib.data.dataset import FERData
from ferlib.noise import (
    DEFAULT_PAIR_MAP,
    PROTOCOLS,
    NoiseSpec,
    annotator_transition,
    apply_noise,
    noise_report,
    protocol_help,
    transition_matrix,
)

N = 20000


def balanced(n: int = N, c: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, c, size=n)


def make_data(n_train=800, n_valid=100, n_test=100, c=8, votes=True, seed=0) -> FERData:
    rng = np.random.default_rng(seed)
    n = n_train + n_valid + n_test
    labels = rng.integers(0, c, size=n)
    v = rng.integers(0, 4, size=(n, c)).astype(np.float32)
    v[np.arange(n), labels] += 6  # majority = label, every row has votes
    return FERData(
        images=np.zeros((n, 2, 2, 1), np.uint8), labels=labels.astype(np.int64),
        split=np.array(["train"] * n_train + ["valid"] * n_valid + ["test"] * n_test),
        ids=np.array([f"img{i:05d}" for i in range(n)]), classes=CLASSES_8[:c],
        votes=v if votes else None, name="toy",
    )


def train_only(labels, *, c: int = 8, votes=None) -> FERData:
    """Train-only data holding ``labels`` (and ``votes``); ids are the positions."""
    n = len(labels)
    return FERData(images=np.zeros((n, 1, 1, 1), np.uint8), labels=np.asarray(labels, np.int64),
                   split=np.full(n, "train"), ids=np.arange(n).astype(str), classes=CLASSES_8[:c],
                   votes=None if votes is None else np.asarray(votes))


def noisy(labels, spec: str, *, seed: int, c: int = 8, votes=None, **options) -> np.ndarray:
    """The labels after ``apply_noise(spec)`` on train-only data holding ``labels``."""
    out, _ = apply_noise(train_only(labels, c=c, votes=votes), spec, seed=seed, **options)
    assert np.array_equal(out.clean_labels, labels)
    return out.labels


def kept(labels, factor: float, *, seed: int, c: int) -> np.ndarray:
    """The positions in ``labels`` that ``imbalance:<factor>`` keeps."""
    out, _ = apply_noise(train_only(labels, c=c), f"imbalance:{factor}", seed=seed)
    return out.ids.astype(int)


# ------------------------------------------------------------------ symmetric
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_symmetric_rate_and_never_self(rate):
    y = balanced()
    z = noisy(y, f"symmetric:{rate}", seed=1)
    assert z.shape == y.shape and z.dtype == np.int64
    assert abs((z != y).mean() - rate) < 0.015
    assert z.min() >= 0 and z.max() < 8
    t = transition_matrix(y, z, num_classes=8)
    # off-diagonal mass of each row is spread uniformly over the 7 other classes
    off = t[~np.eye(8, dtype=bool)].reshape(8, 7)
    assert np.allclose(off, rate / 7, atol=0.02)


def test_symmetric_flips_to_self_never():
    y = np.full(5000, 3)
    z = noisy(y, "symmetric:0.9", seed=0, c=7)
    flipped = z[z != y]
    assert len(flipped) > 4000
    counts = np.bincount(flipped, minlength=7)
    assert counts[3] == 0
    others = counts[np.arange(7) != 3]
    assert np.all(np.abs(others / len(flipped) - 1 / 6) < 0.03)


def test_symmetric_zero_rate_identity():
    y = balanced(1000)
    assert np.array_equal(noisy(y, "symmetric:0", seed=5), y)


def test_symmetric_determinism():
    y = balanced(2000)
    a = noisy(y, "symmetric:0.3", seed=7)
    b = noisy(y, "symmetric:0.3", seed=7)
    c = noisy(y, "symmetric:0.3", seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("spec, seed, c, match", [
    ("symmetric:1.0", 0, 8, r"rate must be a number in \[0, 1\)"), ("symmetric:-0.1", 0, 8, "rate"),
    ("symmetric:0.2", 0, 1, "needs at least 2"), ("symmetric:0.2", -1, 8, "seed"), ("symmetric:0.2", 1.5, 8, "seed"),
])
def test_apply_noise_validates_spec_seed_and_classes_once(spec, seed, c, match):
    with pytest.raises(ValueError, match=match):
        noisy(np.zeros(10, int), spec, seed=seed, c=c)


# ------------------------------------------------------------------ class-dependent
def test_class_dependent_follows_map():
    y = balanced()
    z = noisy(y, "class_dependent:0.2", seed=3)
    idx = {n: i for i, n in enumerate(CLASSES_8)}
    target = {idx[s]: idx[d] for s, d in DEFAULT_PAIR_MAP.items()}
    flipped = z != y
    assert np.all(z[flipped] == np.vectorize(target.get)(y[flipped]))
    rep = noise_report(y, z, class_names=CLASSES_8)
    for name in DEFAULT_PAIR_MAP:
        assert abs(rep["per_class_rate"][name] - 0.2) < 0.03, name


def test_class_dependent_unmapped_classes_never_flip():
    y = balanced()
    z = noisy(y, "class_dependent:0.5", seed=0, pair_map={"fear": "surprise"})
    assert np.array_equal(z[y != 6], y[y != 6])
    assert set(np.unique(z[(y == 6) & (z != y)])) == {2}
    assert abs((z[y == 6] != 6).mean() - 0.5) < 0.04


def test_class_dependent_seven_classes_drops_contempt_pair():
    y = balanced(c=7)
    z = noisy(y, "class_dependent:0.3", seed=0, c=7)
    assert z.max() < 7
    assert (z != y).mean() > 0.25  # all 7 classes are mapped


def test_class_dependent_synonyms_and_errors():
    y = balanced(500)
    z = noisy(y, "class_dependent:0.4", seed=0, pair_map={"Angry": "disgusted"})
    assert set(np.unique(z[z != y])) == {5}
    with pytest.raises(KeyError, match="valid: neutral, happiness"):
        noisy(y, "class_dependent:0.2", seed=0, pair_map={"boredom": "anger"})
    with pytest.raises(ValueError, match="itself"):
        noisy(y, "class_dependent:0.2", seed=0, pair_map={"anger": "angry"})
    with pytest.raises(ValueError, match="7 or 8"):
        noisy(y % 5, "class_dependent:0.2", seed=0, c=5)


def test_default_pair_map_is_read_only():
    with pytest.raises(TypeError):
        DEFAULT_PAIR_MAP["fear"] = "anger"  # type: ignore[index]


# ------------------------------------------------------------------ annotator
def test_annotator_samples_voted_classes_with_vote_distribution():
    votes = np.array([[0, 3, 0, 7, 0, 0, 0, 0],
                      [10, 0, 0, 0, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0, 0, 1, 1]], dtype=np.float32)
    reps = 4000
    tiled = np.tile(votes, (reps, 1))
    z = noisy(np.argmax(tiled, axis=1), "annotator", seed=0, votes=tiled).reshape(reps, 3)
    tiled = tiled.reshape(reps, 3, 8)
    assert np.all(np.take_along_axis(tiled, z[..., None], axis=2) > 0)  # always a nonzero vote
    for row in range(3):
        emp = np.bincount(z[:, row], minlength=8) / reps
        assert np.allclose(emp, votes[row] / votes[row].sum(), atol=0.03), row


def test_annotator_determinism_and_vote_errors():
    v = np.random.default_rng(0).integers(0, 5, size=(500, 8)) + np.eye(8, dtype=int)[np.arange(500) % 8]
    y = np.argmax(v, axis=1)
    assert np.array_equal(noisy(y, "annotator", seed=1, votes=v), noisy(y, "annotator", seed=1, votes=v))
    assert not np.array_equal(noisy(y, "annotator", seed=1, votes=v), noisy(y, "annotator", seed=2, votes=v))
    v = v.astype(float)
    v[17] = 0
    with pytest.raises(ValueError, match=r"train rows \[17\], ids 17"):
        noisy(y, "annotator", seed=0, votes=v)
    v[17, 0] = -1
    with pytest.raises(ValueError, match="non-negative"):
        noisy(y, "annotator_matched", seed=0, votes=v)


# ------------------------------------------------------------------ imbalance
@pytest.mark.parametrize("factor", [10, 50, 100])
def test_imbalance_exponential_profile(factor):
    y = np.repeat(np.arange(7), 1000)
    keep = kept(y, factor, seed=0, c=7)
    assert np.all(np.diff(keep) > 0)  # sorted, unique
    counts = np.sort(np.bincount(y[keep], minlength=7))[::-1]
    expected = np.floor(1000 * float(factor) ** (-np.arange(7) / 6) + 1e-9)
    assert np.array_equal(counts, expected.astype(int))
    assert abs(counts[0] / counts[-1] - factor) / factor < 0.05


def test_imbalance_ranks_by_count_and_caps():
    # class 2 is the largest; class 0 the smallest and already below its target
    y = np.concatenate([np.full(30, 0), np.full(600, 1), np.full(1000, 2), np.full(800, 3)])
    keep = kept(y, 10, seed=1, c=4)
    counts = np.bincount(y[keep], minlength=4)
    # ranks: 2 (1000), 3 (800), 1 (600), 0 (30)
    assert counts[2] == 1000
    assert counts[3] == int(1000 * 10 ** (-1 / 3))
    assert counts[1] == int(1000 * 10 ** (-2 / 3) + 1e-9)
    assert counts[0] == 30  # capped by what exists (target 100)


def test_imbalance_factor_one_keeps_all_and_determinism():
    y = balanced(3000)
    assert np.array_equal(kept(y, 1, seed=0, c=8), np.arange(3000))
    a = kept(y, 20, seed=0, c=8)
    assert np.array_equal(a, kept(y, 20, seed=0, c=8))
    assert not np.array_equal(a, kept(y, 20, seed=1, c=8))
    with pytest.raises(ValueError, match=">= 1"):
        kept(y, 0.5, seed=0, c=8)


# ------------------------------------------------------------------ transition / report
def test_transition_rows_and_identity():
    y = balanced(5000, c=7)
    assert np.array_equal(transition_matrix(y, y, num_classes=7), np.eye(7))
    z = noisy(y, "symmetric:0.4", seed=0, c=7)
    t = transition_matrix(y, z, num_classes=8)  # class 7 absent -> zero row
    assert t.shape == (8, 8)
    assert np.allclose(t[:7].sum(axis=1), 1.0)
    assert np.all(t[7] == 0)


def test_transition_exact_small():
    clean = np.array([0, 0, 0, 0, 1, 1])
    noisy = np.array([0, 0, 0, 1, 1, 0])
    t = transition_matrix(clean, noisy, num_classes=3)
    assert np.allclose(t, [[0.75, 0.25, 0], [0.5, 0.5, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="same shape"):
        transition_matrix(clean, noisy[:3], num_classes=3)


def test_noise_report_contents():
    clean = np.array([0, 0, 0, 0, 1, 1])
    noisy = np.array([0, 0, 0, 1, 1, 0])
    rep = noise_report(clean, noisy, class_names=("a", "b", "c"))
    assert rep["overall_rate"] == pytest.approx(2 / 6)
    assert rep["per_class_rate"] == {"a": 0.25, "b": 0.5, "c": 0.0}
    assert rep["counts"] == {"total": 6, "flipped": 2, "clean": {"a": 4, "b": 2, "c": 0},
                             "noisy": {"a": 4, "b": 2, "c": 0}}
    assert len(rep["transition"]) == 3 and len(rep["transition"][0]) == 3
    json.dumps(rep)  # serialisable


# ------------------------------------------------------------------ spec
@pytest.mark.parametrize("text", [
    "none", "symmetric:0.3", "class_dependent:0.2", "annotator", "imbalance:50",
    "imbalance:20+symmetric:0.3", "imbalance:12.5+class_dependent:0.1+annotator",
])
def test_spec_round_trip(text):
    spec = NoiseSpec.parse(text)
    assert str(spec) == text
    assert NoiseSpec.parse(str(spec)) == spec
    assert hash(spec) == hash(NoiseSpec.parse(text))


def test_spec_structure_and_normalisation():
    spec = NoiseSpec.parse(" Imbalance:20 + symmetric:0.30 ")
    assert [(s.protocol, s.value) for s in spec.steps] == [("imbalance", 20.0), ("symmetric", 0.3)]
    assert str(spec) == "imbalance:20+symmetric:0.3"
    assert NoiseSpec.parse("class-dependent:0.2") == NoiseSpec("class_dependent", 0.2)
    assert NoiseSpec.parse(spec) is spec
    with pytest.raises(Exception):
        spec.value = 0.5  # frozen


@pytest.mark.parametrize("text, bad", [
    ("gaussian:0.3", "gaussian"), ("symmetric", "needs a rate"), ("symmetric:1.0", "[0, 1)"),
    ("symmetric:abc", "'abc' is not a number"), ("annotator:0.2", "takes no parameter"),
    ("imbalance:0.5", ">= 1"), ("imbalance:20+foo", "'foo'"), ("symmetric:0.2+", "empty step"),
    ("none+symmetric:0.2", "cannot be combined"), ("symmetric:", "missing value"),
])
def test_spec_errors_name_bad_part(text, bad):
    with pytest.raises(ValueError) as err:
        NoiseSpec.parse(text)
    msg = str(err.value)
    assert repr(text) in msg and bad in msg
    assert "valid protocols: none, symmetric:<rate>" in msg


def test_spec_direct_construction_validated():
    with pytest.raises(ValueError, match="unknown noise protocol"):
        NoiseSpec("uniform", 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        NoiseSpec("symmetric", 1.5)


# ------------------------------------------------------------------ apply_noise
def test_apply_noise_train_only_and_clean_kept():
    data = make_data()
    out, rep = apply_noise(data, "symmetric:0.4", seed=0)
    train = data.split == "train"
    assert np.array_equal(out.labels[~train], data.labels[~train])
    assert np.array_equal(out.clean_labels, data.labels)
    assert data.clean_labels is None  # input untouched
    rate = (out.labels[train] != data.labels[train]).mean()
    assert abs(rate - 0.4) < 0.06
    assert rep["spec"] == "symmetric:0.4" and rep["seed"] == 0
    assert rep["train"]["overall_rate"] == pytest.approx(rate)
    assert rep["train"]["counts"]["total"] == train.sum()
    json.dumps(rep)


def test_apply_noise_none_sets_clean_labels():
    data = make_data(votes=False)
    out, rep = apply_noise(data, "none", seed=0)
    assert np.array_equal(out.labels, data.labels) and np.array_equal(out.clean_labels, data.labels)
    assert rep["train"]["overall_rate"] == 0.0


def test_apply_noise_determinism():
    data = make_data()
    a, ra = apply_noise(data, "imbalance:5+class_dependent:0.3", seed=3)
    b, rb = apply_noise(data, "imbalance:5+class_dependent:0.3", seed=3)
    c, _ = apply_noise(data, "imbalance:5+class_dependent:0.3", seed=4)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels) and ra == rb
    assert not (np.array_equal(a.ids, c.ids) and np.array_equal(a.labels, c.labels))


def test_apply_noise_imbalance_then_symmetric():
    data = make_data(n_train=4000)
    out, rep = apply_noise(data, NoiseSpec.parse("imbalance:10+symmetric:0.3"), seed=0)
    imb = rep["steps"][0]
    assert imb["protocol"] == "imbalance"
    assert sum(imb["counts_before"].values()) == 4000
    after = np.array(list(imb["counts_after"].values()))
    assert sum(after) == imb["kept"] == 4000 - imb["removed"]
    assert abs(after.max() / after.min() - 10) < 1
    # valid/test untouched (same ids, same labels), train shrunk
    for s in ("valid", "test"):
        assert np.array_equal(out.ids[out.split == s], data.ids[data.split == s])
        assert np.array_equal(out.labels[out.split == s], data.labels[data.split == s])
    assert out.split_counts()["train"] == imb["kept"]
    # clean labels follow their samples through the subsampling
    pos = {i: k for k, i in enumerate(data.ids)}
    assert np.array_equal(out.clean_labels, data.labels[[pos[i] for i in out.ids]])
    # counts_after are counts of the clean labels (imbalance came first)
    assert np.array_equal(np.bincount(out.clean_labels[out.split == "train"], minlength=8), after)
    assert abs(rep["train"]["overall_rate"] - 0.3) < 0.08


def test_apply_noise_annotator():
    data = make_data()
    out, rep = apply_noise(data, "annotator", seed=0)
    train = data.split == "train"
    voted = data.votes[np.arange(len(data)), out.labels]
    assert np.all(voted > 0)
    assert np.array_equal(out.labels[~train], data.labels[~train])
    assert 0 < rep["train"]["overall_rate"] < 0.8


# ------------------------------------------------------------------ annotator_matched
def test_annotator_transition_is_the_class_average_of_vote_shares():
    votes = np.array([[8, 2, 0], [6, 0, 4], [0, 10, 0], [1, 0, 1]], dtype=float)
    labels = np.array([0, 0, 1, 0])
    t = annotator_transition(votes, labels, num_classes=3)
    assert np.allclose(t[0], [(0.8 + 0.6 + 0.5) / 3, 0.2 / 3, (0.4 + 0.5) / 3])
    assert np.allclose(t[1], [0, 1, 0])
    assert np.allclose(t[2], [0, 0, 1])  # no image labelled 2: the label is kept
    with pytest.raises(ValueError, match="shape"):
        annotator_transition(votes, labels[:3], num_classes=3)


def test_annotator_matched_has_the_annotators_transition_but_ignores_the_image():
    data = make_data(n_train=20000)
    train = data.split == "train"
    clean, votes = data.labels[train], data.votes[train]
    real = noisy(clean, "annotator", seed=0, votes=votes)
    matched = noisy(clean, "annotator_matched", seed=0, votes=votes)
    expected = annotator_transition(votes, clean, num_classes=8)
    assert np.abs(transition_matrix(clean, matched, num_classes=8) - expected).max() < 0.02
    assert np.abs(transition_matrix(clean, real, num_classes=8) - expected).max() < 0.02
    # within a class, the real noise follows each image's own votes; the matched noise does not
    share = votes[np.arange(len(clean)), clean] / votes.sum(axis=1)
    ambiguous = share < np.quantile(share, 0.2)
    assert (real != clean)[ambiguous].mean() > (matched != clean)[ambiguous].mean() + 0.1
    assert np.array_equal(noisy(clean, "annotator_matched", seed=3, votes=votes),
                          noisy(clean, "annotator_matched", seed=3, votes=votes))


_EXAMPLE = {None: "", "rate": ":0.3", "factor": ":5"}


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_every_protocol_touches_only_the_train_split_keeps_clean_labels_and_follows_the_seed(name):
    """The contract of a registered protocol, checked over the registry (a new protocol is tested at once)."""
    data = make_data()
    spec = name + _EXAMPLE[PROTOCOLS[name]]
    out, rep = apply_noise(data, spec, seed=0)
    again, rep_again = apply_noise(data, spec, seed=0)
    assert np.array_equal(out.ids, again.ids) and np.array_equal(out.labels, again.labels) and rep == rep_again
    for split in ("valid", "test"):
        assert np.array_equal(out.ids[out.split == split], data.ids[data.split == split])
        assert np.array_equal(out.labels[out.split == split], data.labels[data.split == split])
    pos = {i: k for k, i in enumerate(data.ids)}
    assert np.array_equal(out.clean_labels, data.labels[[pos[i] for i in out.ids]]) and data.clean_labels is None
    assert rep["steps"][0]["protocol"] == name and rep["spec"] == spec
    if name != "none":
        other, _ = apply_noise(data, spec, seed=1)
        assert not (np.array_equal(other.ids, out.ids) and np.array_equal(other.labels, out.labels))


def test_spec_errors_and_help_list_every_registered_protocol():
    """The valid steps come from the registry (a hand-kept list once left out annotator_matched)."""
    with pytest.raises(ValueError) as err:
        NoiseSpec.parse("gaussian:0.3")
    for name, param in PROTOCOLS.items():
        assert (name if param is None else f"{name}:<{param}>") in str(err.value), name
    assert "annotator_matched" in PROTOCOLS and "annotator_matched" in protocol_help().split(", ")


def test_apply_noise_annotator_matched():
    data = make_data()
    _, rep = apply_noise(data, "annotator_matched", seed=0)
    real = apply_noise(data, "annotator", seed=0)[1]["train"]["overall_rate"]
    assert abs(rep["train"]["overall_rate"] - real) < 0.05
    with pytest.raises(ValueError, match="annotator_matched.*needs human vote counts"):
        apply_noise(make_data(votes=False), "annotator_matched", seed=0)


def test_apply_noise_errors():
    with pytest.raises(ValueError, match="needs human vote counts"):
        apply_noise(make_data(votes=False), "annotator", seed=0)
    data = make_data()
    data.votes[5] = 0
    with pytest.raises(ValueError, match="img00005"):
        apply_noise(data, "annotator", seed=0)
    with pytest.raises(ValueError, match="valid protocols"):
        apply_noise(make_data(), "symetric:0.3", seed=0)
    with pytest.raises(ValueError, match="no train samples"):
        apply_noise(make_data(n_train=0), "symmetric:0.1", seed=0)


def test_apply_noise_seven_classes_class_dependent():
    data = make_data(c=7, votes=False)
    assert data.classes == CLASSES_7
    out, rep = apply_noise(data, "class_dependent:0.5", seed=0)
    assert out.labels.max() < 7
    assert "contempt" not in rep["train"]["per_class_rate"]
    assert all(abs(r - 0.5) < 0.15 for r in rep["train"]["per_class_rate"].values())


def test_a_new_protocol_is_one_registered_function(monkeypatch):
    """Adding a protocol takes one decorated function: specs, validation and apply_noise accept it at once."""
    from ferlib import noise

    monkeypatch.setattr(noise._REGISTRY, "_entries", dict(noise._REGISTRY.view()))  # the protocol goes with the test

    @noise.register_noise("next_class", param="rate")
    def _next_class(given, rate, rng, context):
        """Every label moves to the next class with probability ``rate``."""
        flip = rng.random(len(given)) < rate
        return np.where(flip, (given + 1) % context.num_classes, given)

    spec = noise.NoiseSpec.parse("next_class:0.5+symmetric:0.1")
    assert str(spec) == "next_class:0.5+symmetric:0.1"
    assert "next_class:<rate>" in noise.protocol_help()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        noise.NoiseSpec.parse("next_class:2")
    rng = np.random.default_rng(0)
    n = 400
    data = FERData(images=np.zeros((n, 4, 4, 1), np.uint8), labels=rng.integers(0, 8, n), split=np.full(n, "train"),
                   ids=np.arange(n).astype(str), classes=CLASSES_8)
    out, report = noise.apply_noise(data, "next_class:0.5", seed=0)
    moved = out.labels != out.clean_labels
    assert 0.4 < moved.mean() < 0.6 and np.all(out.labels[moved] == (out.clean_labels[moved] + 1) % 8)
    assert report["steps"] == [{"protocol": "next_class", "rate": 0.5}]
    with pytest.raises(ValueError, match="already registered"):
        noise.register_noise("next_class")(_next_class)
