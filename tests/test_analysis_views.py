"""The study's views: every figure takes its colours from ferlib.analysis.style (one colour and marker per method,
the oracle grey and dashed, CE on the clean labels the reference line), every method of the grid is in each
figure, accuracies are drawn in %, and the numbers behind the views are right (Wilson intervals, the human votes
of flipped faces, the real-against-synthetic pairs, the final fit of the training labels, the best rankings)."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferlib import analysis
from ferlib.analysis import plots, style
from ferlib.analysis.runs import RunRecord

pytest.importorskip("matplotlib")

#: The plotting functions that draw methods: they take ``style`` (a method -> matplotlib keywords map).
METHOD_PLOTS = ("plot_by_noise", "plot_noise_curve", "plot_seed_curves", "plot_class_accuracy", "plot_differences",
                "plot_ablations")
GRID = ("ce", "nla", "ldlva", "scn", "gce")  # ldlva with the study-wide option neighbours=bank, as in cpu_memorise


def _hex(colour) -> str:
    from matplotlib.colors import to_hex

    return to_hex(colour)


def _legend(fig) -> dict[str, str]:
    """Legend label -> colour of its handle (line, marker or bar) over every legend of ``fig``."""
    out = {}
    for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]:
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            colour = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
            out[text.get_text()] = _hex(colour)
    return out


def _fake_style(name: str) -> dict:
    """A colour per method unlike any of style.py's, to see that a plot draws what it is given."""
    k = style.method_order(GRID + ("ldl_votes",)).index(style.method_of(name)) if style.method_of(name) in (
        *GRID, "ldl_votes") else 9
    return {"color": f"#0{k}0{k}0{k}", "marker": "o", "linestyle": "-"}


def _results() -> pd.DataFrame:
    rows = []
    for seed in (0, 1, 2):
        for k, method in enumerate(GRID):
            for noise, drop in (("symmetric:0.2", 0.05), ("symmetric:0.4", 0.15), ("annotator", 0.04)):
                rows.append({"method": method, "noise": noise, "seed": seed, "oracle": False,
                             "last.acc": 0.6 + 0.02 * k - drop + 0.01 * seed, "last.mean_acc": 0.4 + 0.01 * k,
                             "best.acc": 0.62 + 0.02 * k})
        rows.append({"method": "ce", "noise": "none", "seed": seed, "oracle": False, "last.acc": 0.68,
                     "last.mean_acc": 0.45, "best.acc": 0.69})
        for noise in ("symmetric:0.2", "symmetric:0.4", "annotator"):
            rows.append({"method": "ldl_votes", "noise": noise, "seed": seed, "oracle": True, "last.acc": 0.70,
                         "last.mean_acc": 0.49, "best.acc": 0.71})
    df = pd.DataFrame(rows)
    df["method_options.neighbours"] = df["method"].map({"ldlva": "bank"})  # NaN for the others
    df["dataset"] = "ferplus"
    return df


def _curves() -> pd.DataFrame:
    rows = [{"run_id": f"{m}-{n}-{s}", "method": m, "oracle": m == "ldl_votes", "noise": n, "seed": s, "start": "ssl",
             "epoch": e, "test_acc": 0.5 + 0.01 * e, "test_mean_acc": 0.3, "valid_acc": 0.5, "train_loss": 1.0 / e}
            for m in (*GRID, "ldl_votes") for n in ("symmetric:0.3", "annotator") for s in (0, 1) for e in (1, 2, 3)]
    rows += [{**r, "method": "ce", "noise": "none", "run_id": "ce-none"} for r in rows[:6]]
    return analysis.curve_summary(pd.DataFrame(rows))


def _class_frame() -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "noise": "annotator", "class": c, "n": n, "acc_mean": 0.5, "low": 0.3,
                          "high": 0.7} for m in (*GRID, "ldl_votes (oracle)")
                         for c, n in (("neutral", 1250), ("disgust", 20))])


def _comparison() -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "metric": "last.acc", "mean_diff": 0.02, "std_diff": 0.01, "wins": 3,
                          "n_pairs": 3, "p_value": 0.04, "verdict": "supported gain"} for m in GRID])


def _ablations() -> pd.DataFrame:
    """ablation_comparison's rows: variant no_x of every method at symmetric noise, all but CE's at annotator."""
    return pd.DataFrame([{**r, "variant": "no_x", "noise": n} for n in ("symmetric:0.3", "annotator")
                         for r in _comparison().to_dict("records") if n != "annotator" or r["method"] != "ce"])


def _figures(style_map) -> dict:
    """Each plotting function of methods on data holding every method of GRID, drawn with ``style_map``."""
    table = analysis.summary_table(_results(), metrics=("acc", "mean_acc"))
    return {"plot_by_noise": plots.plot_by_noise(table, style=style_map),
            "plot_noise_curve": plots.plot_noise_curve(table, style=style_map),
            "plot_seed_curves": plots.plot_seed_curves(_curves(), style=style_map),
            "plot_class_accuracy": plots.plot_class_accuracy(_class_frame(), style=style_map),
            "plot_differences": plots.plot_differences(_comparison(), style=style_map),
            "plot_ablations": plots.plot_ablations(_ablations(), style=style_map)}


def test_the_ablation_plot_has_a_panel_per_noise_with_the_same_rows_and_leaves_a_missing_pair_empty():
    fig = plots.plot_ablations(_ablations())
    sym, ann = fig.axes[:2]
    assert [ax.get_title() for ax in (sym, ann)] == ["30% symmetric", "real annotator"]
    rows = [t.get_text() for t in sym.get_yticklabels()]
    assert rows == [t.get_text() for t in ann.get_yticklabels()] and len(rows) == len(GRID)
    assert (len(sym.patches), len(ann.patches)) == (len(GRID), len(GRID) - 1)  # CE has no pair at annotator
    assert sym.get_shared_x_axes().joined(sym, ann)


# ----------------------------------------------------------------------------------- colours
def test_plots_spell_no_colour_of_their_own():
    """Every colour plots.py draws comes from style.py: no colour or colour-map name in its source, but black and
    white text on heatmaps, and the grey colour map of the face images themselves."""
    from matplotlib.colors import is_color_like

    tree = ast.parse(inspect.getsource(plots))
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    allowed = {"black", "white", "gray", "none", "x", "y"}  # "none": a line style and a noise; "y" is yellow too
    assert sorted(s for s in strings if is_color_like(s) and s not in allowed) == []
    cmaps = [k.value.value for k in ast.walk(tree) if isinstance(k, ast.keyword) and k.arg == "cmap"
             and isinstance(k.value, ast.Constant)]
    assert set(cmaps) <= {"gray"}


def test_every_plot_of_methods_takes_the_shared_colour_map_by_default():
    for name in plots.__all__:
        params = inspect.signature(getattr(plots, name)).parameters
        if name in METHOD_PLOTS:
            assert params["style"].default is style.method_style, name


@pytest.mark.parametrize("name", METHOD_PLOTS)
def test_every_method_of_the_grid_is_drawn_in_the_colour_it_is_given(name):
    """LDLVA too, whose runs carry the study-wide option neighbours=bank (once left out as a 'variant')."""
    fig = _figures(_fake_style)[name]
    if name in ("plot_differences", "plot_ablations"):  # one bar per method (variant), named by its tick
        ax = fig.axes[0]
        ticks = {round(t.get_position()[1]): t.get_text().removesuffix(" no_x") for t in ax.get_yticklabels()}
        drawn = {ticks[round(p.get_y() + p.get_height() / 2)]: _hex(p.get_facecolor()) for p in ax.patches}
    else:
        drawn = _legend(fig)
    for method in GRID:
        assert drawn.get(style.method_label(method)) == _fake_style(method)["color"], (name, method, drawn)
    assert not any("neighbours" in label for label in drawn)  # a study-wide option is no variant


def test_default_colours_are_style_py_s_and_the_oracle_grey_and_dashed():
    drawn = _legend(_figures(style.method_style)["plot_seed_curves"])
    for method in GRID:
        assert drawn[style.method_label(method)] == _hex(style.method_style(method)["color"])
    oracle = [line for line in _figures(style.method_style)["plot_seed_curves"].axes[0].get_lines()
              if line.get_label() == style.method_label("ldl_votes")]
    assert oracle and all(line.get_linestyle() == "--" and _hex(line.get_color()) == _hex(style.ORACLE_STYLE["color"])
                          for line in oracle)


def test_accuracy_by_noise_in_percent_on_a_categorical_axis_with_reference_lines():
    fig = plots.plot_by_noise(analysis.summary_table(_results(), metrics=("acc", "mean_acc")))
    ax = fig.axes[0]
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["real annotator", "20% symmetric", "40% symmetric"]
    assert all(t.get_text().endswith("%") for t in ax.get_yticklabels() if t.get_text())
    labels = _legend(fig)
    clean = [k for k in labels if k.startswith("CE on the clean labels")]
    oracle = [k for k in labels if k.startswith("oracle (human votes)")]
    assert clean == ["CE on the clean labels (68.0%)"]  # the control: a line, not a category of one bar
    assert oracle == ["oracle (human votes), reads no noisy label (70.0%)"]  # once, not at every noise
    assert _hex(labels[clean[0]]) == _hex(style.REFERENCE_STYLE["color"])


def test_noise_curve_needs_a_protocol_at_two_levels():
    table = analysis.summary_table(_results()[lambda d: d["noise"] != "symmetric:0.4"], metrics=("acc",))
    with pytest.raises(ValueError, match="two levels"):
        plots.plot_noise_curve(table)


def test_detection_figure_draws_every_ranking_and_marks_dmue_s_score():
    rows = [{"method": m, "noise": "annotator", "start": "ssl", "ranking": r, "auroc_mean": 0.8, "auroc_std": 0.01,
             "ap_mean": 0.5, "ap_std": 0.01, "rate_mean": 0.23, "rate_std": 0.0}
            for m in ("ce", "nla", "dmue") for r in ("score", "loss", "neg_margin", "neg_aum")]
    rows.append({**rows[0], "method": "cleanlab", "ranking": "1 - self_confidence"})
    fig = plots.plot_detection(pd.DataFrame(rows))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["CE", "NLA", "DMUE", "cleanlab"]
    assert set(_legend(fig)) == {"own score", "AUM", "loss", "margin", "cleanlab", "chance"}
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1 and [t.get_text() for t in ax.texts] == ["not a detector"]


def test_embedding_grid_has_a_panel_per_noise_and_method_titled_in_its_colour():
    rng = np.random.default_rng(0)
    groups = np.array(["clean", "memorised", "recovered", "other"] * 5)
    panels = {(n, m): (rng.normal(size=(20, 2)), groups) for n in ("symmetric:0.3", "annotator") for m in GRID}
    fig = plots.plot_embedding_grid(panels)
    titles = {ax.get_title(): _hex(ax.title.get_color()) for ax in fig.axes if ax.get_title()}
    assert titles == {style.method_label(m): _hex(style.method_style(m)["color"]) for m in GRID}
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["30% symmetric", "real annotator"]
    assert fig.axes[0].get_xlabel() == "memorised 33%, recovered 33%"  # of the flipped faces


def test_dmue_s_score_is_named_no_detector_wherever_it_is_listed():
    assert style.ranking_label("score", "dmue") == "own score (not a detector)"
    assert style.ranking_label("score", "nla") == "own score" and style.ranking_label("neg_aum", "dmue") == "AUM"


def test_method_order_puts_the_baseline_first_and_the_oracle_last():
    assert style.method_order(["scn", "ldl_votes (oracle)", "ce", "newmethod", "nla", "ce"]) == \
        ["ce", "nla", "scn", "newmethod", "ldl_votes (oracle)"]


# ----------------------------------------------------------------------------------- numbers behind the views
def test_wilson_interval_known_values():
    low, high = analysis.wilson_interval(np.array([0, 10, 20]), np.array([20, 20, 20]))
    assert low == pytest.approx([0.0, 0.2993, 0.8389], abs=1e-4)
    assert high == pytest.approx([0.1611, 0.7007, 1.0], abs=1e-4)
    assert np.isnan(analysis.wilson_interval(0, 0)[0])


def test_vote_statistics_of_the_given_label():
    votes = np.array([[10, 0, 0], [5, 3, 2], [4, 4, 2], [6, 4, 0]])
    s = analysis.vote_statistics(votes, np.array([0, 1, 1, 2]))
    assert s["entropy"] == pytest.approx([0.0, -(0.5 * np.log2(0.5) + 0.3 * np.log2(0.3) + 0.2 * np.log2(0.2)),
                                          -(2 * 0.4 * np.log2(0.4) + 0.2 * np.log2(0.2)),
                                          -(0.6 * np.log2(0.6) + 0.4 * np.log2(0.4))])
    assert s["plurality_share"] == pytest.approx([1.0, 0.5, 0.4, 0.6])
    assert s["given_voted"].tolist() == [True, True, True, False]
    # runner-up: second-most votes and not the plurality (a tie with the plurality is the plurality)
    assert s["given_runner_up"].tolist() == [False, True, False, False]


def _vote_faces(seeds, *, real_on_ambiguous: bool = True) -> pd.DataFrame:
    """Real flips on the faces whose votes split 5/5, synthetic ones on unanimous faces (or the reverse)."""
    votes = np.array([[10, 0]] * 50 + [[5, 5]] * 50)
    clean = np.zeros(100, int)
    on_split, on_unanimous = np.arange(50, 70), np.arange(0, 20)
    real, synthetic = (on_split, on_unanimous) if real_on_ambiguous else (on_unanimous, on_split)
    parts = []
    for seed in seeds:
        for noise, rows in (("annotator", real), ("annotator_matched", synthetic)):
            given = clean.copy()
            given[rows] = 1
            parts.append(analysis.vote_frame(votes, given, clean, noise=noise, seed=seed))
    return pd.concat(parts, ignore_index=True)


def test_ambiguity_verdict_follows_the_seeds():
    supported = analysis.ambiguity_verdict(_vote_faces([0, 1, 2]))
    assert supported["verdict"] == "supported" and supported["text"].startswith("Supported")
    assert supported["real_entropy"] == pytest.approx(1.0) and supported["synthetic_entropy"] == 0.0
    assert analysis.ambiguity_verdict(_vote_faces([0, 1, 2], real_on_ambiguous=False))["verdict"] == "rejected"
    assert analysis.ambiguity_verdict(_vote_faces([0]))["verdict"] == "too few seeds"
    assert analysis.ambiguity_verdict(_vote_faces([0]).query("noise == 'annotator'"))["verdict"] == "no data"


def test_vote_summary_compares_the_flipped_faces_with_all_faces():
    summary = analysis.flip_vote_summary(_vote_faces([0, 1]))
    assert summary[["noise", "faces"]].values.tolist() == [
        ["annotator", "flipped"], ["annotator", "all"], ["annotator_matched", "flipped"], ["annotator_matched", "all"]]
    assert summary["n"].tolist() == [20, 100, 20, 100] and summary["entropy"].tolist() == [1.0, 0.5, 0.0, 0.5]
    shown = analysis.format_vote_summary(summary)
    assert shown["noise"].tolist()[::2] == ["real annotator", "synthetic twin"]
    assert shown["vote entropy (bits)"].tolist() == ["1.00", "0.50", "0.00", "0.50"]
    assert shown["given label had a vote, %"].tolist() == ["100.0", "100.0", "0.0", "80.0"]


def test_noise_contrast_pairs_each_method_with_itself_seed_by_seed():
    rows = [{"method": m, "noise": n, "seed": s, "oracle": m == "ldl_votes", "last.acc": acc + 0.01 * s,
             "last.mean_acc": 0.4, "best.acc": 0.6}
            for m in ("ce", "ldl_votes") for s in (0, 1, 2)
            for n, acc in (("annotator", 0.60 + 0.005 * s), ("annotator_matched", 0.55))]
    out = analysis.noise_contrast(pd.DataFrame(rows))
    (row,) = out[out["metric"] == "last.acc"].to_dict("records")
    assert row["method"] == "ce" and row["n_pairs"] == 3 and row["wins"] == 3  # the oracle reads no noisy label
    assert row["mean_diff"] == pytest.approx(0.055) and row["verdict"] == "supported: higher"


def _readout() -> dict:
    given = np.array([0, 1, 2, 1, 1, 0])
    clean = np.array([0, 1, 2, 0, 0, 2])
    logits = np.eye(3)[[0, 1, 2, 1, 0, 1]]  # face 3 memorised, 4 recovered, 5 neither
    return {"given": given, "clean": clean, "train_logits": logits}


def test_fit_table_and_fit_groups_of_the_final_model():
    run = RunRecord(path=Path("r"), result={"run_id": "r", "method": "ce", "noise": "x", "seed": 0},
                    epochs=pd.DataFrame(), readout=_readout())
    (row,) = analysis.fit_table([run]).to_dict("records")
    assert row["train_acc_given"] == pytest.approx(4 / 6) and row["train_acc_clean"] == pytest.approx(4 / 6)
    assert row["memorised"] == pytest.approx(1 / 3) and row["recovered"] == pytest.approx(1 / 3)
    assert analysis.fit_groups(_readout()).tolist() == ["clean", "clean", "clean", "memorised", "recovered", "other"]


def test_best_rankings_leave_out_oracles_and_non_detectors():
    rows = [{"method": m, "noise": "annotator", "start": "ssl", "ranking": r, "n_seeds": 3, "auroc_mean": a,
             "auroc_std": 0.0, "ap_mean": a - 0.2, "ap_std": 0.0, "rate_mean": 0.23, "rate_std": 0.0}
            for m, r, a in (("ce", "score", 0.7), ("ce", "neg_aum", 0.8), ("nla", "neg_aum", 0.85),
                            ("dmue", "score", 0.95), ("ldl_votes (oracle)", "score", 0.99))]
    best = analysis.best_rankings(pd.DataFrame(rows))
    assert best[["ranking", "method", "best"]].values.tolist() == [["neg_aum", "nla", True], ["score", "ce", False]]
    (line,) = analysis.best_ranking_words(best)
    assert line.startswith("real annotator: AUM of NLA finds the flipped labels best, AUROC 0.850")


def test_best_methods_per_noise_leave_out_the_oracle_and_the_clean_control():
    best = analysis.best_methods(analysis.summary_table(_results(), metrics=("acc", "mean_acc")))
    assert best["noise"].tolist() == ["annotator", "symmetric:0.2", "symmetric:0.4"]
    assert set(best["method"]) == {"gce"}  # the highest of GRID in _results(); the oracle's 70% left out
    assert (best["last.acc_mean"] > best["baseline_mean"]).all()


# ----------------------------------------------------------------------------------- the committed study's figures
EVIDENCE = Path(__file__).resolve().parents[1] / "reports" / "evidence" / "cpu_memorise" / "runs"


@pytest.mark.skipif(not EVIDENCE.is_dir(), reason="the committed cpu_memorise cells are missing")
def test_every_method_of_the_cpu_memorise_grid_is_in_each_figure_of_it():
    """On the committed cells: every method of the profile's grid is drawn in accuracy by noise (LDLVA, whose
    runs carry neighbours=bank, once was not), the learning curves and the detection figure."""
    from ferlib.rundir import collect_results
    from ferlib.study import load_profile

    grid = load_profile("cpu_memorise").grid.methods
    names = {style.method_label(m) for m in grid}
    by_noise = _legend(plots.plot_by_noise(analysis.summary_table(collect_results(EVIDENCE))))
    assert {k.split(",")[0] for k in by_noise} >= names  # the oracle's line: "oracle (human votes), reads ..."
    assert names <= set(_legend(plots.plot_seed_curves(analysis.curve_summary(analysis.epoch_table(EVIDENCE)))))
    detection = plots.plot_detection(analysis.detection_summary(analysis.uncertainty_table(EVIDENCE)))
    for ax in detection.axes:
        assert names <= {t.get_text().replace("\n", " ") for t in ax.get_xticklabels()}  # long names on two lines
