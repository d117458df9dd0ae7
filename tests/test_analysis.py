"""ferlib.analysis on hand-made arrays and tables (the notebooks' logic; the notebooks themselves run in
test_notebooks.py)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ferlib import analysis


# ----------------------------------------------------------------------------------- divergences
def test_js_divergence_identical_is_zero_and_symmetric():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(8), size=50)
    q = rng.dirichlet(np.ones(8), size=50)
    np.testing.assert_allclose(analysis.js_divergence(p, p), 0.0, atol=1e-12)
    np.testing.assert_allclose(analysis.js_divergence(p, q), analysis.js_divergence(q, p), rtol=1e-12)
    js = analysis.js_divergence(p, q)
    assert (js > 0).all() and (js <= math.log(2) + 1e-12).all()
    # disjoint supports reach the bound log 2
    np.testing.assert_allclose(analysis.js_divergence([[1, 0]], [[0, 1]]), [math.log(2)])


def test_kl_divergence_positive_for_different_and_zero_for_equal():
    p = np.array([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    q = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]])
    kl = analysis.kl_divergence(p, q)
    assert (kl > 0).all()
    np.testing.assert_allclose(kl[1], 0.5 * math.log(2) * 2)  # 2 x 0.5 log(0.5 / 0.25); the zero term drops out
    np.testing.assert_allclose(analysis.kl_divergence(p, p), 0.0, atol=1e-12)
    # counts are normalised per row
    np.testing.assert_allclose(analysis.kl_divergence(p * 10, q), kl)


def test_divergences_validate_shapes():
    with pytest.raises(ValueError, match="same shape"):
        analysis.js_divergence(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        analysis.kl_divergence([[-1.0, 2.0]], [[0.5, 0.5]])


def test_label_distribution_metrics():
    votes = np.array([[8, 2, 0], [0, 10, 0], [0, 0, 0], [1, 1, 8]], dtype=float)  # row 2 has no vote: left out
    exact = votes / np.maximum(votes.sum(1, keepdims=True), 1)
    exact[2] = [1, 0, 0]
    m = analysis.label_distribution_metrics(exact, votes, majority=np.array([0, 1, 0, 2]))
    assert m["n"] == 3 and m["top1"] == 1.0
    assert m["kl"] == pytest.approx(0.0, abs=1e-9) and m["js"] == pytest.approx(0.0, abs=1e-9)
    uniform = np.full((4, 3), 1 / 3)
    m2 = analysis.label_distribution_metrics(uniform, votes, majority=np.array([0, 1, 0, 2]))
    assert m2["kl"] > 0.3 and 0 < m2["js"] < math.log(2)
    assert m2["top1"] == pytest.approx(1 / 3)  # argmax of a uniform row is class 0


def test_recovered_distribution_prefers_method_target():
    logits = np.array([[2.0, 0.0], [0.0, 2.0]])
    dist, source = analysis.recovered_distribution({"train_logits": logits})
    assert source == "softmax(train_logits)"
    np.testing.assert_allclose(dist.sum(1), 1.0)
    assert dist[0, 0] > 0.8
    target = np.array([[0.2, 0.8], [0.6, 0.4]])
    dist, source = analysis.recovered_distribution({"train_logits": logits, "method_target": target})
    assert source == "method_target"
    np.testing.assert_allclose(dist, target)


def test_choose_faces_puts_mislabelled_first():
    readout = {"given": np.array([0, 1, 2, 3, 0, 1]), "clean": np.array([0, 2, 2, 1, 0, 1])}
    idx = analysis.choose_faces(readout, 4)
    assert sorted(idx[:2]) == [1, 3] and len(idx) == 4 and len(set(idx)) == 4


# ----------------------------------------------------------------------------------- detection
def test_detection_auroc_perfect_and_random():
    rng = np.random.default_rng(0)
    flipped = rng.random(4000) < 0.3
    perfect = analysis.detection_metrics(flipped + rng.random(4000) * 0.5, flipped)
    assert perfect["auroc"] == 1.0 and perfect["ap"] == pytest.approx(1.0) and perfect["p_at_n"] == 1.0
    assert perfect["n_flipped"] == flipped.sum() and perfect["rate"] == pytest.approx(flipped.mean())
    rand = analysis.detection_metrics(rng.random(4000), flipped)
    assert rand["auroc"] == pytest.approx(0.5, abs=0.03)
    assert rand["ap"] == pytest.approx(flipped.mean(), abs=0.03)
    worst = analysis.detection_metrics(-flipped.astype(float), flipped)
    assert worst["auroc"] == 0.0


def test_detection_handles_nan_scores_and_degenerate_labels():
    score = np.array([0.9, np.nan, 0.1, 0.8, 0.2])  # the NaN takes the median of the others, 0.5
    out = analysis.detection_metrics(score, np.array([1, 0, 0, 1, 0]))
    assert out["n_missing"] == 1 and out["auroc"] == 1.0
    none_flipped = analysis.detection_metrics(np.arange(5.0), np.zeros(5, bool))
    assert math.isnan(none_flipped["auroc"]) and none_flipped["n_flipped"] == 0
    with pytest.raises(ValueError, match="same length"):
        analysis.detection_metrics(np.ones(3), np.ones(4, bool))


def test_flag_metrics():
    out = analysis.flag_metrics([1, 1, 0, 0, 1], np.array([True, False, True, False, True]))
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(2 / 3)
    assert out["n_flagged"] == 3 and out["f1"] == pytest.approx(2 / 3)
    assert math.isnan(analysis.flag_metrics(np.zeros(3, bool), np.ones(3, bool))["precision"])


def test_extreme_samples_order_and_nan():
    readout = {"method_score": np.array([0.5, np.nan, 2.0, -1.0, 1.0]), "ids": np.array(list("abcde")),
               "given": np.array([0, 1, 1, 0, 2]), "clean": np.array([0, 1, 0, 0, 2])}
    table = analysis.extreme_samples(readout, 2)
    most, least = table[table.end == "most"], table[table.end == "least"]
    assert list(most["id"]) == ["c", "e"] and list(least["id"]) == ["d", "a"]
    assert bool(most.iloc[0]["flipped"]) and "b" not in set(table["id"])


def test_cleanlab_flags_the_flipped_labels():
    """A real call of cleanlab: confident, correct out-of-sample probabilities find injected flips."""
    rng = np.random.default_rng(0)
    n, k = 600, 4
    clean = rng.integers(0, k, n)
    probs = np.full((n, k), 0.05)
    probs[np.arange(n), clean] = 0.85
    probs /= probs.sum(1, keepdims=True)
    flipped = rng.random(n) < 0.2
    given = np.where(flipped, (clean + 1) % k, clean)
    issues = analysis.cleanlab_issues(given, probs)
    scores = analysis.cleanlab_scores(given, probs)
    assert issues.shape == (n,) and issues.dtype == bool
    flags = analysis.flag_metrics(issues, flipped)
    assert flags["recall"] > 0.9 and flags["precision"] > 0.9
    assert analysis.detection_metrics(scores, flipped)["auroc"] > 0.95
    with pytest.raises(ValueError, match="non-finite"):
        analysis.cleanlab_issues(given, np.full((n, k), np.nan))


# ----------------------------------------------------------------------------------- tables
def _results_frame() -> pd.DataFrame:
    rows = [
        # method, noise, seed, last.acc, last.mean_acc, best.acc, oracle, time
        ("ce", "symmetric:0.3", 0, 0.50, 0.40, 0.55, False, 10.0),
        ("ce", "symmetric:0.3", 1, 0.70, 0.60, 0.75, False, 12.0),
        ("ce", "none", 0, 0.80, 0.70, 0.82, False, 11.0),
        ("nla", "symmetric:0.3", 0, 0.60, 0.50, 0.65, False, 22.0),
        ("nla", "symmetric:0.3", 1, 0.64, 0.52, 0.66, False, 22.0),
        ("nla", "symmetric:0.3", 2, 0.68, 0.54, 0.70, False, 22.0),
        ("ldl_votes", "symmetric:0.3", 0, 0.90, 0.80, 0.91, True, 11.0),
    ]
    df = pd.DataFrame(rows, columns=["method", "noise", "seed", "last.acc", "last.mean_acc", "best.acc", "oracle",
                                     "time_per_epoch_s"])
    df["dataset"] = "ferplus"
    df["device"] = "cpu"
    return df


def test_summary_table_mean_std_over_seeds():
    table = analysis.summary_table(_results_frame(), metrics=("acc", "mean_acc"))
    assert len(table) == 4
    ce = table[(table.method == "ce") & (table.noise == "symmetric:0.3")].iloc[0]
    assert ce["n_seeds"] == 2 and ce["seeds"] == "0,1"
    assert ce["last.acc_mean"] == pytest.approx(0.60)
    assert ce["last.acc_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert ce["last.mean_acc_mean"] == pytest.approx(0.50)
    assert ce["best.acc_mean"] == pytest.approx(0.65)
    assert ce["protocol"] == "symmetric" and ce["rate"] == pytest.approx(0.3) and ce["variant"] == ""
    nla = table[table.method == "nla"].iloc[0]
    assert nla["n_seeds"] == 3 and nla["last.acc_mean"] == pytest.approx(0.64)
    assert nla["last.acc_std"] == pytest.approx(0.04)
    single = table[(table.method == "ce") & (table.noise == "none")].iloc[0]
    assert single["rate"] == 0.0 and math.isnan(single["last.acc_std"])
    assert bool(table[table.method == "ldl_votes"].iloc[0]["oracle"])
    assert list(table["oracle"]) == [False, False, False, True]  # oracle rows last
    assert list(table["n_runs"]) == list(table["n_seeds"])
    shown = analysis.format_summary(table)
    assert shown.loc[ce.name, "last.acc"] == "60.0 ± 14.1"
    assert shown.loc[single.name, "last.acc"] == "80.0"
    assert "oracle (human votes)" in set(shown["method"]) and set(shown["noise"]) >= {"30% symmetric"}


def test_summary_table_separates_method_option_variants():
    df = _results_frame().iloc[:2].copy()
    extra = df.copy()
    extra["method_options.label_smoothing"] = 0.1
    df["method_options.label_smoothing"] = np.nan
    table = analysis.summary_table(pd.concat([df, extra], ignore_index=True), metrics=("acc",))
    assert sorted(table["variant"]) == ["", "label_smoothing=0.1"]
    with pytest.raises(ValueError, match="last.acc"):
        analysis.summary_table(df.drop(columns="last.acc"))


def test_summary_table_separates_run_settings():
    df = _results_frame().iloc[:2].copy()
    df["epochs"] = 30
    longer = df.copy()
    longer["epochs"] = 40
    table = analysis.summary_table(pd.concat([df, longer], ignore_index=True), metrics=("acc",))
    assert list(table["epochs"]) == [30, 40] and list(table["n_seeds"]) == [2, 2]


@pytest.mark.parametrize("spec, expected", [
    ("symmetric:0.3", ("symmetric", 0.3)),
    ("none", ("none", 0.0)),
    ("imbalance:20+symmetric:0.3", ("imbalance:20+symmetric", 0.3)),
    ("imbalance:50", ("imbalance", 50.0)),
])
def test_parse_noise(spec, expected):
    assert analysis.parse_noise(spec) == expected


def test_parse_noise_without_level():
    protocol, rate = analysis.parse_noise("annotator")
    assert protocol == "annotator" and math.isnan(rate)


def test_timing_table_relative_to_ce():
    table = analysis.timing_table(_results_frame()).set_index("method")
    assert table.loc["ce", "time_per_epoch_s"] == pytest.approx(11.0)
    assert table.loc["ce", "ratio_to_ce"] == pytest.approx(1.0)
    assert table.loc["nla", "ratio_to_ce"] == pytest.approx(2.0)
    assert table.loc["nla", "n_runs"] == 3


def test_noise_table_from_report():
    from ferlib.noise import noise_report

    report = {"train": noise_report(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), class_names=["a", "b"])}
    table = analysis.noise_table(report)
    assert list(table.index) == ["a", "b"]
    assert table.loc["a", "flip_rate"] == 0.5 and table.loc["b", "noisy_count"] == 3


def test_plots_return_figures():
    from matplotlib.figure import Figure

    names = ["a", "b", "c"]
    assert isinstance(analysis.plot_confusion(np.eye(3) * 5, names), Figure)
    assert isinstance(analysis.plot_transition(np.eye(3), names), Figure)
    epochs = pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.5], "valid_acc": [0.3, 0.4], "test_acc": [0.3, 0.5]})
    assert isinstance(analysis.plot_learning_curves(epochs), Figure)
    faces = np.zeros((5, 8, 8, 1), np.uint8)
    fig = analysis.face_grid(faces, list("abcde"), ncols=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    table = analysis.summary_table(_results_frame(), metrics=("acc",))
    assert isinstance(analysis.plot_by_noise(table), Figure)  # one level: plot_noise_curve has nothing to draw
    fig = analysis.plot_distributions(faces[:2], {"votes": np.full((2, 3), 1 / 3), "ce": np.eye(3)[:2]}, names)
    for ax in fig.axes[1::2]:  # every face's bar panel names the classes, not only the last one
        assert [t.get_text() for t in ax.get_xticklabels()] == names


def test_bar_chart_legend_stands_beside_the_bars_not_over_them():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    frame = pd.DataFrame({"noise": ["a", "a", "b", "b"] * 4, "method": [f"m{i}" for i in range(8)] * 2,
                          "acc": np.full(16, 0.99)})  # full-height bars fill the axes' upper left corner
    fig = analysis.plot_bars(frame, x="noise", y="acc", hue="method", ylim=(0, 1))
    FigureCanvasAgg(fig).draw()  # the constrained layout places the legend when the figure is drawn
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [f"m{i}" for i in range(8)]
    assert not legend.get_window_extent().overlaps(fig.axes[0].get_window_extent())


# ----------------------------------------------------------------------------------- data helpers
def _tiny_data():
    from ferlib.data.dataset import FERData

    rng = np.random.default_rng(0)
    n = 12
    labels = np.array([0, 1, 2] * 4)
    return FERData(images=rng.integers(0, 255, (n, 8, 8, 1), dtype=np.uint8), labels=labels,
                   split=np.array(["train"] * 9 + ["test"] * 3), ids=np.array([f"img{i}" for i in range(n)]),
                   classes=("neutral", "happiness", "surprise"), votes=np.eye(3, dtype=np.float32)[labels] * 10,
                   name="tiny")


def test_sample_faces_and_images_by_id():
    data = _tiny_data()
    images, titles, rows = analysis.sample_faces(data, 2)
    assert images.shape == (6, 8, 8, 1) and titles == ["neutral"] * 2 + ["happiness"] * 2 + ["surprise"] * 2
    assert (data.split[rows] == "train").all()
    np.testing.assert_array_equal(analysis.images_by_id(data, ["img3", "img0"]), [3, 0])
    with pytest.raises(KeyError, match="1 of 2 id"):
        analysis.images_by_id(data, ["img3", "nope"])


def test_landmarks_and_va_sources_can_be_skipped():
    data = _tiny_data()
    lm, images, message = analysis.try_landmarks(data, backend="none", limit=4)
    assert lm is None and images.shape[0] == 4 and "skipped" in message
    va, labels, message = analysis.va_values(data, "none")
    assert va is None and len(labels) == 9
    va, labels, message = analysis.va_values(data, "auto")  # votes -> the oracle projection, labelled so
    assert va.shape == (9, 2) and message.startswith("ORACLE")
    assert analysis.va_summary(va, labels, data.classes)["n"].tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="unknown va source"):
        analysis.va_values(data, "magic")


def test_try_landmarks_counts_failed_faces_in_its_message_not_in_a_warning(tmp_path):
    import warnings

    data = _tiny_data()
    data.images[:2] = 0  # blank images: no face
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would print in the rendered 00_prepare_data
        lm, images, message = analysis.try_landmarks(data, backend="dlib", limit=4, cache_dir=tmp_path)
    assert lm.ok.tolist() == [False, False, True, True]
    assert message == "dlib: 2/4 faces with a plausible shape; the other 2 failed and hold the mean shape (ok=False)"
