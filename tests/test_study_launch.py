"""Tests of where a study's cells run (ferlib.study.launch): ``workers`` processes on this machine and the Slurm
path through submitit's local executor, on the fake 02_train of test_study (it writes its cell's result.json
without training and fails on purpose for ldl_votes seed 1), plus the command line's errors.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import pytest

from ferlib.experiment import run_id
from ferlib.study import load_profile, run_study
from ferlib.study.launch import make_launcher, worker_envs
from test_study import COMMON_PARAMS, FAKE_SUMMARY, FAKE_TRAIN, tiny_spec, write_notebook

# Appended to the fake 02_train: what the kernel saw (its parent process, the environment the launcher set).
RECORD_ENV = """
import os
(Path(study_dir) / f"env-{rid}.json").write_text(json.dumps(
    {"ppid": os.getppid(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
     "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}))
"""


def fake_study(tmp_path: Path, runs: list[Path], **overrides):
    """A 4-cell study (ce, ldl_votes x seeds 0, 1; 02_train then 99_summary) and its fake notebooks, which
    know the cells of every runs folder in ``runs``: (spec, notebooks folder, the failing cell's run id)."""
    spec = tiny_spec(tmp_path, notebooks=["02_train", "99_summary"], **overrides)
    expected = {json.dumps(json.loads(json.dumps(dataclasses.asdict(s))), sort_keys=True): run_id(s)
                for folder in runs for _, s in spec.cells(folder)}
    nbdir = tmp_path / "notebooks"
    write_notebook(nbdir / "02_train.ipynb", "Fake training", COMMON_PARAMS + "spec = {}\n",
                   FAKE_TRAIN % expected + RECORD_ENV, role="cell")
    write_notebook(nbdir / "99_summary.ipynb", "Fake summary", COMMON_PARAMS, FAKE_SUMMARY)
    bad = next(run_id(s) for s in spec.run_specs(runs[0]) if s.method == "ldl_votes" and s.train.seed == 1)
    return spec, nbdir, bad


def finished_results(runs: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/result.json")}


def kernel_env(reports: Path) -> dict[str, dict]:
    return {p.stem[4:]: json.loads(p.read_text()) for p in reports.glob("env-*.json")}


@pytest.mark.notebook
def test_workers_finish_the_same_cells_as_one_worker_and_record_the_failing_one(tmp_path):
    runs = [tmp_path / "runs1", tmp_path / "runs2"]
    spec, nbdir, bad = fake_study(tmp_path, runs)
    outcomes, logs = {}, {1: [], 2: []}
    for workers, folder in zip((1, 2), runs):
        outcomes[workers] = run_study(spec, runs_dir=folder, reports_dir=tmp_path / f"reports{workers}",
                                      notebooks_dir=nbdir, log=logs[workers].append, workers=workers)

    one, two = outcomes[1], outcomes[2]
    assert [(c["run_id"], c["status"]) for c in two.cells] == [(c["run_id"], c["status"]) for c in one.cells]
    assert [c["status"] for c in two.cells].count("done") == 3 and two.executed == 4
    assert finished_results(runs[1]) == finished_results(runs[0]) and len(finished_results(runs[0])) == 3
    for outcome in (one, two):  # the failing cell in the ledger, the others finished, the views ran after them
        assert set(outcome.failures) == {bad}
        assert outcome.failures[bad]["error"] == f"RuntimeError: deliberate failure of {bad}"
        assert outcome.notebooks == {"99_summary": "done"}
    assert (tmp_path / "reports2" / "summary_ran.txt").read_text() == "3"
    assert json.loads((tmp_path / "reports2" / "failures.json").read_text()).keys() == {bad}
    assert "cells: 4 (4 grid), 0 already finished, 4 to run, 2 at once" in logs[2]
    assert any(line.startswith(f"cell 4/4 grid {bad} ... FAILED in") for line in logs[2])

    # workers 1: the kernels are this process's, environment untouched; workers 2: two worker processes, each
    # kernel with cores // 2 threads
    seen = {w: kernel_env(tmp_path / f"reports{w}") for w in (1, 2)}
    assert {e["ppid"] for e in seen[1].values()} == {os.getpid()}
    assert {e["OMP_NUM_THREADS"] for e in seen[1].values()} == {os.environ.get("OMP_NUM_THREADS")}
    assert len({e["ppid"] for e in seen[2].values()} - {os.getpid()}) == 2
    assert {e["OMP_NUM_THREADS"] for e in seen[2].values()} == {str(max(1, len(os.sched_getaffinity(0)) // 2))}

    # a rerun (with workers) starts only the failed cell
    (tmp_path / "reports2" / "fixed").write_text("")
    again = run_study(spec, runs_dir=runs[1], reports_dir=tmp_path / "reports2", notebooks_dir=nbdir,
                      log=lambda line: None, workers=2)
    assert [c["run_id"] for c in again.cells if c["status"] == "done"] == [bad] and again.ok


def test_worker_envs_share_the_cores_and_give_each_worker_a_gpu(monkeypatch):
    monkeypatch.setattr("ferlib.study.launch._cores", lambda: 16)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert worker_envs(2) == [{"OMP_NUM_THREADS": "8", "CUDA_VISIBLE_DEVICES": "2"},
                              {"OMP_NUM_THREADS": "8", "CUDA_VISIBLE_DEVICES": "3"}]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in worker_envs(3)] == ["2", "3", "2"]  # more workers than GPUs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert worker_envs(32) == [{"OMP_NUM_THREADS": "1"}] * 32  # no GPU; at least one thread each


@pytest.mark.notebook
@pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason="submitit is not installed")
def test_slurm_launcher_through_submitits_local_executor(tmp_path):
    import submitit

    runs, reports = tmp_path / "runs", tmp_path / "reports"
    spec, nbdir, bad = fake_study(tmp_path, [runs], slurm={"cpus_per_task": 3, "timeout_min": 5})
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    lines: list[str] = []
    first = run_study(spec, runs_dir=runs, reports_dir=reports, notebooks_dir=nbdir, log=lines.append,
                      launcher="slurm", executor=executor)

    assert [c["status"] for c in first.cells].count("done") == 3 and set(first.failures) == {bad}
    assert first.failures[bad]["error"] == f"RuntimeError: deliberate failure of {bad}" and first.failures[bad]["job"]
    assert len(finished_results(runs)) == 3 and first.notebooks == {"99_summary": "done"}
    assert (reports / "summary_ran.txt").read_text() == "3"  # the view ran once every job had ended
    assert sum(" ... submitted (job " in line for line in lines) == 4
    env = kernel_env(reports)  # each job's kernel: cpus_per_task threads, no GPU asked for
    assert {(e["OMP_NUM_THREADS"], e["CUDA_VISIBLE_DEVICES"]) for e in env.values()} == {("3", "")}

    # resumable: a rerun submits only the failed cell, and clears its failure
    (reports / "fixed").write_text("")
    second = run_study(spec, runs_dir=runs, reports_dir=reports, notebooks_dir=nbdir, log=lines.append,
                       launcher="slurm", executor=executor)
    assert [c["run_id"] for c in second.cells if c["status"] == "done"] == [bad]
    assert [c["status"] for c in second.cells].count("skipped") == 3 and second.ok
    assert json.loads((reports / "failures.json").read_text()) == {}
    assert (reports / "train_calls.txt").read_text().split().count(bad) == 2


def test_launch_errors_name_the_parameter(tmp_path, capsys, monkeypatch):
    from ferlib.cli import main

    (tmp_path / "data").mkdir()
    args = ["study", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--dry-run"]
    assert main([*args, "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: workers must be an integer >= 1, got 0 (command line: --workers N)"
    assert main([*args, "--workers", "2", "--launcher", "slurm"]) == 2
    assert "workers=2 is for launcher 'local'" in capsys.readouterr().err
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else
                        find_spec(name, *a))
    assert main([*args, "--launcher", "slurm"]) == 2
    assert capsys.readouterr().err.startswith("error: --launcher slurm needs the submitit package: pip install")
    monkeypatch.undo()
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    assert main([*args, "--launcher", "slurm"]) == 2
    assert capsys.readouterr().err.strip() == "error: --launcher slurm needs a Slurm cluster: no srun on PATH here"
    assert main([*args, "--workers", "2"]) == 0  # a dry run with valid settings
    with pytest.raises(ValueError, match=r"unknown launcher 'pbs'; valid: local, slurm"):
        make_launcher("pbs")


def test_profile_slurm_key_is_checked_and_merged(tmp_path):
    assert load_profile("smoke").slurm == {}
    profile = tmp_path / "gpu.yaml"
    profile.write_text("data: x\nslurm: {partition: gpu, gpus_per_node: 1}\n")
    assert load_profile(profile, slurm={"mem_gb": 32}).slurm == {"partition": "gpu", "gpus_per_node": 1, "mem_gb": 32}
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'partiton' in slurm; valid keys: partition, timeout_min"):
        load_profile("smoke", slurm={"partiton": "gpu"})
    with pytest.raises(ValueError, match=r"slurm.cpus_per_task must be >= 1, got 0"):
        load_profile("smoke", slurm={"cpus_per_task": 0})
    with pytest.raises(ValueError, match=r"slurm: timeout_min must be int, got '4h'"):
        load_profile("smoke", slurm={"timeout_min": "4h"})
