"""Every notebook under notebooks/ executes with papermill on the shipped FERPlus sample at tiny parameters and
records its metrics in ``<study_dir>/<notebook>.json``; the tests read them back and check their values.

02_train runs once (module fixture) into a shared runs folder that 04, 05, 06 and 99 then analyse; the cells
the study trains besides the grid (cleanlab folds, ablation variants) are trained in-process by
``ferlib.experiment.run``, as 02_train would, and 03 / 05 read them. Tiny means a
``test_resnet`` backbone (timm's 0.4 M-parameter test model), 128 training images and one epoch.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pm = pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SAMPLE = ROOT / "data" / "ferplus_sample"
TINY_SPEC = {
    "noise": "symmetric:0.3", "train_subset": 128, "method": "ce",
    "backbone": {"name": "test_resnet"},
    "train": {"epochs": 1, "batch_size": 32, "image_size": 48, "progress": False},
}

pytestmark = [pytest.mark.notebook,
              pytest.mark.skipif(not SAMPLE.is_dir(), reason="the shipped FERPlus sample is missing")]


def train_cells(folder: Path, *changes: dict) -> list[dict]:
    """Train ``TINY_SPEC`` with each of ``changes`` (RunSpec fields) in-process; their result.json dicts."""
    from ferlib.experiment import RunSpec, run

    return [run(RunSpec.from_dict({**TINY_SPEC, **c}, data=str(SAMPLE), out=str(folder / "runs"))) for c in changes]


def execute(name: str, folder: Path, **parameters) -> dict:
    """Run notebooks/<name>.ipynb with the common parameters pointing into ``folder``; return its metrics.

    What a rendered report would show is checked too: nothing written to stderr (a stray warning) in any cell,
    and the last cell shows only record_metrics' one printed line."""
    common = {"data": str(SAMPLE), "runs_dir": str(folder / "runs"), "study_dir": str(folder / "study")}
    executed = pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(folder / f"{name}.ipynb"),
                                   parameters={**common, **parameters}, kernel_name="python3", cwd=str(ROOT),
                                   progress_bar=False)
    code = [c for c in executed.cells if c.cell_type == "code"]
    stderr = [o.text for c in code for o in c.outputs if o.get("name") == "stderr"]
    assert not stderr, f"{name} writes to stderr: {stderr}"
    assert [(o.output_type, o.text.startswith("metrics (")) for o in code[-1].outputs] == [("stream", True)], \
        f"{name}: the last cell shows more than the metrics line: {code[-1].outputs}"
    return json.loads((folder / "study" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """02_train on the tiny spec: (folder, its recorded metrics)."""
    folder = tmp_path_factory.mktemp("study")
    return folder, execute("02_train", folder, spec=TINY_SPEC)


def test_every_notebook_is_tested_and_committed_without_outputs():
    import nbformat

    names = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    tested = {"00_prepare_data", "01_inject_noise", "02_train", "03_ablations", "04_label_distributions",
              "05_uncertainty", "06_embeddings", "07_review_labels", "99_summary"}
    assert names == tested
    for name in sorted(names):
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell must be tagged parameters"
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: strip outputs (nbstripout)"
        assert "record_metrics" in code[-1].source, f"{name}: the last cell must record the metrics"


def test_00_prepare_data(tmp_path):
    m = execute("00_prepare_data", tmp_path, faces_per_class=2, landmarks_backend="dlib", extract_limit=4,
                landmarks_cache_dir=str(tmp_path / "cache"))
    assert m["dataset"] == "ferplus" and len(m["classes"]) == 8 and m["has_votes"]
    assert m["split_counts"]["train"] > 1000 and m["split_counts"]["test"] > 200
    assert sum(m["dropped"]["train"].values()) > 0
    assert m["va_source"].startswith("ORACLE")  # FERPlus: the vote projection, labelled as an oracle
    assert m["landmarks"]  # extracted, or the reason it was skipped
    assert m["landmarks_ok_rate"] is None or 0.0 <= m["landmarks_ok_rate"] <= 1.0
    assert (tmp_path / "study" / "figures" / "00_prepare_data" / "faces.png").is_file()


def test_01_inject_noise(tmp_path):
    m = execute("01_inject_noise", tmp_path, noise="symmetric:0.3", seed=1)
    assert m["noise"] == "symmetric:0.3" and m["seed"] == 1
    assert 0.25 < m["overall_rate"] < 0.35
    assert m["n_flipped"] == round(m["overall_rate"] * m["n_train"])
    assert len(m["per_class_rate"]) == 8
    assert set(m["compare"]) == {"annotator", "annotator_matched"}  # drawn beside it: the sample has votes
    verdict = m["ambiguity"]
    assert verdict["n_seeds"] == 1 and verdict["verdict"] in ("too few seeds", "not supported")  # 3 seeds needed
    assert verdict["real_given_voted"] == 1.0  # the real annotator's label is always a class it voted for
    assert verdict["real_entropy"] > verdict["all_entropy"]  # it can flip only faces whose votes disagree
    figures = tmp_path / "study" / "figures" / "01_inject_noise"
    assert {"transition.png", "transitions_compared.png", "votes.png"} <= {p.name for p in figures.glob("*.png")}


def test_02_train(trained):
    folder, m = trained
    run_dir = Path(m["run_dir"])
    assert run_dir.parent == folder / "runs"
    for name in ("model.pt", "readout.npz", "epochs.csv", "result.json"):
        assert (run_dir / name).is_file()
    result = json.loads((run_dir / "result.json").read_text())
    assert 0.0 <= result["last"]["acc"] <= 1.0 and result["last"] == m["last"]
    assert m["method"] == "ce" and m["epochs"] == 1 and m["best_epoch"] == 1
    assert 0.1 < m["noise_rate"] < 0.5


def test_03_ablations(tmp_path):
    from ferlib.methods import list_methods, method_class

    with_variants = [n for n in list_methods() if method_class(n).ablations and not method_class(n).requires]
    method = "nla" if "nla" in with_variants else (with_variants or ["ce"])[0]
    variant, overrides = next(iter(method_class(method).ablations.items()))
    ablations = str(tmp_path / "runs" / "ablations")
    # the full method is the grid's cell (the study trains no duplicate of it), the variant an ablation cell
    train_cells(tmp_path, {"method": method},
                {"method": method, "variant": variant, "method_options": overrides, "out": ablations})
    m = execute("03_ablations", tmp_path)
    runs = m["runs"]
    assert [(r["variant"], r["cell"]) for r in runs] == [("full", "grid"), (variant, "ablation")]
    assert {r["method"] for r in runs} == {method} and runs[0]["delta_acc"] == 0.0
    assert runs[1]["delta_acc"] == pytest.approx(runs[1]["last.acc"] - runs[0]["last.acc"])
    assert (tmp_path / "runs" / runs[0]["run_id"] / "result.json").is_file()
    assert (tmp_path / "runs" / "ablations" / runs[1]["run_id"] / "result.json").is_file()
    # one seed: one pair per metric, the paired comparison's verdict for too few seeds (or no difference)
    assert [(r["variant"], r["metric"], r["n_pairs"]) for r in m["comparison"]] == \
        [(variant, metric, 1) for metric in ("last.acc", "last.mean_acc", "best.acc")]
    assert runs[1]["delta_acc"] == pytest.approx(m["comparison"][0]["mean_diff"])
    assert {r["verdict"] for r in m["comparison"]} <= {"same sign in every seed, too few seeds (1 < 3)",
                                                         "no consistent difference"}
    assert m["findings"] == [f"NLA with one component switched off, minus the full method at the last epoch (1 seed),"
                             f" at 30% symmetric: {variant} {100 * runs[1]['delta_acc']:+.1f}."]


def test_04_label_distributions(trained):
    folder, trained_metrics = trained
    m = execute("04_label_distributions", folder, n_faces=3)
    assert m["n_runs"] == 1
    (row,) = m["runs"]
    assert row["run_id"] == trained_metrics["run_id"] and row["source"] == "softmax(train_logits)"
    assert 0.0 <= row["js"] <= math.log(2) and row["kl"] >= 0.0 and 0.0 <= row["top1"] <= 1.0
    assert row["top1_given"] == pytest.approx(1 - trained_metrics["noise_rate"])


def test_05_uncertainty(trained):
    folder, trained_metrics = trained
    train_cells(folder, *({"fold": [i, 2], "out": str(folder / "runs" / "cleanlab")} for i in range(2)))
    m = execute("05_uncertainty", folder, n_faces=4)
    rankings = {r["ranking"]: r for r in m["detection"]}
    assert set(rankings) == {"score", "loss", "neg_margin", "neg_aum"}
    for r in rankings.values():
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["ap"] <= 1.0
        assert r["rate"] == pytest.approx(trained_metrics["noise_rate"])
    (cl,) = m["cleanlab"]
    assert cl["method"] == "cleanlab" and cl["folds"] == 2 and cl["epochs"] == 1
    assert 0.0 <= cl["auroc"] <= 1.0 and cl["n"] == TINY_SPEC["train_subset"]
    assert 0 <= cl["n_flagged"] <= cl["n"]
    assert math.isnan(cl["precision"]) or 0.0 <= cl["precision"] <= 1.0
    assert (folder / "runs" / "cleanlab").is_dir()
    # the answer: each kind of ranking's best method, one best per noise, AUM among them
    assert {r["ranking"] for r in m["best"]} == {*rankings, "1 - self_confidence"}
    assert [r["ranking"] for r in m["best"] if r["best"]] == [max(m["best"], key=lambda r: r["auroc_mean"])["ranking"]]
    figures = folder / "study" / "figures" / "05_uncertainty"
    assert {"auroc.png", "ap.png"} <= {p.name for p in figures.glob("*.png")}


def test_06_embeddings(trained):
    import nbformat

    from ferlib.study.report import render_html

    folder, trained_metrics = trained
    m = execute("06_embeddings", folder, umap_max_points=200)
    (row,) = m["runs"]
    assert row["run_id"] == trained_metrics["run_id"] and row["source"] == "penultimate features (model.pt)"
    assert -1.0 <= row["silhouette_test"] <= 1.0 and -1.0 <= row["silhouette_train_given"] <= 1.0
    figures = folder / "study" / "figures" / "06_embeddings"
    assert {p.name for p in figures.glob("*.png")} == {f"{row['run_id']}_test.png", f"{row['run_id']}_train.png",
                                                       "flips.png"}
    (hover,) = [c for c in nbformat.read(folder / "06_embeddings.ipynb", as_version=4).cells if c.get("id") == "hover"]
    loader, *plots = [o.data["text/html"] for o in hover.outputs]
    assert "root.Bokeh = bokeh" in loader and len(plots) == 2  # BokehJS once, then the train and test panels
    assert all(trained_metrics["run_id"] in p and "Bokeh.safely" in p for p in plots)
    page = render_html(folder / "06_embeddings.ipynb").read_text()
    assert page.count("root.Bokeh = bokeh") == 1 and "cdn.bokeh.org" not in page  # self-contained, offline


def test_06_embeddings_embeds_the_logits_of_runs_without_weights_or_features(trained, tmp_path):
    import shutil

    from ferlib import rundir

    folder, trained_metrics = trained
    shutil.copytree(folder / "runs" / trained_metrics["run_id"], tmp_path / "runs" / trained_metrics["run_id"])
    (tmp_path / "runs" / trained_metrics["run_id"] / rundir.MODEL).unlink()  # as a study's committed cell
    m = execute("06_embeddings", tmp_path, umap_max_points=200)
    assert m["sources"] == ["logits (read-out)"]
    assert [(r["run_id"], r["source"]) for r in m["runs"]] == [(trained_metrics["run_id"], "logits (read-out)")]


def test_07_review_labels(trained, tmp_path):
    import shutil

    import nbformat
    import numpy as np

    from ferlib.analysis import load_run
    from ferlib.analysis.review_widget import STATIC_TEXT
    from ferlib.study.report import render_html

    folder, trained_metrics = trained  # the run alone (05 may add fold runs to the shared folder: no cleanlab here)
    shutil.copytree(folder / "runs" / trained_metrics["run_id"], tmp_path / "runs" / trained_metrics["run_id"])
    m = execute("07_review_labels", tmp_path, page_size=3, ks=[5, 20], best_k=20)
    assert m["n_runs"] == 1 and m["shown"] == trained_metrics["run_id"] and m["ranking"] == "score"
    by_ranking = {r["ranking"]: r for r in m["precision"]}
    assert set(by_ranking) == {"score", "loss", "neg_margin", "neg_aum"}
    readout = load_run(tmp_path / "runs" / trained_metrics["run_id"]).readout
    flipped = readout["given"] != readout["clean"]
    top = np.argsort(-readout["method_score"], kind="stable")[:20]
    assert by_ranking["score"]["p_at_20"] == pytest.approx(flipped[top].mean())
    assert by_ranking["score"]["rate"] == pytest.approx(trained_metrics["noise_rate"])
    (best,) = m["best"]
    assert best["p_at_20_mean"] == max(r["p_at_20"] for r in m["precision"])
    figures = tmp_path / "study" / "figures" / "07_review_labels"
    assert len(list(figures.glob(f"{trained_metrics['run_id']}_*.png"))) == 8  # the first page of each class
    executed = nbformat.read(tmp_path / "07_review_labels.ipynb", as_version=4)
    widget = [o for c in executed.cells for o in c.get("outputs", []) if STATIC_TEXT in str(o.get("data", {}))]
    assert len(widget) == 1 and "application/vnd.jupyter.widget-view+json" in widget[0]["data"]
    page = render_html(tmp_path / "07_review_labels.ipynb").read_text()
    assert STATIC_TEXT in page and "widget-state+json" not in page  # no widget manager fetched from a CDN


def test_99_summary(trained):
    from ferlib import rundir
    from ferlib.cross_eval import evaluate_run

    folder, trained_metrics = trained
    (run_dir,) = rundir.finished_runs(folder / "runs")
    evaluate_run(run_dir, [f"ferplus:{SAMPLE}:mode=majority"])  # the sample's test split under another label rule
    m = execute("99_summary", folder)
    assert m["n_runs"] == 1
    (row,) = m["table"]
    assert row["method"] == "ce" and row["n_seeds"] == 1
    assert row["last.acc_mean"] == pytest.approx(trained_metrics["last"]["acc"])
    (timing,) = m["timings"]
    assert timing["ratio_to_ce"] == pytest.approx(1.0)
    (cross,) = m["cross_eval"]
    assert (cross["method"], cross["target"], cross["n_seeds"]) == ("ce", "ferplus:ferplus_sample:mode=majority", 1)
    assert 0.0 <= cross["acc_mean"] <= 1.0 and cross["n"] > 200
    (fit,) = m["fit"]  # the final model's fit of its training labels, from the read-out
    assert fit["method"] == "ce" and 0.0 <= fit["train_acc_given_mean"] <= 1.0
    assert [(r["noise"], r["method"]) for r in m["best_methods"]] == [("symmetric:0.3", "ce")]
    result = json.loads((run_dir / "result.json").read_text())
    assert sum(r["n"] for r in m["per_class"]) == result["split_counts"]["test"]  # every test face in one class
    assert all(r["low"] <= r["acc_mean"] <= r["high"] for r in m["per_class"] if r["n"])
    assert m["noise_contrast"] == [] and m["ambiguity"] == {}  # no annotator pair in this study
    figures = {p.name for p in (folder / "study" / "figures" / "99_summary").glob("*.png")}
    assert {"last.acc_by_noise.png", "memorisation.png", "curves.png", "confusion_symmetric0.3.png",
            "per_class_symmetric0.3.png"} <= figures
