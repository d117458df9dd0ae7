"""ferlib.experiment as the one place that trains: RunSpec from a dict and from a run directory, cross-fitting
folds, and the analysis views over the cells the study trains (cleanlab folds, ablations). Also: the views (the
analysis package and the notebooks but the training one) import neither the engine nor the experiment module."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from ferlib import analysis
from ferlib.data.dataset import FERData
from ferlib.experiment import RunSpec, hold_out_fold, run, run_id, stratified_subset

TINY = {"noise": "symmetric:0.3", "backbone": {"name": "test_resnet"},
        "train": {"epochs": 1, "batch_size": 16, "image_size": 32, "progress": False, "device": "cpu"}}


TRAINING = ("engine", "experiment")  # the modules that train; views import neither
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
#: What a view notebook may take from the training modules, and why: 01 shows the noise a run's train split gets,
#: prepared exactly as the run prepares it (the spec, the subset, the seeded noise); it trains nothing.
DATA_PREPARATION = {("01_inject_noise", "experiment"): {"RunSpec", "prepare_data"}}


def _training_imports(source: str, where: str, allowed: dict[str, set] | None = None) -> list[str]:
    """``where:line module`` of each import of a :data:`TRAINING` module in ``source``, but for the names of
    ``allowed`` (``{module: names}``) imported from it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [("." * node.level) + (node.module or "")] + [f"{'.' * node.level}{a.name}"
                                                                 for a in node.names if not node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            module = name.split(".")[-1]
            imported = {a.name for a in node.names} if isinstance(node, ast.ImportFrom) and node.module else set()
            if module in TRAINING and not (imported and imported <= (allowed or {}).get(module, set())):
                found.append(f"{where}:{node.lineno} {name}")
    return found


def test_views_import_neither_the_engine_nor_the_experiment():
    """``ferlib.analysis`` and every notebook but the one that trains the cells (``"role": "cell"``) read finished
    runs (:mod:`ferlib.rundir`, :mod:`ferlib.inference`); none imports the training code."""
    found = []
    for path in Path(analysis.__file__).parent.glob("*.py"):
        found += _training_imports(path.read_text(), path.name)
    views = [p for p in sorted(NOTEBOOKS.glob("*.ipynb"))
             if json.loads(p.read_text())["metadata"].get("ferlib", {}).get("role") != "cell"]
    assert len(views) >= 7
    for path in views:
        allowed = {m: names for (nb, m), names in DATA_PREPARATION.items() if nb == path.stem}
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                code = "".join(line for line in cell["source"] if not line.lstrip().startswith(("%", "!")))
                found += _training_imports(code, f"{path.name} cell {i}", allowed)
    assert found == []


def test_run_spec_from_dict_fills_defaults_and_names_unknown_fields():
    spec = RunSpec.from_dict({"noise": "symmetric:0.20", "train": {"epochs": 3}}, data="data/x", out="runs/t",
                             dataset_options={"mode": "majority"})
    assert (spec.data, spec.dataset_options, spec.out) == ("data/x", {"mode": "majority"}, "runs/t")
    assert spec.train.epochs == 3 and spec.noise == "symmetric:0.2"
    assert RunSpec.from_dict({"data": "mine", "out": "here"}, data="data/x", out="r").out == "here"
    with pytest.raises(ValueError, match=r"unknown RunSpec field\(s\) \['epochs'\]; valid: data, dataset"):
        RunSpec.from_dict({"epochs": 3}, data="d")
    with pytest.raises(ValueError, match=r"RunSpec.fold must be \[i, k\]"):
        RunSpec(data="d", fold=[2, 2])


def test_run_id_follows_the_data_not_where_it_lies(small_ferplus, tmp_path, monkeypatch):
    import shutil

    spec = RunSpec.from_dict(TINY, data=str(small_ferplus))
    moved = tmp_path / "elsewhere" / "ferplus"
    shutil.copytree(small_ferplus, moved)
    assert run_id(RunSpec.from_dict(TINY, data=str(moved))) == run_id(spec)  # a moved / cloned checkout
    monkeypatch.chdir(small_ferplus.parent)
    assert run_id(RunSpec.from_dict(TINY, data=small_ferplus.name)) == run_id(spec)  # relative or absolute
    changed = shutil.copytree(small_ferplus, tmp_path / "changed")
    (changed / "extra.txt").write_text("a new file")
    assert run_id(RunSpec.from_dict(TINY, data=str(changed))) != run_id(spec)
    with pytest.raises(FileNotFoundError, match="dataset root nowhere does not exist"):
        run_id(RunSpec.from_dict(TINY, data="nowhere"))


def _data(n_train: int = 30) -> FERData:
    labels = np.array([0, 1, 2] * (n_train // 3) + [0, 1, 2, 0])
    n = len(labels)
    split = np.array(["train"] * n_train + ["valid", "valid", "test", "test"])
    return FERData(images=np.zeros((n, 4, 4, 1), np.uint8), labels=labels, split=split,
                   ids=np.array([f"f{i}" for i in range(n)]), classes=("a", "b", "c"))


def test_hold_out_fold_partitions_the_train_split_by_label():
    data = _data()
    held = [hold_out_fold(data, i, 3, seed=0) for i in range(3)]
    for fold in held:
        assert fold.split_counts() == {"train": 20, "valid": 2, "test": 10}  # the own test split is left out
        assert set(np.bincount(fold.labels[fold.split == "test"], minlength=3)) <= {3, 4}  # stratified
    tests = np.concatenate([f.ids[f.split == "test"] for f in held])
    assert sorted(tests.tolist()) == sorted(data.ids[data.split == "train"].tolist())  # each train sample once
    again = hold_out_fold(data, 1, 3, seed=0)
    np.testing.assert_array_equal(again.split, held[1].split)
    assert not np.array_equal(hold_out_fold(data, 1, 3, seed=1).split, held[1].split)


#: Class counts of the shipped sample's train split (plurality, 8 classes): per-class rounding of 64 gave 63 faces.
SAMPLE_TRAIN_COUNTS = [463, 347, 174, 172, 126, 27, 47, 26]


@pytest.mark.parametrize("counts, n", [(SAMPLE_TRAIN_COUNTS, 64), ([1, 1, 1, 97], 4), ([5, 5, 5], 4),
                                       ([1, 1, 1, 97], 2), ([600, 300, 100], 100), ([3, 3, 94], 95)])
def test_stratified_subset_gives_exactly_n_faces_at_each_class_share(counts, n):
    labels = np.repeat(np.arange(len(counts)), counts)
    idx = stratified_subset(labels, n, seed=0)
    assert len(np.unique(idx)) == len(idx) == n
    got, share = np.bincount(labels[idx], minlength=len(counts)), np.array(counts) * n / sum(counts)
    assert np.all((got == np.floor(share)) | (got == np.ceil(share)) | (got == 1)), (got, share)
    assert n < len(counts) or got.min() >= 1  # every class kept when n covers them
    np.testing.assert_array_equal(stratified_subset(labels, n, seed=0), idx)  # deterministic
    assert not np.array_equal(stratified_subset(labels, n, seed=1), idx)  # seeded


def test_a_subset_whose_rounded_shares_were_exact_keeps_its_faces():
    """Run ids do not record the faces: a subset drawn before the exact-size correction must stay the same."""
    labels = np.repeat(np.arange(8), SAMPLE_TRAIN_COUNTS)
    counts = np.array(SAMPLE_TRAIN_COUNTS)
    rounded = np.maximum(1, np.round(counts * 1000 / counts.sum())).astype(int)  # the earlier per-class rounding
    assert rounded.sum() == 1000
    rng = np.random.default_rng(0)
    before = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
                                     for c, q in enumerate(rounded)]))
    np.testing.assert_array_equal(stratified_subset(labels, 1000, seed=0), before)


@pytest.mark.slow
def test_fold_cells_give_cleanlab_out_of_sample_probabilities(small_ferplus, tmp_path):
    folds = tmp_path / "cleanlab"
    results = [run(RunSpec.from_dict({**TINY, "method": "ce", "fold": [i, 2]}, data=str(small_ferplus),
                                     out=str(folds))) for i in range(2)]
    ordinary = run(RunSpec.from_dict({**TINY, "method": "ce"}, data=str(small_ferplus), out=str(tmp_path / "runs")))
    ids, given, clean, probs = analysis.out_of_sample_probs(folds)
    readout = analysis.load_run(tmp_path / "runs" / ordinary["run_id"]).readout
    order = np.argsort(readout["ids"])  # the folds cover the ordinary run's train split, same flipped labels
    np.testing.assert_array_equal(ids, readout["ids"][order])
    np.testing.assert_array_equal(given, readout["given"][order])
    np.testing.assert_array_equal(clean, readout["clean"][order])
    assert probs.shape == (48, 8)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    (row,) = analysis.cleanlab_table(folds).to_dict("records")
    assert row["method"] == "cleanlab" and row["folds"] == 2 and row["epochs"] == 1
    assert row["noise_rate"] == pytest.approx(ordinary["noise_rate"]) and 0.0 <= row["auroc"] <= 1.0
    # the spec a fold's run directory holds reproduces the cell: same run id
    rid = results[1]["run_id"]
    assert run_id(RunSpec.from_run(folds / rid)) == rid
    one = [analysis.load_run(folds / results[0]["run_id"])]
    with pytest.raises(ValueError, match=r"are folds \[\(0, 2\)\], not 0..k-1"):
        analysis.out_of_sample_probs(one)
    assert analysis.cleanlab_table(one).empty  # a setting with a fold missing is left out


def _fake_run(root: Path, rid: str, variant: str, acc: float, **result) -> None:
    (root / rid).mkdir(parents=True)
    (root / rid / "result.json").write_text(json.dumps({
        "run_id": rid, "method": "nla", "variant": variant, "noise": "symmetric:0.3", "seed": 0,
        "time_per_epoch_s": 1.0, **{s: {"acc": acc, "mean_acc": acc / 2, "macro_f1": acc / 3}
                                    for s in ("last", "best")}, **result}))
    np.savez(root / rid / "readout.npz", ids=np.array(["a"]), given=np.array([0]), clean=np.array([0]))


def test_ablation_table_reads_the_full_method_from_the_grid_cell(tmp_path):
    _fake_run(tmp_path, "g", "", 0.7)  # the grid's nla run: the full method of seed 0
    _fake_run(tmp_path / "ablations", "v", "no_naw", 0.5, method_options={"lam_b": 0.0})
    _fake_run(tmp_path, "g1", "", 0.9, seed=1)  # a grid seed without a variant: no row
    _fake_run(tmp_path, "ce", "", 0.4, method="ce")  # a method without ablation runs: no row
    table = analysis.ablation_table(tmp_path)
    assert table[["variant", "cell", "run_id", "options"]].values.tolist() == \
        [["full", "grid", "g", ""], ["no_naw", "ablation", "v", "lam_b=0.0"]]  # full first
    assert table["delta_acc"].tolist() == pytest.approx([0.0, -0.2])


def test_ablation_comparison_pairs_each_variant_with_the_full_method_seed_by_seed(tmp_path):
    ablations = tmp_path / "ablations"
    for seed, base in enumerate([0.60, 0.65, 0.70]):
        _fake_run(tmp_path, f"full{seed}", "", base, seed=seed, epochs=30)
        _fake_run(ablations, f"naw{seed}", "no_naw", base - (0.05, 0.04, 0.06)[seed], seed=seed, epochs=30,
                  method_options={"lam_b": 0.0})
        _fake_run(ablations, f"ramp{seed}", "no_ramp", base + (0.01, -0.01, 0.02)[seed], seed=seed, epochs=30,
                  method_options={"ramp": False})
    # cells trained with ablation_train (other epochs): paired with the full cell of those epochs, not the grid's
    _fake_run(ablations, "short_full", "full", 0.5, epochs=1)
    _fake_run(ablations, "short_naw", "no_naw", 0.52, epochs=1, method_options={"lam_b": 0.0})
    out = analysis.ablation_comparison(tmp_path, metrics=["last.acc"])
    rows = {(r["variant"], r["epochs"]): r for r in out.to_dict("records")}
    assert set(rows) == {("no_naw", 30), ("no_ramp", 30), ("no_naw", 1)}
    naw, ramp, short = rows["no_naw", 30], rows["no_ramp", 30], rows["no_naw", 1]
    assert (naw["n_pairs"], naw["mean_diff"], naw["wins"]) == (3, pytest.approx(-0.05), 0)
    assert naw["p_value"] < 0.05 and naw["verdict"] == "supported loss"  # the component NAW helps, seed by seed
    assert ramp["verdict"] == "no consistent difference" and ramp["mean_diff"] == pytest.approx(0.02 / 3)
    assert (short["n_pairs"], short["mean_diff"]) == (1, pytest.approx(0.02))
    assert short["verdict"].startswith("same sign in every seed, too few seeds")
    assert analysis.ablation_comparison(tmp_path / "elsewhere").empty


def test_relabel_table_scores_only_runs_that_relabel(tmp_path):
    _fake_run(tmp_path, "scn", "", 0.7)
    np.savez(tmp_path / "scn" / "readout.npz", ids=np.arange(4).astype(str), given=np.array([0, 1, 2, 0]),
             clean=np.array([0, 2, 2, 1]), method_label=np.array([0, 2, 1, 1]))
    _fake_run(tmp_path, "ce", "", 0.7)  # no label audit: not a row
    (row,) = analysis.relabel_table(tmp_path).to_dict("records")
    # changed: 1 (1->2, fixed), 2 (2->1, broken: its given label was right), 3 (0->1, fixed)
    assert (row["run_id"], row["relabelled"], row["fixed"], row["broken"]) == ("scn", 3, 2, 1)
    assert row["precision"] == pytest.approx(2 / 3) and row["recall"] == pytest.approx(1.0)
