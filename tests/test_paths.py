"""Recorded paths name no folder of the machine: relative to the repository root where possible (ferlib.paths)."""
from __future__ import annotations

import json
from pathlib import Path

from ferlib.paths import portable_path, repo_root, resolve_recorded


def _checkout(tmp_path: Path) -> Path:
    root = tmp_path / "work" / "main"
    (root / "ferlib").mkdir(parents=True)
    (root / "ferlib" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text("")
    return root


def test_paths_in_or_beside_the_checkout_are_recorded_relative_to_it(tmp_path, monkeypatch):
    root = _checkout(tmp_path)
    (root / "notebooks").mkdir()
    assert repo_root(root / "notebooks") == root.resolve() and repo_root(tmp_path) is None
    assert portable_path(root / "reports" / "smoke", root) == "reports/smoke"
    assert portable_path(tmp_path / "work" / "shared" / "data", root) == "../shared/data"
    elsewhere = tmp_path.parent / "elsewhere"  # not under the checkout's parent: kept as given
    assert portable_path(elsewhere, root) == str(elsewhere)
    monkeypatch.chdir(root / "notebooks")  # default root: the checkout around the current directory
    assert portable_path("../data/ferplus_sample") == "data/ferplus_sample"
    assert resolve_recorded("../shared/data") == root.resolve() / "../shared/data"
    assert resolve_recorded(elsewhere) == elsewhere


def test_a_run_records_its_data_relative_to_the_checkout(small_ferplus, tmp_path, monkeypatch):
    """result.json and config.json of a run started inside a checkout, on data beside it, hold ``../data``."""
    import shutil

    from ferlib import rundir
    from ferlib.experiment import RunSpec, run

    root = _checkout(tmp_path)
    data = shutil.copytree(small_ferplus, root.parent / "data")
    monkeypatch.chdir(root)
    result = run(RunSpec.from_dict({"noise": "symmetric:0.3", "backbone": {"name": "test_resnet"},
                                    "train": {"epochs": 1, "batch_size": 16, "image_size": 32, "progress": False,
                                              "device": "cpu"}}, data=str(data.resolve()), out="runs"))
    assert result["data"] == "../data"
    assert rundir.read_config(root / "runs" / result["run_id"])["data"] == "../data"


def test_record_metrics_names_its_file_relative_to_the_repository_root(capsys):
    from ferlib import analysis

    study = Path(__file__).resolve().parents[1] / "reports" / ".test_record_metrics"
    try:
        path = analysis.record_metrics(study, "99_summary", {"n_runs": 1})
        assert json.loads(path.read_text()) == {"n_runs": 1}
        assert capsys.readouterr().out == "metrics (n_runs) written to reports/.test_record_metrics/99_summary.json\n"
    finally:
        for f in study.glob("*"):
            f.unlink()
        study.rmdir()


def test_the_study_gives_its_notebooks_paths_relative_to_their_checkout(tmp_path):
    from ferlib.study.runner import _notebook_path

    root = _checkout(tmp_path)
    assert _notebook_path(root / "reports" / "smoke", root=root.resolve()) == "reports/smoke"
    assert _notebook_path(tmp_path / "x", root=None) == str(tmp_path / "x")  # notebooks outside a checkout
