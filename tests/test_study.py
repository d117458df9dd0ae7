"""Tests of ferlib.study: profiles, grid expansion, the papermill runner (with fake notebooks), the report.

The notebooks here are throwaway ones written with nbformat: a fake 02_train that writes the result.json of
its cell without training (and fails on purpose for one cell), an analysis notebook that writes a file, and
one that raises until a flag file exists.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from itertools import product
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from ferlib.experiment import RunSpec, run_id
from ferlib.methods import list_methods, method_class
from ferlib.study import StudySpec, list_profiles, load_profile, run_study, write_report
from ferlib.study.runner import _is_this_python, _kernel_python, ensure_kernel, main

ROOT = Path(__file__).resolve().parents[1]
REAL_FERPLUS = ROOT.parent / "shared" / "data" / "ferplus"
MEMORISE_RUNS = ROOT / "reports" / "evidence" / "cpu_memorise" / "runs"
#: Profiles that add cells to another profile's study, or draft one, whose grid needs no oracle ceiling.
WITHOUT_ORACLE = {"cpu_memorise_ablations": "ablation variants of three methods, paired with cpu_memorise's cells",
                  "cpu_memorise_full": "a draft on every train face, four methods"}
COMMON_PARAMS = 'data = ""\ndataset = "ferplus"\ndataset_options = {}\nruns_dir = ""\nstudy_dir = ""\n'

# The fake 02_train finds its run id in RUN_IDS, a literal {spec as sorted JSON: run_id} the test fills in: this
# checks that the notebook receives exactly asdict(RunSpec) of its cell, without importing torch in the kernel
# (RunSpec(**spec) round-trips to the same run id: test_grid_expands_to_methods_x_noise_x_seeds).
FAKE_TRAIN = """\
import json
from pathlib import Path

RUN_IDS = %r
rid = RUN_IDS[json.dumps(spec, sort_keys=True)]
assert spec["out"].startswith(runs_dir), (spec["out"], runs_dir)
with open(Path(study_dir) / "train_calls.txt", "a") as f:
    f.write(rid + "\\n")
method, seed = spec["method"], spec["train"]["seed"]
if method == "ldl_votes" and seed == 1 and not (Path(study_dir) / "fixed").exists():
    raise RuntimeError("deliberate failure of " + rid)
result = {"run_id": rid, "method": method, "oracle": method == "ldl_votes", "noise": spec["noise"],
          "noise_rate": 0.3, "seed": seed, "epochs": spec["train"]["epochs"], "best_epoch": 1,
          "time_per_epoch_s": 1.0, "method_options": spec["method_options"],
          "last": {"acc": 0.5 + 0.1 * seed, "mean_acc": 0.4}, "best": {"acc": 0.6, "mean_acc": 0.5}}
run_dir = Path(spec["out"]) / rid
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "result.json").write_text(json.dumps(result))
"""

FAKE_SUMMARY = """\
from pathlib import Path
n = len(list(Path(runs_dir).glob("*/result.json")))
(Path(study_dir) / "summary_ran.txt").write_text(str(n))
print("summary of", n, "runs")
"""

FAKE_ABLATION = """\
import json
from pathlib import Path
(Path(study_dir) / "ablation_runs.json").write_text(json.dumps(
    sorted(p.parent.name for p in (Path(runs_dir) / "ablations").glob("*/result.json"))))
"""

FAKE_NOISE = """\
import json
from pathlib import Path
(Path(study_dir) / "noise_params.json").write_text(json.dumps(
    {"noise": noise, "seed": seed, "train_subset_given": "train_subset" in globals()}))
"""

FAKE_PARAMS = """\
import json
from pathlib import Path
(Path(study_dir) / "uncertainty_params.json").write_text(json.dumps(
    {"cleanlab_folds": cleanlab_folds, "cleanlab_epochs": cleanlab_epochs, "n_faces": n_faces,
     "undeclared_given": "undeclared" in globals()}))
"""

FAKE_FAILING = """\
from pathlib import Path
if not (Path(study_dir) / "fixed").exists():
    raise ValueError("uncertainty notebook broken on purpose")
"""


def write_notebook(path: Path, title: str, params: str, body: str, **role) -> Path:
    """A notebook with a parameters cell and a body; ``role`` (e.g. ``role="cell"``) goes to its metadata."""
    nb = nbformat.v4.new_notebook()
    if role:
        nb.metadata["ferlib"] = role
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}"), cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def tiny_spec(tmp_path: Path, **overrides) -> StudySpec:
    (tmp_path / "data").mkdir(exist_ok=True)
    values = dict(methods=["ce", "ldl_votes"], noise=["symmetric:0.3"], seeds=[0, 1], train={"epochs": 2},
                  notebooks=["00_prepare_data", "01_inject_noise", "02_train", "03_ablations", "05_uncertainty",
                             "99_summary"], cleanlab_folds=0, eval_data=[])  # fake runs: nothing to score
    values.update(overrides)
    return load_profile("smoke", data=tmp_path / "data", **values)


# ----------------------------------------------------------------------------------- profiles
def test_the_brief_profiles_are_shipped():
    assert {"smoke", "cpu", "cpu_full", "cpu_memorise", "full"} <= set(list_profiles())


@pytest.mark.parametrize("name", list_profiles())
def test_shipped_profiles_load_and_validate(name):
    spec = load_profile(name, data="somewhere")
    assert spec.name == name and spec.data == "somewhere"
    methods = spec.grid.resolved_methods()
    if spec.grid.methods == "all":
        assert methods == list_methods()  # "all" follows the registry
    oracles = [m for m in methods if method_class(m).oracle]
    assert oracles or name in WITHOUT_ORACLE, "every shipped study has an oracle (ldl_votes) as its ceiling"
    for m in oracles:
        assert f"{m} [oracle]" in spec.describe()
    grids = [spec.grid, *spec.extra_grids]
    assert len(spec.run_specs("runs")) == sum(len(g.resolved_methods()) * len(g.noise) * len(g.seeds) for g in grids)


def test_profile_sizes_follow_the_brief():
    smoke, cpu, full = (load_profile(n) for n in ("smoke", "cpu", "full"))
    # smoke: the whole report in minutes, a baseline, methods and the oracle; every method is trained by the tests
    assert smoke.data == "data/ferplus_sample" and smoke.train["epochs"] <= 6 and smoke.grid.seeds == [0]
    assert {"ce", "ldl_votes"} < set(smoke.grid.resolved_methods()) and len(smoke.cells("runs")) <= 6
    assert cpu.train_subset == 6000 and cpu.train["epochs"] == 30
    assert full.train_subset is None and full.grid.seeds == [0, 1, 2] and full.ablations
    protocol = {"symmetric:0.1", "symmetric:0.2", "symmetric:0.3", "class_dependent:0.3", "annotator"}
    assert protocol <= set(full.grid.noise)
    assert full.cleanlab_folds == 5 and full.cleanlab_train == {} and smoke.cleanlab_folds == 2
    for spec in (cpu, full):  # landmarks / VA of every train face (None: all)
        assert spec.notebook_parameters["00_prepare_data"] == {"extract_limit": None}
    assert smoke.notebook_parameters == {}


def test_the_memorisation_profile_follows_issue_14():
    spec = load_profile("cpu_memorise")
    assert {"ce", "lanet", "ldlva", "nla"} < set(spec.grid.methods) and len(spec.grid.methods) >= 7
    assert method_class("ldl_votes").oracle and "ldl_votes" in spec.grid.methods
    assert spec.grid.noise == ["symmetric:0.3", "annotator", "annotator_matched"] and spec.grid.seeds == [0, 1, 2]
    assert spec.backbone["weights"] == "ssl"  # the start issue 13 measured best; random init as the contrast
    assert spec.init_contrast["weights"] is None and spec.init_contrast["methods"] == ["ce", "lanet", "ldlva", "nla"]
    assert spec.cleanlab_folds == 2 and spec.notebook_parameters["00_prepare_data"] == {"extract_limit": None}
    assert spec.clean_control == ["ce"]  # the report's clean-label rows (committed ce-none-s* cells) are cells


def test_the_ablation_profile_adds_only_variants_to_cpu_memorises_cells(tmp_path):
    (tmp_path / "data").mkdir()
    spec, memorise = (load_profile(n, data=tmp_path / "data") for n in ("cpu_memorise_ablations", "cpu_memorise"))
    runs = tmp_path / "runs"
    grid = [run_id(s) for s in spec.run_specs(runs)]
    assert len(grid) == 18 and set(grid) <= {run_id(s) for s in memorise.run_specs(runs)}  # the same cells
    cells = spec.ablation_specs(runs)
    assert "full" not in {s.variant for s in cells}  # the full method of each pair is the grid's cell
    expected = {(m, v, n, seed) for m in ("lanet", "ldlva", "nla")
                for v in method_class(m).ablations if not (m == "ldlva" and v == "bank_neighbours")
                for n in ("symmetric:0.3", "annotator") for seed in (0, 1, 2)}
    assert sorted((s.method, s.variant, s.noise, s.train.seed) for s in cells) == sorted(expected)
    assert len(cells) == 66 and not {run_id(s) for s in cells} & set(grid)
    # the same variants, as cpu_memorise's own ablation cells once it lists these methods, noises and seeds
    folded = dataclasses.replace(memorise, ablations=True, ablation_methods=["lanet", "ldlva", "nla"],
                                 ablation_noise=spec.ablation_noise, ablation_seeds=spec.ablation_seeds)
    assert {run_id(s) for s in folded.ablation_specs(runs)} == {run_id(s) for s in cells}


@pytest.mark.slow
@pytest.mark.skipif(not REAL_FERPLUS.is_dir(), reason=f"{REAL_FERPLUS} not present")
def test_the_ablation_profiles_grid_cells_are_the_committed_cpu_memorise_cells(capsys):
    code = main(["--profile", "cpu_memorise_ablations", "--data", str(REAL_FERPLUS), "--runs", str(MEMORISE_RUNS),
                 "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len([x for x in lines if re.match(r"grid +\S+  finished$", x)]) == 18
    ablation = dict(re.match(r"ablation +ablations/(\S+)  (finished|to run)$", x).groups()
                    for x in lines if x.startswith("ablation "))
    committed = {p.parent.name for p in (MEMORISE_RUNS / "ablations").glob("*/result.json")}
    assert len(ablation) == 66 and {rid for rid, state in ablation.items() if state == "finished"} == committed


def test_the_full_set_draft_is_cpu_memorise_on_every_train_face():
    spec, memorise = load_profile("cpu_memorise_full"), load_profile("cpu_memorise")
    assert spec.train_subset is None and memorise.train_subset == 5000
    for key in ("dataset", "dataset_options", "recipe", "train", "backbone", "pretrain", "clean_control"):
        assert getattr(spec, key) == getattr(memorise, key), key  # only the train faces differ
    assert {"ce", "nla", "scn", "lanet"} <= set(spec.grid.methods) and spec.grid.noise == memorise.grid.noise


def test_cpu_full_profile_trains_every_image_with_a_half_width_resnet():
    from ferlib.backbones import create_model

    spec = load_profile("cpu_full").run_specs("runs")[0]
    assert spec.train_subset is None and spec.train.epochs == 30 and spec.train.augment.erase == 0
    assert create_model(spec.backbone, 8).feature_dim == 256


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nepoch: 3\ngrid: {seeds: [0]}\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'epoch'.*valid keys: .*grid.*train_subset"):
        load_profile(bad)
    bad.write_text("grid: {seed: [0]}\n")
    with pytest.raises(ValueError, match=r"'seed' in grid; valid keys: methods, noise, seeds"):
        load_profile(bad)
    with pytest.raises(ValueError, match=r"'epochz' in override; valid keys: .*seeds"):
        load_profile("smoke", epochz=3)
    with pytest.raises(ValueError, match=r"'epoch' in train; valid keys: epochs, batch_size"):
        load_profile("smoke", train={"epoch": 3})
    with pytest.raises(ValueError, match=r"train.seed is not a study setting"):
        load_profile("smoke", train={"seed": 3})


def test_notebook_parameters_are_validated():
    with pytest.raises(ValueError, match=r"unknown notebook\(s\) '05_uncertanty' in notebook_parameters; "
                                         r"valid: 00_prepare_data, .*05_uncertainty, .*99_summary"):
        load_profile("smoke", notebook_parameters={"05_uncertanty": {"cleanlab_folds": 5}})
    with pytest.raises(ValueError, match=r"notebook_parameters.05_uncertainty must be a mapping"):
        load_profile("smoke", notebook_parameters={"05_uncertainty": [5]})
    with pytest.raises(ValueError, match=r"runs_dir is set by the study runner"):
        load_profile("smoke", notebook_parameters={"05_uncertainty": {"runs_dir": "elsewhere"}})
    with pytest.raises(ValueError, match=r"seed is set by the study runner"):
        load_profile("smoke", notebook_parameters={"01_inject_noise": {"seed": 3}})
    # an override merges per notebook: the profile's other parameters of that notebook stay
    spec = load_profile("full", notebook_parameters={"00_prepare_data": {"n_faces": 4}})
    assert spec.notebook_parameters["00_prepare_data"] == {"extract_limit": None, "n_faces": 4}


def test_unknown_profile_lists_profiles():
    shipped = ", ".join(list_profiles())
    assert {"cpu", "cpu_full", "cpu_memorise", "full", "smoke"} <= set(list_profiles())
    with pytest.raises(ValueError, match=f"unknown study profile 'nope'; valid: {shipped} "):
        load_profile("nope")


def test_bad_grid_values_raise():
    with pytest.raises(ValueError, match=r"unknown method 'nope'; valid: .*ce"):
        load_profile("smoke", methods=["ce", "nope"])
    with pytest.raises(ValueError, match=r"bad noise spec 'symmetric:2'"):
        load_profile("smoke", noise=["symmetric:2"])
    with pytest.raises(ValueError, match=r"grid.seeds must be a non-empty list"):
        load_profile("smoke", seeds=[])
    with pytest.raises(ValueError, match=r"TrainConfig.optimizer must be one of"):
        load_profile("smoke", train={"optimizer": "lbfgs"})
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; valid: .*ferplus"):
        load_profile("smoke", dataset="nope")
    with pytest.raises(ValueError, match=r"grid.noise lists symmetric:0.3 more than once"):
        load_profile("smoke", noise=["symmetric:0.3", "symmetric:0.30"])


def test_overrides_merge_train_settings():
    spec = load_profile("smoke", train={"epochs": 2}, seeds=[3])
    assert spec.train["epochs"] == 2 and spec.train["batch_size"] == 64 and spec.grid.seeds == [3]
    assert spec.grid.noise == load_profile("smoke").grid.noise


# ----------------------------------------------------------------------------------- grid
def test_grid_expands_to_methods_x_noise_x_seeds(tmp_path):
    spec = tiny_spec(tmp_path, noise=["none", "symmetric:0.30"], seeds=[0, 1, 2])
    specs = spec.run_specs(tmp_path / "runs")
    assert len(specs) == 2 * 2 * 3
    assert {(s.method, s.noise, s.train.seed) for s in specs} == \
        set(product(["ce", "ldl_votes"], ["none", "symmetric:0.3"], [0, 1, 2]))  # canonical noise
    ids = [run_id(s) for s in specs]
    assert len(set(ids)) == 12
    assert [s.train.seed for s in specs[:4]] == [0, 0, 0, 0]  # seed-major order
    for s in specs:
        assert s.out == str((tmp_path / "runs").absolute()) and Path(s.data).is_absolute()
        assert s.train.epochs == 2 and s.train.progress is False
        # what 02_train receives (JSON) gives back the same cell
        again = RunSpec(**json.loads(json.dumps(dataclasses.asdict(s))))
        assert run_id(again) == run_id(s)


def test_ablation_cells_merge_the_profiles_options_and_fold_cells_cover_relabelling_noise(tmp_path, monkeypatch):
    monkeypatch.setattr(method_class("ldl_votes"), "ablations", {"no_threshold": {"min_votes": 0.0},
                                                                 "as_profile": {"min_votes": 2.0},
                                                                 "default": {}})
    monkeypatch.setattr(method_class("ce"), "ablations", {})
    spec = tiny_spec(tmp_path, noise=["none", "symmetric:0.2"], ablations=True, ablation_train={"epochs": 1},
                     method_options={"ldl_votes": {"min_votes": 2.0}}, cleanlab_folds=3)
    runs = tmp_path / "runs"
    ablation = spec.ablation_specs(runs)
    # full + the one variant that changes something; the profile's options of that method kept in both
    assert [(s.method, s.variant, s.method_options) for s in ablation] == \
        [("ldl_votes", "full", {"min_votes": 2.0}), ("ldl_votes", "no_threshold", {"min_votes": 0.0})]
    for s in ablation:  # first noise other than none, first seed, ablation_train, own folder
        assert (s.noise, s.train.seed, s.train.epochs, Path(s.out)) == ("symmetric:0.2", 0, 1, runs / "ablations")
    folds = spec.fold_specs(runs)
    assert [(s.noise, s.train.seed, s.fold) for s in folds] == \
        [("symmetric:0.2", seed, [i, 3]) for seed in (0, 1) for i in range(3)]  # "none" flips nothing
    assert {(s.method, Path(s.out)) for s in folds} == {("ce", runs / "cleanlab")}
    kinds = [kind for kind, _ in spec.cells(runs)]
    assert kinds == ["grid"] * 8 + ["ablation"] * 2 + ["fold"] * 6
    assert len({run_id(s) for _, s in spec.cells(runs)}) == 16
    assert tiny_spec(tmp_path, ablations=False).ablation_specs(runs) == []
    with pytest.raises(ValueError, match="cleanlab_folds must be 0 .none. or an integer >= 2"):
        tiny_spec(tmp_path, cleanlab_folds=1)


def test_ablation_cells_cover_their_noises_and_seeds_and_the_full_method_is_the_grid_cell(tmp_path, monkeypatch):
    monkeypatch.setattr(method_class("ldl_votes"), "ablations", {"threshold": {"min_votes": 1.0}})
    monkeypatch.setattr(method_class("ce"), "ablations", {})
    runs = tmp_path / "runs"
    noise = ["symmetric:0.3", "annotator"]
    spec = tiny_spec(tmp_path, noise=noise, seeds=[0, 1, 2], ablations=True, ablation_noise=noise,
                     ablation_seeds=[0, 2])
    cells = spec.ablation_specs(runs)
    # seed-major, every listed noise; no full cell: the grid trains exactly that RunSpec
    assert [(s.method, s.variant, s.noise, s.train.seed) for s in cells] == \
        [("ldl_votes", "threshold", n, seed) for seed in (0, 2) for n in noise]
    grid = {(s.method, s.noise, s.train.seed): run_id(s) for s in spec.run_specs(runs)}
    variants = {run_id(s) for s in cells}
    assert len(variants) == 4 and not variants & set(grid.values())
    assert "ablations: ldl_votes at symmetric:0.3, annotator, seeds 0, 2" in spec.describe()
    # a noise or a train setting the grid lacks: the full method is an ablation cell of its own
    for extra in ({"ablation_noise": "class_dependent:0.3"}, {"ablation_train": {"epochs": 1}}):
        other = tiny_spec(tmp_path, noise=noise, ablations=True, **extra)
        full = [s for s in other.ablation_specs(runs) if s.variant == "full"]
        assert [(s.method, s.train.seed, Path(s.out)) for s in full] == [("ldl_votes", 0, runs / "ablations")]
        assert run_id(full[0]) not in grid.values()
    # one noise as a plain string stays valid (the shipped profiles); the default is the grid's first seed
    one = tiny_spec(tmp_path, noise=noise, ablations=True, ablation_noise="annotator")
    assert one.ablation_noise == "annotator" and one.ablation_noises() == ["annotator"]
    assert [(s.noise, s.train.seed) for s in one.ablation_specs(runs)] == [("annotator", 0)]
    for bad, match in [({"ablation_seeds": [0, 0]}, "ablation_seeds lists 0 more than once"),
                       ({"ablation_seeds": []}, "ablation_seeds must be a non-empty list of integers"),
                       ({"ablation_noise": ["annotator", "symmetric:2"]}, "bad noise spec 'symmetric:2'")]:
        with pytest.raises(ValueError, match=match):
            tiny_spec(tmp_path, ablations=True, **bad)
    # ablation_methods narrows the methods to grid methods with variants; anything else is refused by name
    monkeypatch.setattr(method_class("ce"), "ablations", {"smooth": {"label_smoothing": 0.1}})
    both = tiny_spec(tmp_path, noise=noise, ablations=True)
    assert {s.method for s in both.ablation_specs(runs)} == {"ce", "ldl_votes"}
    only = tiny_spec(tmp_path, noise=noise, ablations=True, ablation_methods=["ce"])
    assert {s.method for s in only.ablation_specs(runs)} == {"ce"}
    with pytest.raises(ValueError, match=r"ablation_methods lists 'nla', not a grid method with ablation variants; "
                                         r"valid: ce, ldl_votes"):
        tiny_spec(tmp_path, noise=noise, ablations=True, ablation_methods=["nla"])


def test_init_contrast_cells_start_the_listed_methods_from_the_other_weights(tmp_path):
    spec = tiny_spec(tmp_path, noise=["symmetric:0.3", "annotator"], backbone={"weights": "ssl"},
                     init_contrast={"weights": None, "methods": ["ce"]})
    runs = tmp_path / "runs"
    contrast = spec.init_specs(runs)
    assert [(s.method, s.noise, s.train.seed) for s in contrast] == \
        [("ce", n, seed) for seed in (0, 1) for n in ("symmetric:0.3", "annotator")]
    assert {(s.backbone.weights, Path(s.out)) for s in contrast} == {(None, runs / "init")}
    assert {s.backbone.weights for s in spec.run_specs(runs)} == {"ssl"}
    grid_ce = {(s.noise, s.train.seed): run_id(s) for s in spec.run_specs(runs) if s.method == "ce"}
    assert all(run_id(s) != grid_ce[(s.noise, s.train.seed)] for s in contrast)  # the start is in the run id
    assert [kind for kind, _ in spec.cells(runs)][-4:] == ["init"] * 4
    assert "init contrast: ce also from weights none (random init) at symmetric:0.3, annotator" in spec.describe()
    assert tiny_spec(tmp_path).init_specs(runs) == []
    one = tiny_spec(tmp_path, noise=["symmetric:0.3", "annotator"], backbone={"weights": "ssl"},
                    init_contrast={"weights": None, "methods": ["ce"], "noise": ["symmetric:0.30"]})
    assert [(s.noise, s.train.seed) for s in one.init_specs(runs)] == [("symmetric:0.3", 0), ("symmetric:0.3", 1)]
    for bad, match in [({"weights": None}, "needs both"), ({"weights": None, "methods": ["cee"]}, "cee"),
                       ({"weights": "ssl", "methods": ["ce"]}, "the grid's own backbone.weights"),
                       ({"weights": None, "methods": ["ce"], "seeds": [0]}, "unknown key.*seeds"),
                       ({"weights": None, "methods": ["ce"], "noise": ["annotator"]}, "not in grid.noise")]:
        with pytest.raises(ValueError, match=match):
            tiny_spec(tmp_path, backbone={"weights": "ssl"}, init_contrast=bad)


def test_clean_control_cells_are_the_grid_cells_at_noise_none(tmp_path):
    spec = tiny_spec(tmp_path, noise=["symmetric:0.3", "annotator"], clean_control=["ce"])
    runs = tmp_path / "runs"
    control = spec.control_specs(runs)
    assert [(s.method, s.noise, s.train.seed, Path(s.out)) for s in control] == \
        [("ce", "none", seed, runs) for seed in (0, 1)]  # the grid's folder: the report reads them beside it
    grid_ce = [s for s in spec.run_specs(runs) if s.method == "ce" and s.noise == "symmetric:0.3"]
    # the grid's cell with the noise switched off and nothing else: the run ids the committed control cells have
    assert [run_id(s) for s in control] == [run_id(dataclasses.replace(s, noise="none")) for s in grid_ce]
    kinds = [kind for kind, _ in spec.cells(runs)]
    assert kinds == ["grid"] * 8 + ["control"] * 2
    assert "clean control: ce also at noise none, every seed" in spec.describe()
    assert tiny_spec(tmp_path).control_specs(runs) == []
    with pytest.raises(ValueError, match="cee"):
        tiny_spec(tmp_path, clean_control=["cee"])
    with pytest.raises(ValueError, match=r"clean_control \['ce'\]: the grid already trains them at noise 'none'"):
        tiny_spec(tmp_path, noise=["none", "symmetric:0.3"], clean_control=["ce"])


def test_extra_grids_add_seeds_where_claims_are_close_as_grid_cells_of_the_same_settings(tmp_path):
    extra = [{"methods": ["ce"], "noise": ["symmetric:0.3", "none"], "seeds": [2]}]
    spec = tiny_spec(tmp_path, clean_control=["ce"], extra_grids=extra)
    runs = tmp_path / "runs"
    cells = spec.cells(runs)
    assert [(k, s.method, s.noise, s.train.seed) for k, s in cells] == [
        ("grid", "ce", "symmetric:0.3", 0), ("grid", "ldl_votes", "symmetric:0.3", 0),
        ("grid", "ce", "symmetric:0.3", 1), ("grid", "ldl_votes", "symmetric:0.3", 1),
        ("grid", "ce", "symmetric:0.3", 2), ("grid", "ce", "none", 2),
        ("control", "ce", "none", 0), ("control", "ce", "none", 1)]
    # an extra cell is the cell a grid with that seed would train: the run id a later, wider grid gives it
    wider = tiny_spec(tmp_path, seeds=[0, 1, 2], clean_control=["ce"])
    assert run_id(cells[4][1]) == run_id(wider.run_specs(runs)[4])
    assert run_id(cells[5][1]) == run_id(wider.control_specs(runs)[2])
    assert "extra grid: ce at symmetric:0.3, none, seeds 2" in spec.describe()
    every = tiny_spec(tmp_path, extra_grids=[{"methods": "all", "noise": ["symmetric:0.3"], "seeds": [2]}])
    assert every.to_dict()["extra_grids"][0]["methods"] == list_methods()  # study.json counts its cells by name
    for twice, match in [([{"methods": ["ce"], "seeds": [1]}], "ce at noise symmetric:0.3, seed 1 again"),
                         ([{"methods": ["ce"], "noise": ["none"], "seeds": [0]}], "ce at noise none, seed 0 again"),
                         (extra * 2, r"extra_grids\[1\] lists ce"),
                         ([{"seed": [3]}], r"unknown key.*extra_grids\[0\]")]:
        with pytest.raises(ValueError, match=match):
            tiny_spec(tmp_path, clean_control=["ce"], extra_grids=twice)
    # a grid override names the cells to train: the profile's extra grids go
    profile = tmp_path / "p.yaml"
    profile.write_text("grid: {methods: [ce], seeds: [0]}\nextra_grids: [{methods: [ce], seeds: [1]}]\n")
    assert len(load_profile(profile, data=tmp_path / "data").run_specs(runs)) == 2
    assert len(load_profile(profile, data=tmp_path / "data", seeds=[1]).run_specs(runs)) == 1


def test_kernel_runs_this_interpreter():
    name = ensure_kernel()
    assert name == "python3"
    assert _is_this_python(_kernel_python(name))


def test_cli_dry_run_lists_cells(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    code = main(["--profile", "smoke", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                 "--methods", "ce", "nla", "--seeds", "0", "1", "--epochs", "1", "--ablations", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    # every variant of the first seed; the full method is the grid's own cell, not an ablation cell
    assert len(re.findall(r"^ablation +ablations/nla-symmetric0\.3-s0-[0-9a-f]{8}  to run$", out, re.M)) == \
        len(method_class("nla").ablations)
    assert len(re.findall(r"^grid +nla-symmetric0\.3-s[01]-[0-9a-f]{8}  to run$", out, re.M)) == 2
    assert len(re.findall(r"^grid +ce-symmetric0\.3-s[01]-[0-9a-f]{8}  to run$", out, re.M)) == 2
    assert len(re.findall(r"^fold +cleanlab/ce-symmetric0\.3-s[01]-[0-9a-f]{8}  to run$", out, re.M)) == 4
    assert main(["--profile", "nope", "--dry-run"]) == 2


def test_a_train_subset_below_a_cells_batch_size_is_refused_in_one_line(tmp_path, capsys):
    """Before any data loads (the data folder is empty): every such cell would fail once its data loaded."""
    (tmp_path / "data").mkdir()
    argv = ["--profile", "smoke", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--dry-run"]
    assert main([*argv, "--train-subset", "63"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"--train-subset\) 63 gives the \w+ cells 63 train faces, fewer than their "
                                       r"batch size 64", err[0]), err
    assert main([*argv, "--train-subset", "100"]) == 2  # the cleanlab folds train on half of it
    assert "cleanlab fold cells (2 folds) 50 train faces, fewer than their batch size 64" in capsys.readouterr().err
    assert main([*argv, "--train-subset", "128"]) == 0


# ----------------------------------------------------------------------------------- report table
def test_report_summary_means_and_stds_over_seeds(tmp_path):
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    for rid, method, oracle, seed, last in [("a", "ce", False, 0, 0.5), ("b", "ce", False, 1, 0.6),
                                            ("c", "ldl_votes", True, 0, 0.8), ("d", "ce", False, 0, 0.7)]:
        result = {"run_id": rid, "method": method, "oracle": oracle, "noise": "symmetric:0.3", "seed": seed,
                  "epochs": 4 if rid == "d" else 2, "noise_rate": 0.3, "best_epoch": 1, "time_per_epoch_s": 1.0,
                  "last": {"acc": last, "mean_acc": 0.4}, "best": {"acc": last + 0.1, "mean_acc": 0.5}}
        (runs / rid).mkdir(parents=True)
        (runs / rid / "result.json").write_text(json.dumps(result))
    index = write_report(runs_dir=runs, reports_dir=reports).read_text()

    summary = pd.read_csv(reports / "summary.csv", dtype={"seeds": str})
    assert list(summary["method"]) == ["ce", "ce", "ldl_votes"]  # oracle rows last; other epochs: own row
    ce = summary.iloc[0]
    assert ce["seeds"] == "0,1" and ce["n_seeds"] == 2 and ce["epochs"] == 2
    assert ce["last.acc_mean"] == pytest.approx(0.55) and ce["last.acc_std"] == pytest.approx(math.sqrt(0.005))
    assert summary.iloc[1]["last.acc_mean"] == pytest.approx(0.7) and math.isnan(summary.iloc[2]["last.acc_std"])

    # every configuration, folded: mean ± std over the two seeds in %, display names, the oracle marked and last
    body = index.split("<table class='dataframe results'>", 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr(?: class='(oracle)')?>(.*?)</tr>", body)
    cells = [(oracle, re.findall(r"<td[^>]*>(.*?)</td>", row)) for oracle, row in rows]
    assert [(oracle, c[0], c[1], c[2], c[4], c[5]) for oracle, c in cells] == \
        [("", "CE", "shared", "30% symmetric", "0,1", "2"), ("", "CE", "shared", "30% symmetric", "0", "4"),
         ("oracle", "oracle (human votes)", "shared", "30% symmetric", "0", "2")]
    assert cells[0][1][6:10] == ["55.0 ± 7.1", "40.0 ± 0.0", "65.0 ± 7.1", "50.0 ± 0.0"]  # last acc, mean acc; best
    assert cells[2][1][6] == "80.0"  # a single seed: no std
    assert "Every configuration" in index.split("<table class='dataframe results'>", 1)[0].rsplit("<details>", 1)[1]
    assert "Oracle rows read what a noisy-label method may not" in index
    # the headline: the runs of the setting most share (run d trained 4 epochs: left out and said so)
    assert rows_of(index, "headline", exact=True)[0][:2] == ["CE", "55.0 ± 7.1"]
    assert "1 run(s) of other settings (epochs, subset, network ...) in the runs folder are left out" in index


def test_report_finds_every_kind_of_cell_in_its_own_folder(tmp_path):
    """Grid cells directly under the runs folder, the others in ablations/, cleanlab/ and init/ (cell_dir)."""
    from ferlib.study.spec import CELL_FOLDERS, cell_dir

    runs, reports = tmp_path / "runs", tmp_path / "reports"
    extra = {"grid": {}, "control": {"noise": "none"}, "ablation": {"variant": "full"}, "fold": {"fold": [1, 2]},
             "init": {}}
    acc = {"grid": 0.5, "control": 0.55, "ablation": 0.6, "fold": 0.7, "init": 0.8}
    for kind in CELL_FOLDERS:
        result = {"run_id": f"{kind}-cell", "method": "ce", "noise": "symmetric:0.3", "seed": 0,
                  "last": {"acc": acc[kind]}, "best": {"acc": 0.45}, **extra[kind]}
        (cell_dir(runs, kind) / f"{kind}-cell").mkdir(parents=True)
        (cell_dir(runs, kind) / f"{kind}-cell" / "result.json").write_text(json.dumps(result))
    (reports / "runs").mkdir(parents=True)
    for rid in [f"{kind}-cell" for kind in CELL_FOLDERS] + ["unfinished-cell"]:
        (reports / "runs" / f"{rid}.html").write_text("<html></html>")
    index = write_report(runs_dir=runs, reports_dir=reports).read_text()
    lines = dict(re.findall(r"<a href='runs/([\w-]+)\.html'>[\w-]+</a> &mdash; ([^<]*)</li>", index))
    assert lines["grid-cell"] == "CE, 30% symmetric, seed 0: test accuracy 50.0% at the last epoch, 45.0% " \
                                 "early-stopped"
    assert lines["ablation-cell"].startswith("CE, variant full, 30% symmetric, seed 0: test accuracy 60.0%")
    assert lines["fold-cell"].startswith("CE, fold 1 of 2 held out as the test split, 30% symmetric, seed 0: test "
                                         "accuracy 70.0%")
    assert "test accuracy 80.0%" in lines["init-cell"]
    assert lines["control-cell"].startswith("CE, clean labels, seed 0: test accuracy 55.0%")
    assert lines["unfinished-cell"] == "02_train for this cell (no result.json: unfinished or failed)"


def test_report_opens_with_the_answer(tmp_path):
    from scipy import stats

    runs, reports = tmp_path / "runs", tmp_path / "reports"
    for method, gains in [("ce", [0.0] * 3), ("nla", [0.04, 0.06, 0.05])]:
        for seed, (base, gain) in enumerate(zip([0.50, 0.60, 0.55], gains)):
            rid = f"{method}{seed}"
            (runs / rid).mkdir(parents=True)
            (runs / rid / "result.json").write_text(json.dumps({
                "run_id": rid, "method": method, "noise": "symmetric:0.3", "seed": seed, "epochs": 3,
                "backbone": {"name": "resnet18", "weights": "ssl"},
                "last": {"acc": base + gain, "mean_acc": base}}))
            accs = [base - 0.1, base + 0.04, base + gain]
            pd.DataFrame({"epoch": [1, 2, 3], "test_acc": accs, "train_loss": [2.0, 1.0, 0.5]}).to_csv(
                runs / rid / "epochs.csv", index=False)
    for seed, loss in enumerate([0.03, 0.04, 0.035]):  # NLA without NAW, an ablation cell (no read-out kept)
        (runs / "ablations" / f"nonaw{seed}").mkdir(parents=True)
        (runs / "ablations" / f"nonaw{seed}" / "result.json").write_text(json.dumps({
            "run_id": f"nonaw{seed}", "method": "nla", "variant": "no_naw", "noise": "symmetric:0.3", "seed": seed,
            "epochs": 3, "backbone": {"name": "resnet18", "weights": "ssl"},
            "last": {"acc": [0.54, 0.66, 0.60][seed] - loss, "mean_acc": 0.5}, "files": {"readout.npz": 9}}))
    index = write_report(runs_dir=runs, reports_dir=reports).read_text()

    # the setting, the findings in sentences, the headline figure and table come first; every verdict is folded below
    order = [index.index(f"<h2 id='{a}'>") for a in ("setting", "findings", "headline-table", "details")]
    assert order == sorted(order)
    findings = index.split("<ol class='findings'>", 1)[1].split("</ol>", 1)[0]
    p = stats.ttest_rel([0.54, 0.66, 0.60], [0.50, 0.60, 0.55]).pvalue
    assert "From its best test epoch to its last, CE loses 4.0 ± 0.0 points at 30% symmetric" in findings
    assert (f"At the last epoch, NLA at 30% symmetric (+5.0 points, higher in all 3 seeds, p = {p:.3f}) is a "
            "supported gain over CE.") in findings
    assert ("NLA with one component switched off, minus the full method at the last epoch (3 seeds), at 30% "
            "symmetric (full method +5.0 over CE): no_naw -3.5 (supported loss).") in findings
    assert "In mean (class-balanced) accuracy at the last epoch, no method and noise pair is a supported gain over " \
           "CE (1 compared)." in findings
    assert "<img src='figures/headline.png'" in index and (reports / "figures" / "headline.png").stat().st_size > 1000
    assert rows_of(index, "paired") == [
        ["NLA", "30% symmetric", "accuracy, last epoch", "3", "+5.0 ± 1.0", "3 of 3", f"{p:.2g}", "supported gain"],
        ["NLA", "30% symmetric", "mean accuracy, last epoch", "3", "+0.0 ± 0.0", "0 of 3", "",
         "no consistent difference"]]
    assert pd.read_csv(reports / "paired.csv")["verdict"].tolist() == ["supported gain", "no consistent difference"]
    # the memorisation drop of every setting, mean ± std over the seeds: ce peaks at epoch 2 and falls 4 points
    assert rows_of(index, "memorisation") == [["CE", "30% symmetric", "0,1,2", "59.0 ± 5.0", "2.0 ± 0.0",
                                               "55.0 ± 5.0", "4.0 ± 0.0"],
                                              ["NLA", "30% symmetric", "0,1,2", "60.0 ± 6.0", "2.7 ± 0.6",
                                               "60.0 ± 6.0", "0.0 ± 0.0"]]
    assert "Rare classes" not in index  # no per-epoch history with per-class accuracy: no gains table
    assert "Cross-dataset" not in index  # no run scored on another dataset: no such section


def test_the_index_contrasts_the_real_annotator_with_its_twin_when_the_runs_hold_both():
    from ferlib.study.report import _contrast

    rows = [{"method": m, "noise": n, "seed": s, "last.acc": 0.6 + 0.05 * (n == "annotator") + 0.01 * s,
             "last.mean_acc": 0.4, "best.acc": 0.6} for m in ("ce", "nla") for n in ("annotator", "annotator_matched")
            for s in range(3)]
    contrast = _contrast(pd.DataFrame(rows))
    assert set(contrast["method"]) == {"ce", "nla"}
    assert contrast.loc[contrast["metric"] == "last.acc", "mean_diff"].tolist() == pytest.approx([0.05, 0.05])
    assert _contrast(pd.DataFrame([r for r in rows if r["noise"] == "annotator"])) is None


def rows_of(page: str, table_class: str, *, exact: bool = False) -> list[list[str]]:
    """The body cells of the (first) table of class ``table_class`` in ``page`` (an :func:`html_table`'s
    ``dataframe table_class`` unless ``exact``)."""
    cls = table_class if exact else f"dataframe {table_class}"
    body = page.split(f"<table class='{cls}'>", 1)[1].split("</table>", 1)[0].split("<tbody>", 1)[1]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)]


def test_the_rare_classes_gains_table_lists_each_method_against_ce():
    from ferlib.study.report import _rare_gains_html

    gains = pd.DataFrame({"method": ["nla"] * 3, "noise": ["annotator"] * 3, "start": ["ssl"] * 3,
                          "class": ["happiness", "disgust", "fear"], "rare": [False, True, True],
                          "gain": [0.01, -0.15, 0.052], "baseline_acc_mean": [0.8, 0.15, 0.24]})
    assert rows_of(_rare_gains_html(gains), "gains") == [["NLA", "real annotator", "-15.0 (15.0)", "+5.2 (24.0)"]]
    assert "<th>disgust</th><th>fear</th>" in _rare_gains_html(gains)
    assert _rare_gains_html(gains[~gains["rare"]]) == ""  # no rare class in the table: no section
    lanet = pd.DataFrame({"method": ["lanet"], "noise": ["annotator"], "start": ["ssl"], "class": ["disgust"],
                          "rare": [True], "gain": [0.01], "baseline_acc_mean": [0.15]})
    both = _rare_gains_html(pd.concat([lanet, gains]))  # the first method lacks fear: the column is there all the same
    assert rows_of(both, "gains") == [["LA-Net", "real annotator", "+1.0 (15.0)", ""],
                                      ["NLA", "real annotator", "-15.0 (15.0)", "+5.2 (24.0)"]]


def test_a_folder_the_comparison_refuses_still_gets_its_report(tmp_path):
    runs = tmp_path / "runs"
    for rid, method, options in [("ce0", "ce", {}), ("ce1", "ce", {"label_smoothing": 0.1}), ("nla", "nla", {})]:
        (runs / rid).mkdir(parents=True)
        (runs / rid / "result.json").write_text(json.dumps({
            "run_id": rid, "method": method, "method_options": options, "noise": "symmetric:0.3", "seed": 0,
            "last": {"acc": 0.5, "mean_acc": 0.4}}))
    index = write_report(runs_dir=runs, reports_dir=tmp_path / "reports").read_text()
    assert "No seed-paired comparison with ce: baseline &#x27;ce&#x27; has runs of several variants" in index
    assert "Every configuration" in index and "<h2 id='setting'>" in index


def test_rendered_notebooks_show_outputs_not_code(tmp_path):
    from ferlib.study.report import render_html

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("secret_source_line = 41 + 1\nprint(secret_source_line)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="the printed answer 42\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# A title"), cell]
    nbformat.write(nb, tmp_path / "nb.ipynb")
    page = render_html(tmp_path / "nb.ipynb").read_text()
    assert "A title" in page and "the printed answer 42" in page
    assert "secret_source_line" not in page


def test_rendered_figures_are_palette_pngs_a_fraction_of_the_size_and_the_same_by_eye():
    import base64
    import io

    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

    from ferlib.study.report import _compact_png

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for i in range(6):
        ax.plot(np.sin(np.linspace(0, 6, 200) + i), label=f"method {i}")
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    original = base64.b64encode(buffer.getvalue()).decode()
    compact = _compact_png(original)
    assert len(compact) < 0.6 * len(original)
    a, b = (np.asarray(Image.open(io.BytesIO(base64.b64decode(x))).convert("RGBA"), dtype=float)[..., :3]
            for x in (original, compact))
    assert a.shape == b.shape and np.abs(a - b).mean() < 2  # of 255
    assert _compact_png(compact) == compact  # nothing smaller to gain: kept as it is


def test_every_rendered_view_is_titled_links_back_to_the_index_and_lists_its_sections(tmp_path):
    from ferlib.study.report import render_all

    def notebook(path: Path, title: str, sections: list[str]) -> None:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nWhat it shows.")]
        nb.cells += [nbformat.v4.new_markdown_cell(f"## {s}") for s in sections]
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)

    reports = tmp_path / "smoke"
    notebook(reports / "05_uncertainty.ipynb", "05 · Uncertainty", ["The answer", "Detection", "Galleries"])
    notebook(reports / "00_prepare_data.ipynb", "00 · Prepare the data", ["Counts"])
    notebook(reports / "runs" / "ce-symmetric0.3-s0-abc.ipynb", "02 · Train one run", ["Curves"])
    (reports / "index.html").write_text("<html></html>")
    assert len(render_all(reports)) == 3
    pages = {p.relative_to(reports).as_posix(): p.read_text() for p in reports.rglob("*.html")
             if p.name != "index.html"}
    titles = {k: re.search(r"<title>(.*?)</title>", v).group(1) for k, v in pages.items()}
    assert titles == {"05_uncertainty.html": "05 · Uncertainty · smoke",
                      "00_prepare_data.html": "00 · Prepare the data · smoke",
                      "runs/ce-symmetric0.3-s0-abc.html": "ce-symmetric0.3-s0-abc · 02_train · smoke"}
    for name, page in pages.items():  # the link back resolves from where the page lies
        back = re.search(r"<a href='([^']+)'>&larr; study index</a>", page).group(1)
        assert (reports / name).parent.joinpath(back).resolve() == (reports / "index.html").resolve()
    contents = re.findall(r"<li><a href='#([^']+)'>", pages["05_uncertainty.html"])
    assert contents == ["The-answer", "Detection", "Galleries"]
    assert all(f'id="{a}"' in pages["05_uncertainty.html"] for a in contents)
    assert "Contents:<ol>" in pages["05_uncertainty.html"]
    assert "Contents:<ol>" not in pages["00_prepare_data.html"]  # a short page needs none


# ----------------------------------------------------------------------------------- the runner
@pytest.mark.notebook
def test_run_study_resumes_records_failures_and_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(method_class("ldl_votes"), "ablations", {"threshold": {"min_votes": 1.0}})
    monkeypatch.setattr(method_class("ce"), "ablations", {})
    spec = tiny_spec(tmp_path)
    later = dataclasses.replace(spec, ablations=True, ablation_train={"epochs": 1},
                                notebooks=["02_train", "03_ablations", "05_uncertainty", "99_summary"])
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    specs = spec.run_specs(runs)
    ids = [run_id(s) for s in specs]
    ablation_ids = [run_id(s) for s in later.ablation_specs(runs)]
    expected = {json.dumps(json.loads(json.dumps(dataclasses.asdict(s))), sort_keys=True): run_id(s)
                for _, s in later.cells(runs)}
    nbdir = tmp_path / "notebooks"
    write_notebook(nbdir / "02_train.ipynb", "Fake training", COMMON_PARAMS + "spec = {}\n", FAKE_TRAIN % expected,
                   role="cell")
    write_notebook(nbdir / "99_summary.ipynb", "Fake summary", COMMON_PARAMS, FAKE_SUMMARY)
    write_notebook(nbdir / "05_uncertainty.ipynb", "Fake uncertainty", COMMON_PARAMS, FAKE_FAILING)
    write_notebook(nbdir / "01_inject_noise.ipynb", "Fake noise", COMMON_PARAMS + "noise = 'none'\nseed = 5\n",
                   FAKE_NOISE)
    write_notebook(nbdir / "03_ablations.ipynb", "Fake ablations", COMMON_PARAMS, FAKE_ABLATION, role="view",
                   needs="ablation")
    # 00_prepare_data is listed but missing: skipped with a warning
    lines: list[str] = []
    first = run_study(spec, runs_dir=runs, reports_dir=reports, notebooks_dir=nbdir, log=lines.append)

    bad = next(i for i, s in zip(ids, specs) if s.method == "ldl_votes" and s.train.seed == 1)
    calls = (reports / "train_calls.txt").read_text().split()
    assert sorted(calls) == sorted(ids)  # each cell executed once
    assert [c["status"] for c in first.cells].count("done") == 3 and first.executed == 4
    assert {i: (runs / i / "result.json").exists() for i in ids} == {i: i != bad for i in ids}
    assert first.notebooks == {"00_prepare_data": "missing", "01_inject_noise": "done", "03_ablations": "off",
                               "05_uncertainty": "failed", "99_summary": "done"}
    # extra parameters only where declared: noise and seed, not train_subset
    assert json.loads((reports / "noise_params.json").read_text()) == \
        {"noise": "symmetric:0.3", "seed": 0, "train_subset_given": False}
    assert not (reports / "ablation_runs.json").exists()  # no ablation cell: 03 not run
    assert any("00_prepare_data.ipynb is missing" in line for line in lines)
    assert any(re.match(rf"cell \d/4 grid {re.escape(ids[0])} \.\.\. done in \d+s, ETA \d+s", line) for line in lines)
    assert (reports / "summary_ran.txt").read_text() == "3"

    failures = json.loads((reports / "failures.json").read_text())
    assert set(failures) == {bad, "notebook:05_uncertainty"}
    assert failures[bad]["error"] == f"RuntimeError: deliberate failure of {bad}"
    assert "deliberate failure" in failures[bad]["traceback"]
    assert failures["notebook:05_uncertainty"]["error"] == "ValueError: uncertainty notebook broken on purpose"
    assert not first.ok

    results = pd.read_csv(reports / "results.csv")
    assert sorted(results["run_id"]) == sorted(i for i in ids if i != bad)
    index = (reports / "index.html").read_text()
    assert "<table class='dataframe results'>" in index and "<td>oracle (human votes)</td>" in index
    assert "test accuracy 50.0%" in index and "test accuracy 60.0%" in index  # ce, seeds 0 and 1: 55 ± 7.1
    assert "55.0 ± 7.1" in index
    assert "<h2 id='failures'>Failures</h2>\n<p class='fail'>2 step(s) failed.</p>" in index
    assert "deliberate failure" in index
    hrefs = re.findall(r"(?:href|src)='([^'#]+)'", index)
    assert set(hrefs) >= {"99_summary.html", "05_uncertainty.html"} | {f"runs/{i}.html" for i in ids}
    for href in hrefs:  # every page, table and figure the index links is there
        assert (reports / href).is_file(), href
    for page in [*reports.glob("[0-9]*.html"), *(reports / "runs").glob("*.html")]:  # every view links back to it
        back = re.findall(r"<a href='([^']+)'>&larr; study index</a>", page.read_text())
        assert back and (page.parent / back[0]).resolve() == (reports / "index.html").resolve(), page
    assert "Fake summary" in index  # one-line description from the notebook's title
    assert "study.json" in {p.name for p in reports.iterdir()}

    # rerun after fixing, ablations on: finished cells are skipped; the failed cell and the two ablation cells
    # (ldl_votes full and threshold, in runs/ablations) execute; failures cleared
    (reports / "fixed").write_text("")
    second = run_study(later, runs_dir=runs, reports_dir=reports, notebooks_dir=nbdir, log=lines.append)
    calls = (reports / "train_calls.txt").read_text().split()
    assert len(calls) == 7 and calls[4:] == [bad, *ablation_ids]
    assert [(c["kind"], c["status"]) for c in second.cells].count(("grid", "skipped")) == 3
    assert [c["kind"] for c in second.cells if c["status"] == "done"] == ["grid", "ablation", "ablation"]
    assert second.executed == 3
    assert json.loads((reports / "failures.json").read_text()) == {} and second.ok
    assert len(pd.read_csv(reports / "results.csv")) == 4
    assert "Failures" not in (reports / "index.html").read_text()
    assert second.notebooks == {"03_ablations": "done", "05_uncertainty": "done", "99_summary": "done"}
    assert json.loads((reports / "ablation_runs.json").read_text()) == sorted(ablation_ids)  # 03 reads them


FAKE_WAIT = """\
import time
from pathlib import Path
(Path(study_dir) / "started").write_text("")
deadline = time.time() + 60
while not (Path(study_dir).parent / "release").exists() and time.time() < deadline:
    time.sleep(0.1)
"""


@pytest.mark.notebook
def test_a_second_study_on_the_same_folders_is_refused_naming_the_first(tmp_path, capsys):
    """Two studies on one runs (or reports) folder would write one failures.json and index.html: the second is
    refused in one line naming the first (pid, host), which finishes cleanly."""
    import socket
    import subprocess
    import sys

    (tmp_path / "data").mkdir()
    profile = tmp_path / "tiny.yaml"
    profile.write_text(f"data: {tmp_path / 'data'}\ngrid: {{methods: [ce], seeds: [0]}}\nnotebooks: [99_summary]\n")
    nbdir = tmp_path / "notebooks"
    write_notebook(nbdir / "99_summary.ipynb", "Waits for the test", COMMON_PARAMS, FAKE_WAIT)
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    argv = ["--profile", str(profile), "--notebooks", str(nbdir), "--runs", str(runs)]
    first = subprocess.Popen([sys.executable, "-m", "ferlib", "study", *argv, "--reports", str(reports)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (reports / "started").exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.1)
        written = sorted((p.name, p.stat().st_mtime_ns) for p in reports.iterdir())
        for other in (reports, tmp_path / "other_reports"):  # the same runs folder, either reports folder
            assert main([*argv, "--reports", str(other)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"error: runs folder of a study {runs} is being written by "
                                                       f"another process: pid {first.pid} on host "
                                                       f"{socket.gethostname()}, started "), err
        assert sorted((p.name, p.stat().st_mtime_ns) for p in reports.iterdir()) == written  # nothing written
        assert not (tmp_path / "other_reports").exists()
        assert main(["--profile", str(profile), "--notebooks", str(nbdir), "--runs", str(tmp_path / "other_runs"),
                     "--reports", str(reports)]) == 2
        assert f"reports folder of a study {reports} is being written by another process: pid {first.pid}" \
            in capsys.readouterr().err
    finally:
        (tmp_path / "release").write_text("")
        assert first.wait(timeout=120) == 0, first.stderr.read()
    assert json.loads((reports / "failures.json").read_text()) == {}
    assert not (runs / ".lock").exists() and not (reports / ".lock").exists()  # released


def _finish_every_cell(spec: StudySpec, runs: Path) -> list[str]:
    """Write a finished result.json into every cell's run folder; returns the run ids."""
    ids = []
    for _, s in spec.cells(runs):
        ids.append(run_id(s))
        (Path(s.out) / ids[-1]).mkdir(parents=True)
        (Path(s.out) / ids[-1] / "result.json").write_text(json.dumps(
            {"run_id": ids[-1], "method": s.method, "noise": s.noise, "seed": s.train.seed, "last": {"acc": 0.5}}))
    return ids


@pytest.mark.notebook
def test_a_study_whose_cells_all_finished_pretrains_nothing(tmp_path, monkeypatch):
    """Re-rendering committed cells must not start an hour of self-supervised pretraining that no cell needs."""
    import ferlib.pretrain

    calls = []

    def pretrain(**job):
        calls.append(job)
        raise RuntimeError("pretrained")

    monkeypatch.setattr(ferlib.pretrain, "pretrain", pretrain)
    spec = tiny_spec(tmp_path, notebooks=["02_train"], backbone={"weights": "ssl"}, cleanlab_folds=2)
    runs, reports, nbdir = tmp_path / "runs", tmp_path / "reports", tmp_path / "notebooks"
    write_notebook(nbdir / "02_train.ipynb", "Must not run", COMMON_PARAMS + "spec = {}\n",
                   "raise RuntimeError('a finished cell was trained again')", role="cell")
    ids = _finish_every_cell(spec, runs)
    assert any("/cleanlab/" in str(p) for p in runs.rglob("result.json"))
    reports.mkdir()
    (reports / "failures.json").write_text(json.dumps({"pretrain:simclr-0123abcd": {"error": "an old failure"}}))
    lines: list[str] = []
    outcome = run_study(spec, runs_dir=runs, reports_dir=reports, notebooks_dir=nbdir, log=lines.append)
    assert calls == [] and not any("pretrain" in line for line in lines)
    assert outcome.ok and [c["status"] for c in outcome.cells] == ["skipped"] * len(ids)
    # one unfinished cell: its checkpoint is pretrained (here: fails, recorded, and the cell with it)
    (runs / ids[0] / "result.json").unlink()
    outcome = run_study(spec, runs_dir=runs, reports_dir=reports, notebooks_dir=nbdir, log=lines.append)
    assert len(calls) == 1 and any(k.startswith("pretrain:") for k in outcome.failures)


@pytest.mark.notebook
def test_notebook_parameters_reach_the_notebook(tmp_path):
    nbdir, reports = tmp_path / "notebooks", tmp_path / "reports"
    write_notebook(nbdir / "05_uncertainty.ipynb", "Fake uncertainty",
                   COMMON_PARAMS + "n_faces = 8\ncleanlab_folds = 2\ncleanlab_epochs = 2\n", FAKE_PARAMS)
    spec = tiny_spec(tmp_path, notebooks=["05_uncertainty"], notebook_parameters={
        "05_uncertainty": {"cleanlab_folds": 5, "cleanlab_epochs": None, "undeclared": 1}})
    lines: list[str] = []
    outcome = run_study(spec, runs_dir=tmp_path / "runs", reports_dir=reports, notebooks_dir=nbdir,
                        log=lines.append)
    assert outcome.notebooks == {"05_uncertainty": "done"} and outcome.ok
    # the profile's values replace the notebook's defaults; n_faces keeps its own; undeclared ones are not passed
    assert json.loads((reports / "uncertainty_params.json").read_text()) == \
        {"cleanlab_folds": 5, "cleanlab_epochs": None, "n_faces": 8, "undeclared_given": False}
    assert any("05_uncertainty.ipynb does not declare notebook_parameters undeclared" in line for line in lines)


@pytest.mark.notebook
def test_a_hung_notebook_is_stopped_at_its_time_limit_and_the_study_goes_on(tmp_path):
    nbdir, reports = tmp_path / "notebooks", tmp_path / "reports"
    write_notebook(nbdir / "04_label_distributions.ipynb", "Hung", COMMON_PARAMS, "import time\ntime.sleep(600)\n")
    write_notebook(nbdir / "99_summary.ipynb", "Fake summary", COMMON_PARAMS, FAKE_SUMMARY)
    spec = tiny_spec(tmp_path, notebooks=["04_label_distributions", "99_summary"], view_time_limit=2)
    t0 = time.perf_counter()
    outcome = run_study(spec, runs_dir=tmp_path / "runs", reports_dir=reports, notebooks_dir=nbdir,
                        log=lambda line: None)
    assert time.perf_counter() - t0 < 120
    assert outcome.notebooks == {"04_label_distributions": "failed", "99_summary": "done"}
    assert "timed out" in outcome.failures["notebook:04_label_distributions"]["error"].lower()
    with pytest.raises(ValueError, match="view_time_limit must be a positive number of seconds or null, got 0"):
        tiny_spec(tmp_path, view_time_limit=0)
