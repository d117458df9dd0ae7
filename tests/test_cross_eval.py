"""Cross-dataset evaluation (ferlib.cross_eval): the class mapping and the masking on hand-made logits, target
parsing, ``evaluate_run`` on a tiny finished run (class-per-folder exports without neutral / contempt, another
FERPlus label rule), idempotence, the CLI's errors, the study step and the cross-dataset tables."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferlib import analysis, rundir
from ferlib.classes import CLASSES_7, CLASSES_8
from ferlib.cli import main
from ferlib.cross_eval import EvalTarget, class_mapping, cross_metrics, evaluate_run, masked_argmax
from ferlib.experiment import run
from ferlib.inference import load_model
from ferlib.metrics import classification_metrics
from ferlib.study import StudySpec, run_study

NO_NEUTRAL = CLASSES_8[1:]
NO_CONTEMPT = CLASSES_7


# ----------------------------------------------------------------------------------- mapping and masking
def test_masked_class_never_wins_even_with_the_highest_logit():
    mapping = class_mapping(CLASSES_8, NO_NEUTRAL)
    assert mapping.shared == NO_NEUTRAL and mapping.masked == ("neutral",) and mapping.excluded == ()
    logits = np.full((3, 8), -1.0)
    logits[:, 0] = 10.0  # neutral would win every row
    logits[0, 1], logits[1, 7], logits[2, 2] = 5.0, 4.0, 3.0
    np.testing.assert_array_equal(masked_argmax(logits, mapping.keep()), [1, 7, 2])
    # labels index the target's own class list, named (synonyms allowed) and in any order
    names = ("contempt", "happy", "Surprised")
    scores = cross_metrics(logits, np.array([1, 0, 0]), names, mapping)
    assert (scores["n"], scores["n_excluded"], scores["excluded"]) == (3, 0, {})
    expected = np.zeros((7, 7), int)  # shared order: happiness, surprise, ..., contempt
    expected[0, 0] = 1  # happiness -> happiness
    expected[6, 6] = 1  # contempt -> contempt
    expected[6, 1] = 1  # contempt -> surprise
    assert scores["confusion"] == expected.tolist()
    assert scores["acc"] == pytest.approx(2 / 3) and scores["per_class_acc"][0] == 1.0


def test_target_classes_the_run_lacks_are_excluded_and_counted():
    mapping = class_mapping(NO_CONTEMPT, ("happiness", "anger", "contempt"))
    assert mapping.shared == ("happiness", "anger") and mapping.excluded == ("contempt",)
    assert mapping.masked == ("neutral", "surprise", "sadness", "disgust", "fear")
    logits = np.zeros((4, 7))
    logits[:, 0] = 9.0  # neutral (masked) would win
    logits[:, 4] = 1.0  # anger wins among the shared classes
    labels = np.array([1, 4, 7, 7])  # canonical 8-class labels: happiness, anger, contempt, contempt
    scores = cross_metrics(logits, labels, CLASSES_8, mapping)
    assert (scores["n"], scores["n_excluded"], scores["excluded"]) == (2, 2, {"contempt": 2})
    assert scores["confusion"] == [[0, 1], [0, 1]] and scores["acc"] == 0.5


def test_no_shared_class_or_an_unknown_class_name_is_one_error_naming_both_sides():
    with pytest.raises(ValueError, match=r"^run ce-x \(neutral, .*fear\) and eval data folder:exp \(contempt\) "
                                         r"share no class: nothing to score$"):
        class_mapping(CLASSES_7, ("contempt",), run="run ce-x", target="eval data folder:exp")
    with pytest.raises(ValueError, match=r"eval data folder:exp: class 'c0' is not an expression class"):
        class_mapping(CLASSES_8, ("c0",), target="eval data folder:exp")


# ----------------------------------------------------------------------------------- targets
def test_targets_parse_reader_path_options_and_split():
    t = EvalTarget.parse("folder:/a:b/exports:num_classes=7,image_size=none,split=valid")
    assert (t.reader, t.data, t.options, t.split) == ("folder", "/a:b/exports", {"num_classes": 7,
                                                                                 "image_size": None}, "valid")
    assert str(t) == "folder:/a:b/exports:num_classes=7,image_size=None,split=valid"
    assert t.label == "folder:exports:num_classes=7,image_size=None,split=valid"
    assert EvalTarget.parse("ferplus:data/x").options == {} and EvalTarget.parse("ferplus:c:/x").data == "c:/x"
    for text, says in [("nope:x", r"unknown dataset 'nope'; valid: affectnet"),
                       ("ferplus:x:colour=1", r"bad option 'colour=1': expected key=value with key in mode"),
                       ("ferplus:x:mode=1,split=dev", r"split must be one of train, valid, test"),
                       ("ferplus", r"expected READER:PATH"), ("ferplus:x:num_classes=many", r"not a valid int")]:
        with pytest.raises(ValueError, match=rf"eval data '{text}': .*{says}"):
            EvalTarget.parse(text)


# ----------------------------------------------------------------------------------- a finished run
@pytest.fixture(scope="module")
def study(small_ferplus, tmp_path_factory):
    """A one-cell study (ce, one epoch, timm's test_resnet) and its finished run: (spec, runs folder, run)."""
    spec = StudySpec(name="tiny", data=str(small_ferplus), grid={"methods": ["ce"], "seeds": [0]},
                     train={"epochs": 1, "batch_size": 16, "image_size": 32, "device": "cpu"},
                     backbone={"name": "test_resnet"}, notebooks=["02_train"])
    runs = tmp_path_factory.mktemp("cross") / "runs"
    (cell,) = spec.run_specs(runs)
    return spec, runs, runs / run(cell)["run_id"]


@pytest.fixture
def finished(study, tmp_path) -> Path:
    """A copy of the study's finished run, for one test to write into."""
    return Path(shutil.copytree(study[2], tmp_path / "runs" / study[2].name))


@pytest.fixture
def export(small_ferplus, tmp_path):
    """``export(classes, name)``: a class-per-folder tree ``<name>/test/<class>/`` holding the FERPlus test images
    of ``classes`` (grayscale 48 px), as a user's export of FERPlus test would."""
    from ferlib.data import load_dataset

    test = load_dataset("ferplus", small_ferplus).subset("test")

    def write(classes, name: str = "export") -> Path:
        from PIL import Image

        for k, (image, label) in enumerate(zip(test.images, test.labels)):
            if CLASSES_8[label] in classes:
                folder = tmp_path / name / "test" / CLASSES_8[label]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image[..., 0]).save(folder / f"{k}.png")
        return tmp_path / name

    return write


def _expected(run_dir: Path, target: str, keep) -> dict:
    """The scores of ``run_dir`` on ``target`` recomputed here from the model's logits, masked by ``keep``."""
    from ferlib.engine import predict

    model, train, device = load_model(run_dir)
    data = EvalTarget.parse(target).load(1)
    logits, _ = predict(model, data.images, train, device)
    shared = [i for i, k in enumerate(keep) if k]
    pred = np.array([shared.index(p) for p in masked_argmax(logits, keep)])
    return classification_metrics(np.array([shared.index(y) for y in data.labels]), pred, num_classes=len(shared))


@pytest.mark.parametrize("classes, masked", [(NO_NEUTRAL, ["neutral"]), (NO_CONTEMPT, ["contempt"])])
def test_a_folder_export_is_scored_over_the_shared_classes(finished, export, classes, masked, capsys):
    target = f"folder:{export(classes)}"
    (entry,) = evaluate_run(finished, [target]).values()
    assert entry["mapping"]["masked"] == masked and entry["mapping"]["shared"] == list(classes)
    assert entry["n"] == 7 and entry["n_excluded"] == 0 and np.shape(entry["confusion"]) == (7, 7)
    keep = np.array([c in classes for c in CLASSES_8])
    assert {k: entry[k] for k in ("acc", "mean_acc", "macro_f1", "per_class_acc", "confusion")} == \
        _expected(finished, target, keep)
    assert f"masked out of the argmax: {masked[0]}; excluded samples (class not in the run): none; 7 scored" \
        in capsys.readouterr().out


def test_the_runs_own_test_split_and_another_label_rule(finished, small_ferplus, tiny_ferplus):
    result = rundir.read_result(finished)
    own = evaluate_run(finished, [f"ferplus:{small_ferplus}"])
    (entry,) = own.values()
    assert entry["mapping"]["masked"] == [] and entry["n"] == 8  # the run's own test split: its own last metrics
    assert {k: entry[k] for k in ("acc", "mean_acc", "macro_f1")} == pytest.approx(result["last"])
    rules = evaluate_run(finished, [f"ferplus:{tiny_ferplus}", f"ferplus:{tiny_ferplus}:mode=majority"])
    plurality, majority = rules.values()
    assert (plurality["n"], majority["n"]) == (3, 2)  # majority drops the tied face (TINY_FERPLUS_VOTES)
    assert plurality["mapping"]["shared"] == ["neutral", "anger", "fear"] and majority["options"]["mode"] == "majority"
    assert set(rundir.read_cross_eval(finished)) == set(own) | set(rules)


def test_load_model_rebuilds_the_runs_final_model(finished, small_ferplus):
    from ferlib.data import load_dataset
    from ferlib.engine import predict
    from ferlib.inference import run_features

    model, train, device = load_model(finished)
    readout = rundir.read_readout(finished)
    logits, feats = predict(model, load_dataset("ferplus", small_ferplus).subset("test").images, train, device,
                            features=True)
    np.testing.assert_array_equal(logits, readout["test_logits"])
    np.testing.assert_array_equal(run_features(finished, splits=("test",))["test"], feats)


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_evaluate_is_idempotent_and_changes_nothing_else_in_the_run(finished, export):
    before = _hashes(finished)
    tree = export(NO_NEUTRAL)
    first = evaluate_run(finished, [f"folder:{tree}"])
    after = _hashes(finished)
    assert set(after) == set(before) | {rundir.CROSS_EVAL}
    assert {k: v for k, v in after.items() if k != rundir.CROSS_EVAL} == before
    stamp = (finished / rundir.CROSS_EVAL).stat().st_mtime_ns
    moved = Path(shutil.copytree(tree, finished.parents[1] / "moved"))  # the same data elsewhere: the same key
    assert evaluate_run(finished, [f"folder:{moved}"]) == first
    assert _hashes(finished) == after and (finished / rundir.CROSS_EVAL).stat().st_mtime_ns == stamp
    assert rundir.RunDir(finished).retire()[:2] == [rundir.RESULT, rundir.CROSS_EVAL]  # a new generation drops the scores


# ----------------------------------------------------------------------------------- command line
def test_cli_evaluate_scores_and_bad_input_is_one_line(finished, export, tmp_path, capsys):
    tree = export(NO_CONTEMPT)
    assert main(["evaluate", str(finished), "--eval-data", f"folder:{tree}"]) == 0
    assert "masked out of the argmax: contempt" in capsys.readouterr().out
    odd = tmp_path / "odd" / "test" / "smirk"
    shutil.copytree(tree / "test" / "happiness", odd)
    for argv, says in [([str(finished), "--eval-data", f"folder:{odd.parents[1]}"], f"unknown class folder {odd}"),
                       ([str(finished), "--eval-data", "nope:x"], "unknown dataset 'nope'"),
                       ([str(finished), "--eval-data", f"folder:{tmp_path / 'none'}"], "does not exist"),
                       ([str(tmp_path), "--eval-data", f"folder:{tree}"], "no result.json")]:
        assert main(["evaluate", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err


def test_cli_train_scores_a_7_class_run_excluding_contempt(small_ferplus, export, tmp_path, capsys):
    common = ["train", "--data", str(small_ferplus), "--classes", "7", "--backbone", "test_resnet", "--epochs", "1",
              "--batch-size", "16", "--image-size", "32", "--device", "cpu", "--no-progress",
              "--out", str(tmp_path / "runs")]
    assert main([*common, "--eval-data", "ferplus:nowhere"]) == 2  # before any data loads
    assert not (tmp_path / "runs").exists()
    assert main([*common, "--eval-data", f"ferplus:{small_ferplus}:mode=majority"]) == 0
    (folder,) = rundir.finished_runs(tmp_path / "runs")
    (entry,) = rundir.read_cross_eval(folder).values()
    assert entry["target"] == "ferplus:ferplus:mode=majority" and entry["mapping"]["masked"] == []
    assert (entry["n"], entry["n_excluded"], entry["excluded"]) == (7, 1, {"contempt": 1})
    assert "excluded samples (class not in the run): contempt 1; 7 scored" in capsys.readouterr().out
    only_contempt = export(("contempt",))
    assert main(["evaluate", str(folder), "--eval-data", f"folder:{only_contempt}"]) == 2
    err = capsys.readouterr().err
    assert f"run {folder.name} (neutral, " in err and f"eval data folder:{only_contempt} (contempt) share no " \
        "class" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------- study and tables
@pytest.mark.notebook
def test_the_study_scores_its_runs_after_training_and_reports_the_table(study, finished, export, tmp_path):
    import dataclasses

    import nbformat

    spec, runs, run_dir = study[0], finished.parent, finished
    with pytest.raises(ValueError, match=r"eval data 'folder:x:colour=1'"):
        dataclasses.replace(spec, eval_data=["folder:x:colour=1"])
    notebooks = tmp_path / "notebooks"  # the cell notebook is never executed: the cell has finished
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook(metadata={"ferlib": {"role": "cell"}})
    nbformat.write(nb, notebooks / "02_train.ipynb")
    target = f"folder:{export(NO_NEUTRAL, 'no_neutral')}"
    lines: list[str] = []
    outcome = run_study(dataclasses.replace(spec, eval_data=[target]), runs_dir=runs, reports_dir=tmp_path / "rep",
                        notebooks_dir=notebooks, log=lines.append)
    assert outcome.ok and [c["status"] for c in outcome.cells] == ["skipped"]
    assert any(f"cross eval {run_dir.name}: folder:no_neutral [test]: 8 run classes -> 7 shared" in line
               for line in lines)
    index = (tmp_path / "rep" / "index.html").read_text()
    assert "<summary>Cross-dataset evaluation</summary>" in index and "folder:no_neutral · acc" in index
    assert "neutral masked out of the argmax" in index
    (row,) = analysis.cross_eval_summary(runs).to_dict("records")
    assert (row["method"], row["target"], row["n_seeds"], row["masked"]) == ("ce", "folder:no_neutral", 1, "neutral")


def _fake(root: Path, rid: str, method: str, seed: int, accs: dict) -> None:
    (root / rid).mkdir(parents=True)
    (root / rid / rundir.RESULT).write_text(json.dumps({"run_id": rid, "method": method, "noise": "symmetric:0.3",
                                                        "seed": seed, "last": {"acc": 0.5}}))
    entries = {f"key-{t}": {"target": t, "split": "test", "n": 10, "n_excluded": 0, "acc": a, "mean_acc": a / 2,
                            "macro_f1": a / 3, "mapping": {"shared": ["happiness"], "masked": []}}
               for t, a in accs.items()}
    (root / rid / rundir.CROSS_EVAL).write_text(json.dumps(entries))


def test_cross_eval_table_means_and_stds_over_seeds(tmp_path):
    _fake(tmp_path, "a", "ce", 0, {"ferplus:maj": 0.5, "folder:x": 0.2})
    _fake(tmp_path, "b", "ce", 1, {"ferplus:maj": 0.7, "folder:x": 0.4})
    _fake(tmp_path, "c", "nla", 0, {"ferplus:maj": 0.6})
    (tmp_path / "d").mkdir()  # an unfinished run: no row
    assert len(analysis.cross_eval_table(tmp_path)) == 5
    table = analysis.format_cross_eval(analysis.cross_eval_summary(tmp_path))
    assert list(table.columns) == ["method", "noise", "ferplus:maj · acc", "ferplus:maj · mean_acc",
                                   "folder:x · acc", "folder:x · mean_acc"]
    ce, nla = table.to_dict("records")
    assert (ce["method"], ce["ferplus:maj · acc"], ce["folder:x · mean_acc"]) == ("CE", "60.0 ± 14.1", "15.0 ± 7.1")
    assert nla["ferplus:maj · acc"] == "60.0" and pd.isna(nla["folder:x · acc"])  # one seed; no score
