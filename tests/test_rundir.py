"""Run folders under faults (issue 10): one writer at a time, one generation of files, corrupted runs reported
by path and skipped (never fatal for the others), a disk that is full or a cache that is unwritable."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import warnings
import zipfile
from collections import namedtuple
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from ferlib import engine, experiment, rundir
from ferlib.data.cache import cached
from ferlib.engine import TrainConfig
from ferlib.experiment import RunSpec, run, run_id
from ferlib.results import atomic_savez, atomic_write, atomic_write_text, write_json
from ferlib.rundir import CorruptRunError, RunLockedError, RunWarning, collect_results, write_results

from stubs import synthetic

QUIET = dict(progress=False, device="cpu")
HOLDER = """\
import sys, time
from ferlib import rundir
with rundir.lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def tiny_spec(data: Path, out: Path, *, epochs=2, **train) -> RunSpec:
    """A CE run of ``epochs`` on the 64-face FERPlus tree ``data``, its folder in ``out``."""
    return RunSpec(data=str(data), out=str(out),
                   train=TrainConfig(epochs=epochs, batch_size=16, image_size=24, **QUIET, **train))


@pytest.fixture(scope="module")
def finished(small_ferplus, tmp_path_factory) -> Path:
    """A finished two-epoch run folder of :func:`tiny_spec` (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished")
    return out / run(tiny_spec(small_ferplus, out))["run_id"]


def copy_run(src: Path, dst: Path, rid: str) -> Path:
    shutil.copytree(src, dst)
    result = json.loads((dst / "result.json").read_text())
    write_json(dst / "result.json", {**result, "run_id": rid})
    return dst


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# ----------------------------------------------------------------------------------- one writer
def test_a_second_process_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(
        small_ferplus, tmp_path, monkeypatch):
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "cache"))
    spec = RunSpec(data=str(small_ferplus), out=str(tmp_path / "runs"), train=TrainConfig(epochs=1, **QUIET))
    run_dir = tmp_path / "runs" / run_id(spec)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"

        def no_data(*_):
            raise AssertionError("the data loaded although the run folder is locked")

        monkeypatch.setattr(experiment, "prepare_data", no_data)
        with pytest.raises(RunLockedError) as err:
            run(spec)  # refused before any data loads or any file is written
        text = str(err.value)
        assert f"run folder {run_dir} is being written by another process: pid {holder.pid} on host " \
               f"{socket.gethostname()}, started 20" in text
        assert f"delete {run_dir / '.lock'}" in text and err.value.holder["pid"] == holder.pid
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            with rundir.lock(run_dir):
                pass
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale, taken over with a warning naming it
    with pytest.warns(RunWarning, match=rf"taking over the lock of pid {holder.pid} on host .*no process "
                                        rf"{holder.pid} is running"):
        with rundir.lock(run_dir) as lock_file:
            assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert not (run_dir / ".lock").exists()  # released


def test_the_lock_is_reentrant_in_one_thread_and_refuses_another_thread(tmp_path):
    errors = []
    with rundir.lock(tmp_path / "r"):
        with rundir.lock(tmp_path / "r"):  # re-entrant: a holder may call code that takes it again
            pass
        assert (tmp_path / "r" / ".lock").exists()

        def other():
            try:
                with rundir.lock(tmp_path / "r"):
                    pass
            except RunLockedError as exc:
                errors.append(str(exc))

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and "another thread of this process" in errors[0] and f"pid {os.getpid()}" in errors[0]
    assert not (tmp_path / "r" / ".lock").exists()


def test_a_lock_from_another_host_is_refused_and_a_leftover_with_this_pid_is_taken_over(tmp_path):
    lock_file = tmp_path / "r" / ".lock"
    lock_file.parent.mkdir()
    lock_file.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "2025-01-01T00:00:00+00:00",
                                     "command": "python -m ferlib train"}))
    with pytest.raises(RunLockedError, match=r"pid 4242 on host elsewhere, started 2025-01-01T00:00:00\+00:00 "
                                             r"\(python -m ferlib train\)"):
        with rundir.lock(tmp_path / "r"):
            pass
    # a container restarted with the same pid: the lock names this process, which does not hold it
    lock_file.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "earlier"}))
    with pytest.warns(RunWarning, match="is this process, which does not hold the lock"):
        with rundir.lock(tmp_path / "r"):
            pass
    assert not lock_file.exists()


def test_writers_never_share_a_temporary_file(tmp_path):
    """Two writers of one file at once (the old fixed ``checkpoint.pt.tmp`` / pid-named temporary files collided)."""
    target, errors = tmp_path / "readout.npz", []

    def write(k):
        try:
            for i in range(25):
                atomic_savez(target, x=np.full(1000, k * 100 + i))
                atomic_write(tmp_path / "checkpoint.pt", lambda f: torch.save({"i": torch.tensor([i])}, f))
        except Exception as exc:  # noqa: BLE001 - any collision is the failure under test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with np.load(target) as z:
        assert z["x"].shape == (1000,)
    assert torch.load(tmp_path / "checkpoint.pt")["i"].shape == (1,)
    assert temp_files(tmp_path) == []


# ----------------------------------------------------------------------------------- one generation
def test_an_interrupted_fresh_run_is_never_finished_and_never_beside_old_files(small_ferplus, tmp_path, interrupted,
                                                                              finished):
    spec = tiny_spec(small_ferplus, tmp_path / "runs")
    run_dir = Path(shutil.copytree(finished, tmp_path / "runs" / run_id(spec)))
    assert rundir.find_problem(run_dir) is None and not (run_dir / "checkpoint.pt").exists()

    interrupted(lambda: run(spec, resume=False))  # --no-resume, killed in its second epoch
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "config.json", "epochs.csv",
                                                         "epochs.jsonl", "noise.json"]  # result, model, read-out gone
    assert len(pd.read_csv(run_dir / "epochs.csv")) == 1  # the new generation's first epoch only
    assert not rundir.is_finished(run_dir) and rundir.find_problem(run_dir).startswith("no result.json")
    assert collect_results(tmp_path / "runs").empty and rundir.problems(tmp_path / "runs") == {}

    resumed = run(spec)  # the new generation resumes from its own checkpoint
    assert resumed["last"] == json.loads((finished / "result.json").read_text())["last"]
    assert rundir.find_problem(run_dir) is None


def test_a_finished_run_drops_its_checkpoint_unless_kept_and_a_rerun_does_not_train(small_ferplus, tmp_path,
                                                                                   finished, monkeypatch):
    assert sorted(p.name for p in finished.iterdir()) == ["config.json", "epochs.csv", "epochs.jsonl", "model.pt",
                                                          "noise.json", "readout.npz", "result.json"]
    result = json.loads((finished / "result.json").read_text())
    assert result["files"] == {"readout.npz": (finished / "readout.npz").stat().st_size}
    with zipfile.ZipFile(finished / "readout.npz") as z:  # deflated: read-outs are committed with the evidence
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}

    def no_training(*_, **__):
        raise AssertionError("a finished run was trained again, or its data loaded")

    monkeypatch.setattr(engine, "train_one_epoch", no_training)
    monkeypatch.setattr(experiment, "prepare_data", no_training)
    shutil.copytree(finished, tmp_path / "again" / finished.name)
    assert run(tiny_spec(small_ferplus, tmp_path / "again")) == result  # resume (the default): returned as it is
    monkeypatch.undo()

    kept_spec = tiny_spec(small_ferplus, tmp_path / "kept", epochs=1, keep_checkpoint=True)
    kept = tmp_path / "kept" / run(kept_spec)["run_id"]
    assert (kept / "checkpoint.pt").is_file() and rundir.is_finished(kept)
    assert "keep_checkpoint" in json.loads((kept / "config.json").read_text())["train"]
    assert run_id(RunSpec(data=str(tmp_path), train=TrainConfig(keep_checkpoint=True))) == \
        run_id(RunSpec(data=str(tmp_path)))  # not a setting that changes results


def test_a_truncated_checkpoint_names_the_file_and_the_way_out(small_ferplus, tmp_path):
    spec = tiny_spec(small_ferplus, tmp_path, epochs=1)
    folder = tmp_path / run_id(spec)
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptRunError, match=rf"{folder}: checkpoint.pt cannot be read to resume \(.*\); start "
                                              r"this run afresh with --no-resume"):
        run(spec)
    run(spec, resume=False)  # the way out works
    assert rundir.is_finished(folder)


# ----------------------------------------------------------------------------------- finished = checked
def test_check_names_what_is_wrong(tmp_path, finished):
    def broken(name, change):
        path = copy_run(finished, tmp_path / name, name)
        change(path)
        return rundir.find_problem(path)

    assert rundir.find_problem(finished) is None
    assert broken("truncated", lambda p: (p / "result.json").write_text('{"method": "ce", "la')).startswith(
        "result.json is not valid JSON (Unterminated string")
    assert broken("binary", lambda p: (p / "result.json").write_bytes(b"\xff\xfe{}")).startswith(
        "result.json is not UTF-8 text")
    assert broken("list", lambda p: (p / "result.json").write_text("[]")) == "result.json holds a list, not an object"
    assert broken("keys", lambda p: (p / "result.json").write_text('{"run_id": "x"}')) == \
        "result.json lacks method, last"
    size = (finished / "readout.npz").stat().st_size
    assert broken("short", lambda p: (p / "readout.npz").write_bytes(b"PK")) == \
        f"readout.npz has 2 bytes, result.json records {size}: truncated, or not this result's file"
    assert broken("gone", lambda p: (p / "readout.npz").unlink()) == \
        f"readout.npz is missing (result.json records {size} bytes)"
    assert rundir.find_problem(tmp_path / "nothing") == "no result.json (unfinished, or not a run folder)"
    assert rundir.finished_runs(tmp_path) == []  # only broken copies here
    assert set(rundir.problems(tmp_path)) == {tmp_path / n for n in ("truncated", "binary", "list", "keys", "short",
                                                                    "gone")}


def test_an_ablation_variant_counts_as_finished_without_its_read_out_but_a_present_one_is_checked(tmp_path, finished):
    runs = tmp_path / "runs"
    variant = copy_run(finished, runs / "v", "v")
    write_json(variant / "result.json", {**json.loads((variant / "result.json").read_text()), "variant": "no_x"})
    (variant / "readout.npz").unlink()  # the results policy commits an ablation cell's small files only
    grid = copy_run(finished, runs / "g", "g")
    (grid / "readout.npz").unlink()
    assert rundir.is_finished(variant) and not rundir.is_finished(grid)
    with pytest.warns(RunWarning, match=rf"skipped run {grid}: readout.npz is missing"):
        assert collect_results(runs)["run_id"].tolist() == ["v"]
    (variant / "readout.npz").write_bytes(b"PK")
    assert rundir.find_problem(variant).startswith("readout.npz has 2 bytes, result.json records")


def test_a_corrupted_run_is_skipped_by_every_reader_never_fatal(tmp_path, finished, capsys):
    runs = tmp_path / "runs"
    copy_run(finished, runs / "a", "a")
    copy_run(finished, runs / "b", "b")
    (runs / "b" / "result.json").write_text('{"method": "ce", "last": {"ac')  # truncated mid-write
    copy_run(finished, runs / "c", "c")
    size = (runs / "c" / "readout.npz").stat().st_size
    (runs / "c" / "readout.npz").write_bytes(b"\0" * size)  # garbage of the right size: caught when read

    with pytest.warns(RunWarning, match=rf"skipped run {runs / 'b'}: result.json is not valid JSON"):
        table = collect_results(runs)
    assert table["run_id"].tolist() == ["a", "c"] and "files.readout.npz" not in table
    assert rundir.problems(runs) == {runs / "b": rundir.find_problem(runs / "b")}

    from ferlib import analysis

    with pytest.warns(RunWarning) as caught:
        loaded = analysis.load_runs(runs)
    assert [r.run_id for r in loaded] == ["a"]
    messages = sorted(str(w.message) for w in caught)
    assert messages[0].startswith(f"skipped run {runs / 'b'}: result.json is not valid JSON")
    assert messages[1].startswith(f"skipped run {runs / 'c'}: readout.npz cannot be read")
    with pytest.raises(CorruptRunError, match=r"c: readout.npz cannot be read"):
        analysis.load_run(runs / "c")  # asked for by name: an error that says what is wrong

    from ferlib.cli import main

    with pytest.warns(RunWarning, match="skipped run"):
        assert main(["results", str(runs)]) == 0  # the healthy runs are shown
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["a", "c"]


@pytest.mark.slow
def test_a_train_beside_a_corrupted_run_succeeds_and_a_corrupted_own_run_is_trained_again(
        small_ferplus, tmp_path, monkeypatch):
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    (out / "broken").mkdir(parents=True)
    (out / "broken" / "result.json").write_text("{")
    spec = RunSpec(data=str(small_ferplus), out=str(out), train=TrainConfig(epochs=1, batch_size=16, **QUIET))
    result = run(spec)
    with pytest.warns(RunWarning, match=rf"skipped run {out / 'broken'}: result.json is not valid JSON"):
        assert pd.read_csv(write_results(out))["run_id"].tolist() == [result["run_id"]]

    own = out / result["run_id"]
    (own / "result.json").write_text((own / "result.json").read_text()[:40])
    with pytest.warns(RunWarning) as caught:
        again = run(spec)
    assert [str(w.message).split(":")[0] for w in caught] == [str(own)]
    assert re.fullmatch(r".*: result.json is not valid JSON \(.*\); truncated or overwritten; the run is trained "
                        r"again", str(caught[0].message))
    assert again["last"] == result["last"] and rundir.find_problem(own) is None
    assert (own / "noise.json").is_file() and not (own / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------------- study and report
FAKE_TRAIN = """\
import json
from pathlib import Path
rid = %r
run_dir = Path(spec["out"]) / rid
(run_dir / "result.json").write_text(json.dumps({"run_id": rid, "method": spec["method"], "noise": spec["noise"],
    "seed": spec["train"]["seed"], "epochs": 1, "last": {"acc": 0.5, "mean_acc": 0.4}, "best": {"acc": 0.5}}))
(Path(study_dir) / "calls.txt").open("a").write(rid + "\\n")
"""


@pytest.mark.notebook
def test_the_study_reruns_a_corrupted_cell_and_the_report_lists_skipped_runs(tmp_path):
    from ferlib.study import load_profile, run_study, write_report

    (tmp_path / "data").mkdir()
    spec = load_profile("smoke", data=tmp_path / "data", methods=["ce"], noise=["symmetric:0.3"], seeds=[0],
                        notebooks=["02_train"], cleanlab_folds=0, ablations=False)
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    (cell,) = spec.run_specs(runs)
    rid = run_id(cell)
    nb = nbformat.v4.new_notebook()
    nb.metadata["ferlib"] = {"role": "cell"}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('data = ""\ndataset = ""\ndataset_options = {}\nruns_dir = ""\n'
                                       'study_dir = ""\nspec = {}\n')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(FAKE_TRAIN % rid)]
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "02_train.ipynb")
    (runs / rid).mkdir(parents=True)
    (runs / rid / "result.json").write_text('{"run_id": "')  # the cell's run, corrupted: not finished
    (runs / "ablations" / "x").mkdir(parents=True)
    write_json(runs / "ablations" / "x" / "result.json", {"method": "ce", "last": {}, "files": {"readout.npz": 9}})

    lines: list[str] = []
    outcome = run_study(spec, runs_dir=runs, reports_dir=reports, notebooks_dir=tmp_path / "notebooks",
                        log=lines.append)
    assert [c["status"] for c in outcome.cells] == ["done"]  # re-run, not counted as finished
    assert any(line == f"warning: {runs / rid}: result.json is not valid JSON (Unterminated string starting at: "
                       "line 1 column 12 (char 11)); truncated or overwritten: this cell is run again"
               for line in lines), lines
    assert rundir.is_finished(runs / rid) and pd.read_csv(reports / "results.csv")["run_id"].tolist() == [rid]
    assert pd.read_csv(runs / "results.csv")["run_id"].tolist() == [rid]  # rebuilt by the study once its cells ran
    index = (reports / "index.html").read_text()
    assert "Skipped runs (1)" in index and "<code>ablations/x</code>" in index
    assert "readout.npz is missing (result.json records 9 bytes)" in index

    # a corrupted run in the runs folder itself: left out of the tables, listed with its reason
    (runs / "y").mkdir()
    (runs / "y" / "result.json").write_text("{")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunWarning)  # the report lists them instead of warning
        index = write_report(runs_dir=runs, reports_dir=reports).read_text()
    assert "Skipped runs (2)" in index and "<code>y</code>: <span class='fail'>result.json is not valid JSON" in index
    assert pd.read_csv(reports / "results.csv")["run_id"].tolist() == [rid]


# ----------------------------------------------------------------------------------- disk
def test_low_disk_space_is_reported_before_the_checkpoint_is_written(small_ferplus, tmp_path, monkeypatch):
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "cache"))
    spec = tiny_spec(small_ferplus, tmp_path / "runs", epochs=1)
    experiment.prepare_data(spec)  # the dataset cache is written before the disk fills
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("ferlib.results.shutil.disk_usage", lambda _: usage(10 ** 9, 10 ** 9 - 1000, 1000))
    with pytest.raises(OSError) as err:
        run(spec)
    assert err.value.errno == errno.ENOSPC
    run_dir = tmp_path / "runs" / run_id(spec)
    folder = re.escape(str(run_dir))
    assert re.fullmatch(rf"\[Errno 28\] not enough disk space to write {folder}/checkpoint.pt: it needs about "
                        rf"[\d.]+ MB, {folder} has 1.0 kB free \(\d+ and 1000 bytes\)", str(err.value)), err.value
    assert temp_files(tmp_path / "runs") == [] and not (run_dir / "checkpoint.pt").exists()
    assert not (run_dir / ".lock").exists()  # released


def test_a_disk_full_mid_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = atomic_write_text(tmp_path / "model.pt", "old")

    def fill_the_disk(f):
        f.write(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    with pytest.raises(OSError, match=rf"disk full while writing {target} \(about 5.0 kB needed\); .* free on "
                                      rf"{tmp_path}; the old file, if any, is unchanged"):
        atomic_write(target, fill_the_disk, nbytes=5000)
    assert target.read_text() == "old" and temp_files(tmp_path) == []


def test_an_unwritable_cache_falls_back_to_no_cache_with_one_warning(tmp_path):
    (tmp_path / "a_file").write_text("")
    cache_dir = tmp_path / "a_file" / "cache"  # cannot be created: its parent is a file
    data, builds = synthetic(64, 16), []

    def build():
        builds.append(1)
        return data

    with pytest.warns(UserWarning, match=rf"dataset cache {cache_dir} is not usable \(.*\); continuing without a "
                                         "cache") as caught:
        first = cached("synthetic", tmp_path, {}, build, cache_dir=cache_dir)
        second = cached("synthetic", tmp_path, {}, build, cache_dir=cache_dir)
    assert len([w for w in caught if "dataset cache" in str(w.message)]) == 1
    assert len(builds) == 2 and np.array_equal(first.images, data.images) and second is data
