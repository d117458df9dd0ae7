"""ferlib.analysis: the label-distribution-learning measures (Geng 2016, Table 2), the false-negative rate at the
noise rate, and the seed-aggregated tables of notebooks 04 and 05 (their code path on realistic frames)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferlib import analysis
from ferlib.analysis import LDL_MEASURES, RunRecord

# A 2x3 example: human distributions (row 0 as vote counts, normalised inside) and predictions.
P = np.array([[5.0, 5.0, 0.0], [0.2, 0.3, 0.5]])
Q = np.array([[0.25, 0.5, 0.25], [0.2, 0.6, 0.2]])
HAND = {  # worked by hand from Geng's formulas, row by row
    "chebyshev": [0.25, 0.3],
    "clark": [math.sqrt(1 / 9 + 1), math.sqrt(1 / 9 + 9 / 49)],
    "canberra": [1 / 3 + 1, 1 / 3 + 3 / 7],
    "kl": [0.5 * math.log(2), 0.3 * math.log(0.5) + 0.5 * math.log(2.5)],
    "cosine": [0.375 / math.sqrt(0.5 * 0.375), 0.32 / math.sqrt(0.38 * 0.44)],
    "intersection": [0.75, 0.7],
}
PERFECT = {"lower": 0.0, "higher": 1.0}


# ----------------------------------------------------------------------------------- LDL measures
@pytest.mark.parametrize("name", list(HAND))
def test_ldl_measure_matches_hand_computed_values(name):
    measure, _ = LDL_MEASURES[name]
    np.testing.assert_allclose(measure(P, Q), HAND[name], rtol=1e-12)


def test_js_measure_matches_its_definition():
    p, q = P / P.sum(1, keepdims=True), Q
    m = (p + q) / 2
    expected = [sum(a * math.log(a / c) for a, c in zip(pr, mr) if a > 0) / 2
                + sum(b * math.log(b / c) for b, c in zip(qr, mr) if b > 0) / 2 for pr, qr, mr in zip(p, q, m)]
    np.testing.assert_allclose(LDL_MEASURES["js"][0](P, Q), expected, rtol=1e-12)


@pytest.mark.parametrize("name", list(LDL_MEASURES))
def test_ldl_measure_is_perfect_on_identical_distributions(name):
    measure, better = LDL_MEASURES[name]
    p = np.random.default_rng(0).random((5, 4)) * (np.arange(4) > 0)  # class 0 empty in every row
    np.testing.assert_allclose(measure(p, p), PERFECT[better], atol=1e-12)


@pytest.mark.parametrize("name", list(LDL_MEASURES))
def test_ldl_measure_scores_a_closer_prediction_better(name):
    measure, better = LDL_MEASURES[name]
    p = np.array([[0.7, 0.2, 0.1, 0.0], [0.1, 0.1, 0.3, 0.5]])
    near = np.array([[0.6, 0.25, 0.1, 0.05], [0.15, 0.1, 0.3, 0.45]])
    far = np.array([[0.1, 0.3, 0.3, 0.3], [0.6, 0.2, 0.1, 0.1]])
    near_score, far_score = measure(p, near), measure(p, far)
    assert np.all(near_score < far_score) if better == "lower" else np.all(near_score > far_score)


@pytest.mark.parametrize("name", list(LDL_MEASURES))
def test_ldl_measure_handles_zero_entries(name):
    measure, _ = LDL_MEASURES[name]
    p = np.array([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # class 3: zero in both p and q
    q = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    assert np.isfinite(measure(p, q)).all()


def test_zero_classes_contribute_nothing_to_clark_and_canberra():
    p, q = np.array([[0.5, 0.5, 0.0, 0.0]]), np.array([[1.0, 0.0, 0.0, 0.0]])  # classes 2, 3: p_k + q_k = 0
    np.testing.assert_allclose(analysis.canberra_distance(p, q), [1 / 3 + 1])
    np.testing.assert_allclose(analysis.clark_distance(p, q), [math.sqrt(1 / 9 + 1)])
    with pytest.raises(ValueError, match="same shape"):
        analysis.chebyshev_distance(p, np.ones((1, 3)))


def test_label_distribution_metrics_reports_every_measure_in_order():
    m = analysis.label_distribution_metrics(Q, P, majority=np.array([0, 2]))
    assert list(m) == ["chebyshev", "clark", "canberra", "kl", "cosine", "intersection", "js", "top1", "n"]
    for name, values in HAND.items():
        assert m[name] == pytest.approx(np.mean(values), rel=1e-12)  # the human distribution is the reference
    assert m["top1"] == 0.0 and m["n"] == 2  # argmax of Q: class 1 in both rows
    empty = analysis.label_distribution_metrics(Q, np.zeros_like(P), majority=np.array([0, 2]))
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in LDL_MEASURES)


# ----------------------------------------------------------------------------------- FNR at the noise rate
def test_fnr_at_n_perfect_and_reversed_scores():
    flipped = np.random.default_rng(1).random(200) < 0.3
    perfect = analysis.detection_metrics(flipped.astype(float), flipped)
    assert perfect["fnr_at_n"] == 0.0 and perfect["auroc"] == 1.0
    reversed_ = analysis.detection_metrics(-flipped.astype(float), flipped)
    assert reversed_["fnr_at_n"] == 1.0 and reversed_["auroc"] == 0.0


def test_fnr_at_n_hand_example_two_of_four_flipped():
    out = analysis.detection_metrics(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
    # the two highest scores are samples 0 (flipped) and 1 (clean): one of the two flipped labels is missed
    assert out["fnr_at_n"] == 0.5 and out["p_at_n"] == 0.5
    assert out["auroc"] == 0.75  # flipped 0.9 beats both clean; flipped 0.3 beats 0.1 only
    assert math.isnan(analysis.detection_metrics(np.arange(3.0), np.zeros(3, bool))["fnr_at_n"])


def _fold_run(fold: int, ids, given, clean, logits, seed: int = 0) -> RunRecord:
    """An in-memory CE fold run (fold ``fold`` of 2) predicting its held-out samples."""
    held = np.arange(len(ids)) % 2 == fold
    result = {"run_id": f"ce-symmetric0.3-s{seed}-f{fold}", "method": "ce", "noise": "symmetric:0.3",
              "seed": seed, "fold": [fold, 2], "epochs": 1, "backbone": {"weights": None}}
    readout = {"test_ids": ids[held], "test_given": given[held], "test_labels": clean[held],
               "test_logits": logits[held]}
    return RunRecord(path=Path(result["run_id"]), result=result, epochs=pd.DataFrame(), readout=readout)


def _cleanlab_rows() -> pd.DataFrame:
    """cleanlab_table over two in-memory fold runs whose logits favour the clean label."""
    rng = np.random.default_rng(0)
    n, k = 60, 3
    clean = np.arange(n) % k
    given = np.where(rng.random(n) < 0.3, (clean + 1) % k, clean)
    logits = 3.0 * np.eye(k)[clean] + rng.normal(0, 0.3, (n, k))
    ids = np.array([f"s{i:03d}" for i in range(n)])
    return analysis.cleanlab_table([_fold_run(f, ids, given, clean, logits) for f in range(2)])


def test_cleanlab_table_reports_the_detection_columns():
    (row,) = _cleanlab_rows().to_dict("records")
    assert row["method"] == "cleanlab" and row["start"] == "random"
    assert row["auroc"] > 0.9 and 0.0 <= row["ap"] <= 1.0
    assert row["fnr_at_n"] == pytest.approx(1 - row["p_at_n"]) and row["fnr_at_n"] < 0.2


# ----------------------------------------------------------------------------------- seed summaries
def _run(method: str, noise: str, seed: int, readout: dict, *, weights=None, **result) -> RunRecord:
    result = {"run_id": f"{method}-{noise}-s{seed}-{weights}", "method": method, "noise": noise, "seed": seed,
              "noise_rate": 0.3, "backbone": {"weights": weights}, **result}
    return RunRecord(path=Path(result["run_id"]), result=result, epochs=pd.DataFrame(), readout=readout)


def _detection_readout(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    clean = np.arange(40) % 4
    given = np.where(rng.random(40) < 0.3, (clean + 1) % 4, clean)
    flipped = given != clean
    return {"given": given, "clean": clean, "method_score": flipped + rng.normal(0, 0.6, 40),
            "method_loss": rng.random(40)}


def test_detection_summary_mean_std_over_seeds_and_separate_settings():
    runs = [_run("ce", "symmetric:0.3", s, _detection_readout(s)) for s in (0, 1)]
    runs += [_run("ce", "symmetric:0.6", 0, _detection_readout(2)),
             _run("ce", "symmetric:0.3", 0, _detection_readout(3), weights="ssl")]
    per_run = analysis.uncertainty_table(runs, rankings=("score", "loss"))
    summary = analysis.detection_summary(per_run)
    assert len(summary) == 6  # (two noises + a second start) x two rankings: never averaged together
    assert list(summary.columns[:5]) == ["method", "noise", "start", "ranking", "n_seeds"]
    pair = per_run[(per_run["noise"] == "symmetric:0.3") & (per_run["start"] == "random")
                   & (per_run["ranking"] == "score")]
    (row,) = summary[(summary["noise"] == "symmetric:0.3") & (summary["start"] == "random")
                     & (summary["ranking"] == "score")].to_dict("records")
    assert row["n_seeds"] == 2 and len(pair) == 2
    for metric in ("auroc", "ap", "fnr_at_n"):
        a, b = pair[metric]
        assert row[f"{metric}_mean"] == pytest.approx((a + b) / 2)
        assert row[f"{metric}_std"] == pytest.approx(abs(a - b) / math.sqrt(2))  # ddof = 1
    single = summary[summary["noise"] == "symmetric:0.6"]
    assert (single["n_seeds"] == 1).all() and single["auroc_std"].isna().all()
    alone = per_run[per_run["noise"] == "symmetric:0.6"].sort_values("ranking")
    assert single["ranking"].tolist() == alone["ranking"].tolist() == ["loss", "score"]
    assert single["auroc_mean"].tolist() == alone["auroc"].tolist()


def test_notebook_05_summary_of_methods_and_cleanlab(tmp_path):
    runs = [_run("ce", "symmetric:0.3", s, _detection_readout(s)) for s in (0, 1)]
    detection = analysis.uncertainty_table(runs, rankings=["score", "loss", "neg_margin", "neg_aum"])
    cleanlab = _cleanlab_rows()
    per_run = pd.concat([detection, cleanlab], ignore_index=True)
    summary = analysis.detection_summary(per_run)
    assert summary[["method", "ranking"]].values.tolist() == [["ce", "loss"], ["ce", "score"],
                                                              ["cleanlab", "1 - self_confidence"]]
    cl = summary[summary["method"] == "cleanlab"].iloc[0]
    assert cl["n_seeds"] == 1 and cl["auroc_mean"] == cleanlab["auroc"].iloc[0]
    summary.to_csv(tmp_path / "uncertainty_summary.csv", index=False)
    assert len(pd.read_csv(tmp_path / "uncertainty_summary.csv")) == 3
    path = analysis.record_metrics(tmp_path, "05_uncertainty", {"summary": summary.to_dict("records")})
    assert len(json.loads(path.read_text())["summary"]) == 3
    assert analysis.detection_summary(pd.DataFrame()).empty  # no run yet: an empty table, no error


def _ldl_runs(tiny_ferplus) -> list[RunRecord]:
    """Runs on the tiny FERPlus tree (which has votes): two seeds of CE at one noise, one at another."""
    data = analysis.run_dataset({"dataset": "ferplus", "data": str(tiny_ferplus)})
    train = np.flatnonzero(data.split == "train")
    clean = data.labels[train]
    runs = []
    for seed, noise in ((0, "symmetric:0.3"), (1, "symmetric:0.3"), (0, "symmetric:0.6")):
        rng = np.random.default_rng(seed + 10 * (noise == "symmetric:0.6"))
        given = np.where(np.arange(len(train)) == seed, (clean + 1) % 8, clean)  # one flipped label
        readout = {"ids": data.ids[train], "given": given, "clean": clean,
                   "train_logits": rng.normal(0, 1, (len(train), 8)) + 2 * np.eye(8)[clean]}
        runs.append(_run("ce", noise, seed, readout, dataset="ferplus", data=str(tiny_ferplus)))
    return runs


def test_label_distribution_table_and_summary(tiny_ferplus, tmp_path):
    table = analysis.label_distribution_table(_ldl_runs(tiny_ferplus))
    given_cols = [f"{m}_given" for m in LDL_MEASURES if m != "kl"] + ["top1_given"]
    assert set(LDL_MEASURES) | {"top1", "n", "source", "start"} | set(given_cols) <= set(table.columns)
    assert (table["top1_given"] == 1 - 1 / table["n"]).all()  # one flipped label per run
    assert (table["chebyshev_given"] > 0).all() and (table["intersection_given"] < 1).all()
    summary = analysis.label_distribution_summary(table)
    assert list(summary.columns[:5]) == ["method", "noise", "start", "source", "n_seeds"]
    assert summary["noise"].tolist() == ["symmetric:0.3", "symmetric:0.6"] and summary["n_seeds"].tolist() == [2, 1]
    pair = table[table["noise"] == "symmetric:0.3"]
    for name in [*LDL_MEASURES, "top1", *given_cols]:
        assert summary[f"{name}_mean"].iloc[0] == pytest.approx(pair[name].mean())
        assert summary[f"{name}_std"].iloc[0] == pytest.approx(pair[name].std(ddof=1), nan_ok=True)
        assert summary[f"{name}_mean"].iloc[1] == table[name].iloc[2] and math.isnan(summary[f"{name}_std"].iloc[1])
    summary.to_csv(tmp_path / "label_distributions_summary.csv", index=False)
    analysis.record_metrics(tmp_path, "04_label_distributions", {"summary": summary.to_dict("records")})
