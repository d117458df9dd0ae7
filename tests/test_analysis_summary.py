"""Tests of the study's answer tables (ferlib.analysis.answer): starts kept apart, seed-paired comparisons and
their verdicts, the memorisation drop, per-class gains, the init contrast and the findings in words."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ferlib import analysis
from ferlib.rundir import RunWarning

CE = np.array([0.50, 0.60, 0.55])
#: method -> per-seed difference from CE on last.acc (seeds 0, 1, 2)
DIFFS = {"nla": [0.05, 0.051, 0.049],     # same sign, tight: supported gain
         "gce": [-0.03, -0.031, -0.029],  # supported loss
         "lanet": [0.02, -0.01, 0.03],    # signs differ
         "rul": [0.01, 0.05, 0.002]}      # same sign, too spread: not significant


def _row(method, seed, acc, *, noise="symmetric:0.3", weights="ssl", oracle=False, mean_acc=None):
    return {"method": method, "noise": noise, "seed": seed, "oracle": oracle, "backbone.weights": weights,
            "dataset": "ferplus", "epochs": 30, "last.acc": acc, "last.mean_acc": acc - 0.1 if mean_acc is None
            else mean_acc, "best.acc": acc + 0.05}


def _results() -> pd.DataFrame:
    rows = [_row("ce", s, a) for s, a in enumerate(CE)]
    rows += [_row(m, s, a + d) for m, diffs in DIFFS.items() for s, (a, d) in enumerate(zip(CE, diffs))]
    rows += [_row("nla", 3, 0.9),                                  # no CE run of seed 3: not a pair
             _row("ldl_votes", 0, 0.9, oracle=True),              # an oracle: never compared
             _row("ldlva", 0, 0.7, weights=None)]                 # random start: CE has none there
    return pd.DataFrame(rows)


def _run(root: Path, rid: str, method: str, seed: int, test_acc: list[float], *, weights=None,
         noise="symmetric:0.3", oracle=False, options=None) -> None:
    folder = root / rid
    folder.mkdir(parents=True)
    result = {"run_id": rid, "method": method, "oracle": oracle, "noise": noise, "seed": seed, "dataset": "ferplus",
              "backbone": {"name": "resnet18", "weights": weights}, "method_options": options or {},
              "last": {"acc": test_acc[-1], "mean_acc": test_acc[-1] - 0.1}}
    (folder / "result.json").write_text(json.dumps(result))
    pd.DataFrame({"epoch": range(1, len(test_acc) + 1), "test_acc": test_acc,
                  "train_loss": np.linspace(2.0, 0.1, len(test_acc))}).to_csv(folder / "epochs.csv", index=False)


# ----------------------------------------------------------------------------------- starts
def test_runs_from_different_starts_get_their_own_summary_rows_and_a_start_column():
    df = pd.DataFrame([_row("ce", 0, 0.5), _row("ce", 1, 0.7), _row("ce", 0, 0.3, weights=None),
                       _row("ce", 1, 0.4, weights=float("nan"))])
    table = analysis.summary_table(df, metrics=("acc",))
    assert len(table) == 2 and list(table["n_seeds"]) == [2, 2]
    by_start = dict(zip(analysis.format_summary(table)["start"], table["last.acc_mean"]))
    assert by_start == {"ssl": pytest.approx(0.6), "random": pytest.approx(0.35)}  # None and NaN: one random start
    one_start = analysis.summary_table(df.iloc[:2], metrics=("acc",))
    assert "start" not in analysis.format_summary(one_start)


# ----------------------------------------------------------------------------------- paired comparison
def test_paired_comparison_pairs_by_seed_and_gives_the_verdicts():
    cmp_ = analysis.paired_comparison(_results())
    acc = cmp_[cmp_["metric"] == "last.acc"].set_index("method")
    assert sorted(acc.index) == ["gce", "lanet", "nla", "rul"]  # no oracle, no baseline, no unpaired start
    assert set(acc["start"]) == {"ssl"} and set(acc["n_pairs"]) == {3}  # nla's seed 3 has no CE twin
    for method, diffs in DIFFS.items():
        row = acc.loc[method]
        assert row["mean_diff"] == pytest.approx(np.mean(diffs))
        assert row["std_diff"] == pytest.approx(np.std(diffs, ddof=1))
        assert row["wins"] == sum(d > 0 for d in diffs)
        assert row["p_value"] == pytest.approx(stats.ttest_rel(CE + np.array(diffs), CE).pvalue)
        assert row["baseline_mean"] == pytest.approx(CE.mean())
    assert acc["verdict"].to_dict() == {"gce": "supported loss", "lanet": "no consistent difference",
                                        "nla": "supported gain", "rul": "same sign in every seed, not significant"}
    assert acc.loc["rul", "p_value"] >= 0.05 and acc.loc["nla", "p_value"] < 0.05
    assert set(cmp_["metric"]) == set(analysis.PAIRED_METRICS) == {"last.acc", "last.mean_acc", "best.acc"}


def test_fewer_than_three_pairs_are_never_supported():
    two = pd.DataFrame([_row("ce", 0, 0.5), _row("ce", 1, 0.6), _row("nla", 0, 0.55), _row("nla", 1, 0.6501)])
    (row,) = analysis.paired_comparison(two, metrics=("last.acc",)).to_dict("records")
    assert row["n_pairs"] == 2 and row["p_value"] < 0.05  # t of about 1000 with one degree of freedom ...
    assert row["verdict"] == "same sign in every seed, too few seeds (2 < 3)"  # ... but two seeds are not enough
    (one,) = analysis.paired_comparison(two.iloc[[0, 2]], metrics=("last.acc",)).to_dict("records")
    assert one["n_pairs"] == 1 and math.isnan(one["p_value"]) and math.isnan(one["std_diff"])
    with pytest.raises(ValueError, match="last.mean_acc"):
        analysis.paired_comparison(two.drop(columns="last.mean_acc"))


def test_method_variants_are_compared_apart_and_the_baseline_needs_one_variant():
    df = pd.DataFrame([_row("ce", s, a) for s, a in enumerate(CE)]
                      + [_row("nla", s, a + 0.01) for s, a in enumerate(CE)]
                      + [{**_row("nla", s, a - 0.02), "method_options.neighbours": "bank"} for s, a in enumerate(CE)])
    table = analysis.paired_comparison(df, metrics=("last.acc",))
    assert dict(zip(table["variant"], table["mean_diff"])) == pytest.approx({"": 0.01, "neighbours=bank": -0.02})
    assert list(table["n_pairs"]) == [3, 3]
    text = analysis.findings_text(analysis.summary_table(df, metrics=("acc",)), table, analysis.memorisation_summary(
        analysis.memorisation_table("nowhere")))
    assert "NLA (neighbours=bank) at 30% symmetric: -2.0 points" in " ".join(text)  # two option sets: both named
    assert "NLA at 30% symmetric: +1.0 points" in " ".join(text)
    with pytest.raises(ValueError, match=r"baseline 'ce' has runs of several variants \['', 'neighbours=bank'\]"):
        analysis.paired_comparison(df.assign(method="ce"))


# ----------------------------------------------------------------------------------- memorisation
def test_memorisation_table_reads_peak_and_last_test_accuracy_of_each_run(tmp_path):
    _run(tmp_path, "ce0", "ce", 0, [0.40, 0.62, 0.55, 0.50])
    _run(tmp_path, "ce1", "ce", 1, [0.45, 0.60, 0.60, 0.56])
    _run(tmp_path, "nla0", "nla", 0, [0.40, 0.58, 0.60])
    _run(tmp_path, "ls0", "ce", 0, [0.40, 0.50], options={"label_smoothing": 0.1})  # another variant: own row
    _run(tmp_path / "init", "ce0r", "ce", 0, [0.3, 0.2])  # a nested runs folder: not read
    (tmp_path / "nla0" / "epochs.csv").write_text("")     # unreadable: skipped, named
    with pytest.warns(RunWarning, match="nla0"):
        table = analysis.memorisation_table(tmp_path)
    rows = table.set_index("run_id")
    assert list(rows.index) == ["ce0", "ce1", "ls0"]
    assert rows.loc["ce0", ["peak_test_acc", "peak_epoch", "last_test_acc"]].tolist() == [0.62, 2, 0.50]
    assert rows.loc["ce0", "drop"] == pytest.approx(0.12) and rows.loc["ce1", "peak_epoch"] == 2  # first peak
    assert rows.loc["ce0", "last_train_loss"] == pytest.approx(0.1) and set(rows["start"]) == {"random"}
    ce, ls = analysis.memorisation_summary(table).to_dict("records")
    assert (ce["method"], ce["variant"], ce["n_seeds"], ce["n_runs"]) == ("ce", "", 2, 2)
    assert (ls["variant"], ls["n_runs"], ls["drop_mean"]) == ("label_smoothing=0.1", 1, 0.0)
    assert ce["drop_mean"] == pytest.approx(0.08) and ce["drop_std"] == pytest.approx(np.std([0.12, 0.04], ddof=1))


# ----------------------------------------------------------------------------------- per-class gains
def test_class_gains_subtract_the_baseline_at_the_same_noise_and_start():
    rows = [(m, n, s, c, a) for m, n, s, c, a in [
        ("ce", "annotator", "ssl", "happiness", 0.80), ("ce", "annotator", "ssl", "fear", 0.10),
        ("nla", "annotator", "ssl", "happiness", 0.78), ("nla", "annotator", "ssl", "fear", 0.25),
        ("nla", "annotator", "random", "fear", 0.05),  # no CE from a random start: no gain
        ("ldl_votes (oracle)", "annotator", "ssl", "fear", 0.40)]]
    per_class = pd.DataFrame(rows, columns=["method", "noise", "start", "class", "acc_mean"]).assign(n_seeds=3)
    gains = analysis.class_gains(per_class).set_index(["method", "class"])
    assert sorted(gains.index) == [("ldl_votes (oracle)", "fear"), ("nla", "fear"), ("nla", "happiness")]
    assert gains["gain"].to_dict() == pytest.approx({("nla", "happiness"): -0.02, ("nla", "fear"): 0.15,
                                                     ("ldl_votes (oracle)", "fear"): 0.30})
    assert gains["rare"].to_dict() == {("nla", "happiness"): False, ("nla", "fear"): True,
                                       ("ldl_votes (oracle)", "fear"): True}
    assert analysis.class_gains(per_class, rare=("happiness",))["rare"].sum() == 1
    assert analysis.class_gains(per_class.iloc[:0]).empty


# ----------------------------------------------------------------------------------- init contrast
def test_init_contrast_pairs_each_grid_run_with_its_init_twin(tmp_path):
    for seed, (ssl, rnd) in enumerate([(0.60, 0.50), (0.62, 0.55), (0.58, 0.50)]):
        _run(tmp_path, f"ce{seed}", "ce", seed, [ssl], weights="ssl")
        _run(tmp_path / "init", f"ce{seed}r", "ce", seed, [rnd])
    _run(tmp_path, "nla0", "nla", 0, [0.6], weights="ssl")  # not in the contrast: no row
    assert analysis.init_contrast_table(tmp_path / "nowhere").empty
    table = analysis.init_contrast_table(tmp_path)
    assert list(table["metric"]) == ["last.acc", "last.mean_acc"]
    row = table.iloc[0]
    assert (row["method"], row["noise"], row["start"], row["init_start"]) == ("ce", "symmetric:0.3", "ssl", "random")
    assert row["n_pairs"] == 3 and row["wins"] == 3
    assert (row["grid_mean"], row["init_mean"]) == pytest.approx((0.60, 0.5166667))
    assert row["mean_diff"] == pytest.approx(0.25 / 3) and row["verdict"] == "supported gain"
    shown = analysis.format_paired(table).iloc[0]  # the readable copy the summary notebook shows
    assert (shown["start"], shown["mean diff ± std"], shown["wins"]) == ("self-supervised vs random init",
                                                                        "+8.3 ± 1.5", "3 of 3")

    from ferlib.study import write_report  # the study's index shows the contrast in its answer, and writes it

    index = write_report(runs_dir=tmp_path, reports_dir=tmp_path / "report").read_text()
    body = index.split("<table class='dataframe init'>", 1)[1].split("</table>", 1)[0]
    assert ("<td>CE</td><td>30% symmetric</td><td>self-supervised vs random init</td><td>accuracy, last epoch</td>"
            "<td class='num'>3</td><td class='num'>+8.3 ± 1.5</td>") in body
    assert pd.read_csv(tmp_path / "report" / "init_contrast.csv")["verdict"].iloc[0] == "supported gain"


# ----------------------------------------------------------------------------------- findings
def test_findings_state_the_drop_the_supported_and_the_unsupported_differences(tmp_path):
    results = _results()
    summary = analysis.summary_table(results, metrics=("acc", "mean_acc"))
    memorisation = analysis.memorisation_summary(pd.DataFrame([
        {"method": "ce", "variant": "", "oracle": False, "noise": "symmetric:0.3", "seed": s, "start": "ssl",
         "peak_test_acc": p, "peak_epoch": e, "last_test_acc": last, "drop": p - last, "last_train_loss": 0.1}
        for s, p, e, last in [(0, 0.62, 10, 0.50), (1, 0.64, 12, 0.58), (2, 0.60, 11, 0.55)]]))
    lines = analysis.findings_text(summary, analysis.paired_comparison(results), memorisation)
    text = "\n".join(lines)
    assert "Not compared (upper bounds: they read the human votes): oracle (human votes)." in lines[0]
    assert "seeds 0, 1, 2, 3" in lines[0]
    assert ("At 30% symmetric, CE's test accuracy peaks at 62.0% at epoch 11 and ends at 54.3% at the last epoch "
            "(means over 3 runs): a drop of 7.7 ± 3.8 points.") in lines
    acc_line = next(line for line in lines if line.startswith("Last-epoch accuracy over CE"))
    assert "supported gains: NLA at 30% symmetric: +5.0 points, higher in 3 of 3 seeds, p < 0.001;" in acc_line
    assert "supported losses: GCE at 30% symmetric: -3.0 points, higher in 0 of 3 seeds, p < 0.001." in acc_line
    unsupported = next(line for line in lines if line.startswith("Not supported by the data (last-epoch accuracy)"))
    assert "LA-Net at 30% symmetric: +1.3 points, higher in 2 of 3 seeds" in unsupported
    assert "RUL at 30% symmetric: +2.1 points, higher in 3 of 3 seeds, p = 0.299" in unsupported
    assert "NLA" not in unsupported
    early = next(line for line in lines if line.startswith("Accuracy at the epoch chosen on the validation split"))
    assert "(early stopping) over CE: supported gains: NLA at 30% symmetric: +5.0 points" in early
    assert "|t| > 4.30" in text
    nothing = analysis.findings_text(summary.iloc[:0], analysis.paired_comparison(results.iloc[:3]),
                                     memorisation.iloc[:0])
    assert nothing == ["No method has runs paired with CE's on the same seed: nothing is compared."]


def test_record_metrics_writes_the_file_and_prints_one_line(tmp_path, capsys):
    path = analysis.record_metrics(tmp_path, "99_summary", {"n_runs": 3, "table": [{"acc": 0.5}]})
    assert json.loads(path.read_text()) == {"n_runs": 3, "table": [{"acc": 0.5}]}
    assert capsys.readouterr().out == f"metrics (n_runs, table) written to {path}\n"  # values stay in the tables


def test_setup_notebook_silences_only_the_widget_warning(tmp_path, monkeypatch):
    import warnings

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analysis.setup_notebook("99_summary", tmp_path)
        warnings.warn("IProgress not found. Please update jupyter and ipywidgets.", UserWarning)
        warnings.warn("a warning a reader must see", UserWarning)
    assert [str(w.message) for w in caught] == ["a warning a reader must see"]


def test_seed_summary_averages_over_seeds_within_a_setting_only():
    from ferlib.analysis.seeds import seed_summary

    table = pd.DataFrame({"method": ["ce", "ce", "ce", "ce", "nla", None],
                          "seed": [0, 1, 2, 2, 0, 0],
                          "acc": [0.5, 0.6, 0.7, 0.8, 0.4, 0.3]})
    out = seed_summary(table, ["method", "absent_key"], ["acc", "absent_metric"])
    assert list(out.columns) == ["method", "n_seeds", "seeds", "n_runs", "acc_mean", "acc_std"]
    ce = out[out["method"] == "ce"].iloc[0]
    assert (ce["n_seeds"], ce["seeds"], ce["n_runs"]) == (3, "0,1,2", 4)  # two runs of seed 2 both count
    assert ce["acc_mean"] == pytest.approx(0.65) and ce["acc_std"] == pytest.approx(np.std([.5, .6, .7, .8], ddof=1))
    nla = out[out["method"] == "nla"].iloc[0]
    assert nla["acc_mean"] == pytest.approx(0.4) and math.isnan(nla["acc_std"])  # one run: no spread
    assert len(out) == 3 and out["method"].isna().sum() == 1  # a missing key is a setting of its own
    assert seed_summary(table.iloc[:0], ["method"], ["acc"]).columns.tolist() == list(out.columns)


def test_format_seed_summary_writes_mean_and_std_per_metric_and_keeps_the_keys():
    from ferlib.analysis.seeds import seed_summary

    table = pd.DataFrame({"method": ["ce", "ce", "nla"], "seed": [0, 1, 0], "acc": [0.5, 0.6, 0.7],
                          "epoch": [5, 7, 20]})
    shown = analysis.format_seed_summary(seed_summary(table, ["method"], ["acc", "epoch"]), ["epoch", "acc", "f1"],
                                         scale={"acc": 100}, digits=1)
    assert shown.columns.tolist() == ["method", "n_seeds", "epoch", "acc"]  # metrics in the asked order, f1 absent
    assert shown.values.tolist() == [["CE", 2, "6.0 ± 1.4", "55.0 ± 7.1"], ["NLA", 1, "20.0", "70.0"]]
    runs = pd.DataFrame({"method": ["ldl_votes (oracle)", "lanet", "lanet"], "variant": ["", "", "no_landmarks"],
                         "oracle": [True, False, False], "noise": ["annotator"] * 3, "start": ["ssl"] * 3,
                         "n_seeds": 1, "acc_mean": 0.5, "acc_std": float("nan")})
    assert analysis.format_seed_summary(runs, ["acc"]).values.tolist() == [  # display names, whatever the input
        ["oracle (human votes)", "real annotator", "self-supervised", 1, "0.500"],
        ["LA-Net", "real annotator", "self-supervised", 1, "0.500"],
        ["LA-Net (no_landmarks)", "real annotator", "self-supervised", 1, "0.500"]]
