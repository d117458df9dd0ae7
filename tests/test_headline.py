"""What a study's index opens with (ferlib.analysis.headline): the setting, the findings generated from the
verdicts, the headline table and figure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ferlib import analysis
from ferlib.analysis.headline import (ablation_findings, headline_findings, headline_table, main_setting,
                                      plot_headline, study_setting)
from ferlib.analysis.style import method_style

NOISES = ["symmetric:0.3", "annotator"]
#: Last-epoch accuracy per seed: NLA a clear gain everywhere, GCE higher in every seed but not significantly at
#: annotator (as the README's GCE at annotator, p = 0.052), RUL mixed.
CE = {"symmetric:0.3": [0.48, 0.50, 0.47], "annotator": [0.62, 0.60, 0.63]}
GAIN = {"nla": {"symmetric:0.3": [0.17, 0.18, 0.16], "annotator": [0.06, 0.05, 0.06]},
        "gce": {"symmetric:0.3": [0.14, 0.13, 0.15], "annotator": [0.001, 0.05, 0.03]},
        "rul": {"symmetric:0.3": [0.01, -0.01, 0.02], "annotator": [-0.02, 0.01, -0.01]}}


def _row(method: str, noise: str, seed: int, acc: float, *, oracle: bool = False, epochs: int = 30) -> dict:
    return {"run_id": f"{method}-{noise}-{seed}-{epochs}", "dataset": "ferplus", "dataset_options.mode": "plurality",
            "classes": 8, "split_counts.train": 5000, "split_counts.valid": 3526, "split_counts.test": 3522,
            "method": method, "oracle": oracle, "noise": noise, "seed": seed, "noise_rate": 0.3 if noise != "none"
            else 0.0, "train_subset": 5000, "epochs": epochs, "image_size": 48, "backbone.name": "resnet18",
            "backbone.in_chans": 1, "backbone.weights": "ssl", "optimizer": "adam", "lr": 0.001, "batch_size": 64,
            "device": "cpu", "params": 2.8e6, "time_per_epoch_s": 7.0, "last.acc": acc, "best.acc": acc + 0.02,
            "last.mean_acc": acc - 0.2}


def _results() -> pd.DataFrame:
    rows = []
    for noise in NOISES:
        for seed in range(3):
            base = CE[noise][seed]
            rows.append(_row("ce", noise, seed, base))
            rows += [_row(m, noise, seed, base + g[noise][seed]) for m, g in GAIN.items()]
            rows.append(_row("ldl_votes", noise, seed, 0.70 + 0.005 * seed, oracle=True))
    rows += [_row("ce", "none", seed, 0.68) for seed in range(3)]
    return pd.DataFrame(rows)


def _memorisation() -> pd.DataFrame:
    return analysis.memorisation_summary(pd.DataFrame([
        {"method": "ce", "variant": "", "oracle": False, "noise": n, "seed": s, "start": "ssl", "peak_test_acc": 0.6,
         "peak_epoch": 5, "last_test_acc": 0.6 - d, "drop": d, "last_train_loss": 0.1}
        for n, d in [("symmetric:0.3", 0.14), ("annotator", 0.03), ("none", 0.01)] for s in range(3)]))


def test_the_findings_are_a_few_sentences_whose_words_come_from_the_verdicts():
    results = _results()
    comparison = analysis.paired_comparison(results)
    gce = comparison[(comparison["method"] == "gce") & (comparison["noise"] == "annotator")
                     & (comparison["metric"] == "last.acc")].iloc[0]
    assert gce["wins"] == 3 and gce["p_value"] >= 0.05 and gce["verdict"] != "supported gain"  # the README's trap
    lines = headline_findings(results, comparison, _memorisation(), noise_order=NOISES)
    assert 4 <= len(lines) <= 7
    assert lines[0].startswith("CE and 3 methods for noisy labels (GCE, NLA, RUL) trained on the same faces at 2 "
                               "noise settings (30% symmetric, real annotator), 3 seeds each")
    assert "CE loses 14.0 ± 0.0 points at 30% symmetric, 3.0 ± 0.0 points at real annotator and 1.0 ± 0.0 points " \
           "on the clean labels" in lines[1]
    last = next(line for line in lines if line.startswith("At the last epoch"))
    supported = last.split("; not supported: ")[0]
    assert "3 of 6 method and noise pairs beat CE" in supported and "GCE" not in supported
    assert f"GCE at real annotator (+2.7 points, higher in all 3 seeds, p = {gce['p_value']:.3f})" in last
    assert "RUL at 30% symmetric (+0.7 points, higher in 2 of 3 seeds" in last
    assert lines[-1] == ("References, not competitors, at the last epoch: CE on the clean labels 68.0 ± 0.0% and "
                         "the oracle trained on the human votes 70.5 ± 0.4%.")
    assert not any("ldl_votes" in line or "symmetric:0.3" in line for line in lines)  # display names only


def test_the_real_noise_against_its_twin_is_one_sentence_from_its_verdicts():
    contrast = pd.DataFrame([  # noise_contrast's rows: each method at annotator minus itself at annotator_matched
        {"method": m, "metric": "last.acc", "n_pairs": 3, "mean_diff": d, "wins": w, "p_value": p, "verdict": v}
        for m, d, w, p, v in [("ce", 0.052, 3, 0.043, "supported: higher"),
                              ("gce", 0.018, 3, 0.145, "same sign in every seed, not significant"),
                              ("nla", 0.019, 3, 0.085, "same sign in every seed, not significant"),
                              ("rul", -0.04, 0, 0.01, "supported: lower")]])
    results = _results()
    lines = headline_findings(results, analysis.paired_comparison(results), _memorisation(), noise_order=NOISES,
                              contrast=contrast)
    assert len(lines) == 7
    assert lines[-2] == ("Real annotator noise against its synthetic twin (the real annotator's class transitions, "
                         "drawn regardless of the face), at the last epoch: 1 of 4 methods are more accurate under "
                         "the real annotator noise with support: CE (+5.2) points; less accurate with support: RUL "
                         "(-4.0) points; not supported: GCE, NLA (+1.8 to +1.9 points, p = 0.085 to 0.145).")


def test_each_ablated_method_is_one_sentence_with_its_gain_and_its_supported_components_marked():
    ablations = pd.DataFrame([  # ablation_comparison's rows: variant minus full, seed by seed
        {"method": "nla", "variant": v, "noise": n, "metric": m, "n_pairs": 3, "mean_diff": d, "verdict": verdict}
        for v, n, d, verdict in [("no_naw", "annotator", -0.031, "supported loss"),
                                 ("no_consistency", "annotator", 0.004, "no consistent difference"),
                                 ("no_naw", "symmetric:0.3", -0.12, "supported loss"),
                                 ("no_consistency", "symmetric:0.3", -0.01, "same sign in every seed, not significant")]
        for m in ("last.acc", "best.acc")])
    results = _results()
    comparison = analysis.paired_comparison(results)
    five = comparison.assign(n_pairs=np.where(comparison["noise"] == "annotator", 5, comparison["n_pairs"]))
    assert ablation_findings(ablations, five, noise_order=NOISES) == [
        "NLA with one component switched off, minus the full method at the last epoch (3 seeds), at 30% symmetric "
        "(full method +17.0 over CE): no_naw -12.0 (supported loss), no_consistency -1.0; at real annotator (full "
        "method +5.7 over CE in 5 seeds): no_naw -3.1 (supported loss), no_consistency +0.4."]
    assert ablation_findings(ablations.iloc[:0], comparison) == []


def test_one_seed_supports_nothing_and_says_so():
    results = _results()
    one = results[results["seed"] == 0]
    lines = headline_findings(one, analysis.paired_comparison(one), _memorisation().iloc[:0])
    assert any(line.startswith("With 1 seed per setting no difference can be called supported (the rule needs 3 "
                               "seeds)") for line in lines)
    assert not any("beat CE" in line for line in lines)


def test_the_headline_table_shows_the_oracle_and_the_clean_control_once():
    table = headline_table(_results(), noise_order=NOISES)
    assert list(table["method"]) == ["CE", "GCE", "NLA", "RUL", "CE on the clean labels", "oracle (human votes)"]
    assert list(table["kind"]) == ["method"] * 4 + ["control", "oracle"]
    assert list(table.columns[3:6]) == ["last.acc | symmetric:0.3", "last.acc | annotator", "best.acc | symmetric:0.3"]
    ce = table.iloc[0]
    assert ce["last.acc | symmetric:0.3"] == "48.3 ± 1.5" and ce["last.mean_acc | annotator"] == "41.7 ± 1.5"
    oracle = table.iloc[-1]  # all 6 of its runs, whatever the noise it never read
    assert oracle["runs"] == 6 and oracle["last.acc | symmetric:0.3"] == oracle["last.acc | annotator"] == "70.5 ± 0.4"


def test_the_setting_says_when_the_folder_holds_another_grid_than_the_study_s():
    results = pd.concat([_results(), pd.DataFrame([_row("ce", "annotator", 3, 0.6)])], ignore_index=True)
    study = {"resolved_methods": ["ce", "gce", "nla", "rul", "ldl_votes"],
             "grid": {"noise": NOISES, "seeds": [0, 1, 2]}}
    rows = dict(study_setting(results, {}, study=study))
    assert rows["runs"].startswith("31 grid runs (5 methods × 2 noise settings; seeds 0-2 at 30% symmetric, 0-2 "
                                   "(CE 0-3) at real annotator; the study's grid has 30), 3 control runs")
    study["extra_grids"] = [{"methods": ["ce"], "noise": ["annotator", "none"], "seeds": [3]}]
    rows = dict(study_setting(results, {}, study=study))
    assert rows["runs"].startswith("31 grid runs (5 methods × 2 noise settings; seeds 0-2 at 30% symmetric, 0-2 "
                                   "(CE 0-3) at real annotator), 3 control runs")
    lines = headline_findings(results, analysis.paired_comparison(results), _memorisation(), noise_order=NOISES)
    assert "at 2 noise settings (30% symmetric, real annotator), seeds 0-2 at 30% symmetric, 0-2 (CE 0-3) " \
        "at real annotator; a seed draws the noise" in lines[0]
    runs = dict(study_setting(_results(), {}, study={**study, "extra_grids": []}))["runs"]
    assert runs.startswith("30 grid runs (5 methods × 2 noise settings × 3 seeds), 3 control")


def test_runs_of_another_setting_stay_out_of_the_headline():
    results = pd.concat([_results(), pd.DataFrame([_row("ce", "annotator", 0, 0.1, epochs=2)])], ignore_index=True)
    main, left_out = main_setting(results)
    assert left_out == 1 and set(main["epochs"]) == {30}


def test_the_setting_says_what_was_trained_and_why_the_numbers_are_low():
    config = {"backbone": {"name": "resnet18", "model_kwargs": {"channels": [32, 64, 128, 256]}},
              "train": {"scheduler": "cosine", "augment": {"flip": 0.5, "crop": "none"}},
              "precision": {"autocast": "bfloat16", "channels_last": True}, "processes": 1}
    rows = dict(study_setting(_results(), config, full_train=28150, noise_order=NOISES,
                              extra_runs={"cross-fitted CE folds": 12}))
    assert rows["splits"] == ("train 5,000 faces (a stratified subset of the 28,150); validation 3,526; test 3,522 "
                              "(FERPlus test, every number below)")
    assert rows["start"] == "self-supervised (SimCLR on the train faces, no labels)"
    assert rows["network"] == "ResNet-18, channels 32-64-128-256 (2.8 M parameters)"
    assert rows["augmentation"] == "horizontal flip (p = 0.5) only"
    assert rows["precision"] == "bfloat16 autocast, channels-last"
    assert rows["runs"] == ("30 grid runs (5 methods × 2 noise settings × 3 seeds), 3 control runs (CE on the clean "
                            "labels), 12 cross-fitted CE folds")
    assert rows["why so low"].startswith("Far below the papers' ~88% on FERPlus")
    assert "5,000 of 28,150 train faces, 48 px, a reduced-width network, 30 epochs, no crop augmentation" \
        in rows["why so low"]


def test_the_headline_figure_draws_every_method_in_its_one_colour():
    asked = []

    def style(name):
        asked.append(name)
        return method_style(name)

    fig = plot_headline(_results(), style=style, noise_order=NOISES)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[:4] == ["CE", "GCE", "NLA", "RUL"]
    assert "CE on the clean labels: 68.0%" in legend and "oracle (human votes): 70.5%" in legend
    assert {"ce", "gce", "nla", "rul", "ldl_votes"} <= set(asked)
    ce_points = [line for line in fig.axes[0].lines if line.get_color() == method_style("ce")["color"]]
    assert ce_points and np.allclose(sorted(ce_points[0].get_xdata())[0], -0.3)  # CE first in each group
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["30% symmetric", "real annotator"]


@pytest.mark.parametrize("column", ["last.acc | symmetric:0.3", "best.acc | annotator"])
def test_every_headline_cell_is_a_percentage_with_one_decimal(column):
    cell = headline_table(_results(), noise_order=NOISES).iloc[1][column]
    assert cell.count(".") == 2 and all(len(part.split(".")[1]) == 1 for part in cell.split(" ± "))
