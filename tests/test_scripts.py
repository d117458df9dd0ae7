"""The scripts under scripts/ import against the package as it is (their names resolve) without running, and no
Python lives under reports/ (analysis code belongs in the package or in scripts/, where this test reaches it).
The FERPlus packer round-trips the shipped sample, and the GPU script runs at toy size on this CPU with the
packages a lent GPU lacks made unimportable."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))
SAMPLE = ROOT / "data" / "ferplus_sample"
#: What the lent GPU's python3 lacks (KINDS.md in the device notes): the GPU script must not need any of it.
NOT_ON_THE_GPU = ("papermill", "nbconvert", "nbclient", "nbformat", "jupyter_client", "ipykernel", "cleanlab",
                  "lightly", "dlib", "umap", "bokeh", "ipywidgets")
BLOCKER = """import sys


class NotOnTheLentGPU:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in %r:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on the lent GPU)")


sys.meta_path.insert(0, NotOnTheLentGPU())
"""


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{Path(name).stem}", ROOT / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_scripts_are_found():
    assert {"make_sample.py", "dmue_gradient_norms.py", "pack_ferplus.py", "gpu_cells.py"} <= {p.name for p in SCRIPTS}
    assert (ROOT / "scripts" / "gpu_check.sh").is_file()


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_a_script_imports_without_running(path, capsys):
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a name the package no longer has fails here
    assert callable(module.main) and module.__doc__.strip()
    assert capsys.readouterr().out == ""  # importing did nothing: the work runs from main() under __main__


def test_no_python_under_reports():
    assert sorted(str(p.relative_to(ROOT)) for p in (ROOT / "reports").rglob("*.py")) == []


def test_packed_ferplus_unpacks_to_a_root_with_the_same_data_and_run_ids(tmp_path, monkeypatch):
    from ferlib.data import data_fingerprint, load_dataset
    from ferlib.experiment import run_id
    from ferlib.landmarks import landmarks_cache_file
    from ferlib.study import load_profile

    pack = _script("pack_ferplus.py")
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "here"))
    spec = load_profile("smoke", data=SAMPLE)
    data = load_dataset("ferplus", SAMPLE, **spec.dataset_options)
    carried = landmarks_cache_file(data.subset("train"), backend="dlib")  # a cached entry the cells read
    carried.parent.mkdir(parents=True)
    carried.write_bytes(b"landmarks")
    index = pack.pack(SAMPLE, spec, tmp_path / "parts", landmarks=["dlib"], part_mib=1)
    assert len(index["parts"]) > 1 and all(p["size"] <= 2 ** 20 for p in index["parts"])

    there = tmp_path / "there"
    root = there / "ferplus"
    manifest = pack.unpack(tmp_path / "parts", root, cache_dir=there / "cache")
    assert data_fingerprint(root) == data_fingerprint(SAMPLE) == manifest["data_fingerprint"]
    assert (there / "cache" / carried.relative_to(tmp_path / "here")).read_bytes() == b"landmarks"
    again = load_dataset("ferplus", root, cache_dir=there / "cache", **spec.dataset_options)
    for attr in ("images", "labels", "split", "ids", "votes"):
        np.testing.assert_array_equal(getattr(again, attr), getattr(data, attr))
    on_root = load_profile("smoke", data=root).run_specs(tmp_path / "runs")
    assert [run_id(s) for s in on_root] == [run_id(s) for s in spec.run_specs(tmp_path / "runs")]
    assert pack.unpack(tmp_path / "parts", root, cache_dir=there / "cache") == manifest  # reused as it is

    with pytest.raises(OSError, match="is no stand-in root made by this script"):
        pack.unpack(tmp_path / "parts", tmp_path / "parts", cache_dir=there / "cache")
    last = tmp_path / "parts" / index["parts"][-1]["name"]
    last.write_bytes(last.read_bytes()[:-1] + b"x")
    (tmp_path / "parts" / index["parts"][0]["name"]).unlink()
    with pytest.raises(OSError, match=r"2 of \d+ parts unusable: pack.tar.xz.00 missing; pack.tar.xz.\d+ differs"):
        pack.checked_parts(tmp_path / "parts")


@pytest.mark.slow
def test_the_gpu_script_runs_at_toy_size_without_what_the_gpu_lacks(tmp_path):
    """scripts/gpu_check.sh with GPU_CHECK_TINY=1 on the packed sample: bench, estimate, cells within the budget,
    the runs' small files in $OUT; every python step with the packages a lent GPU lacks unimportable."""
    from ferlib.experiment import run_id
    from ferlib.study import load_profile

    parts, out, work, bench, block = (tmp_path / n for n in ("parts", "out", "work", "bench", "block"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FERLIB_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "scripts/pack_ferplus.py", "pack", "--data", str(SAMPLE), "--profile", "smoke",
                    "--out", str(parts), "--part-mib", "2"], cwd=ROOT, env=env, check=True, capture_output=True)
    first, last = tmp_path / "first_call", tmp_path / "last_call"  # what two device calls carry
    first.mkdir()
    last.mkdir()
    *earlier, final = sorted(parts.glob("pack.tar.xz.*"))
    for path in [parts / "parts.json", *earlier]:
        path.rename(first / path.name)
    final.rename(last / final.name)
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCKER % (NOT_ON_THE_GPU,))
    env.update(GPU_CHECK_TINY="1", GPU_CHECK_PARTS=str(first), GPU_CHECK_WORK=str(work), OUT=str(out),
               GPU_CHECK_BENCH_DIR=str(bench), PYTHON=sys.executable, PYTHONPATH=str(block),
               FERLIB_CACHE=str(work / "cache"))
    subprocess.run(["bash", "scripts/gpu_check.sh", "stage"], cwd=ROOT, env=env, check=True, capture_output=True)
    assert not (work / "ferplus").exists() and (work / "parts" / "parts.json").is_file()  # gathered only
    env["GPU_CHECK_PARTS"] = str(last)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert time.monotonic() - t0 < 120 + 45, log[-2000:]  # its budget, and the interpreters' start-ups
    assert "not installed on the lent GPU" not in log and "\ntotal: " in log  # the estimate's last line
    assert f"stand-in root {work / 'ferplus'}" in log  # the parts of both calls, unpacked
    (report,) = bench.glob("*.json")
    assert (out / report.name).is_file() and (out / "gpu_check.log").is_file()

    pieces = sorted(out.glob("gpu_runs.tar.gz.*"))
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in pieces)), mode="r:gz") as tar:
        names = set(tar.getnames())
        record = json.load(tar.extractfile("./gpu_cells.json"))
    statuses = {c["run_id"]: c["status"] for c in record["cells"]}
    done = [rid for rid, s in statuses.items() if s == "done"]
    assert done and set(statuses.values()) <= {"done", "interrupted", "not started"}
    assert all(f"./{rid}/result.json" in names for rid in done) and not [n for n in names if n.endswith(".pt")]
    # the cells of the packed sample's stand-in root are the cells of the sample itself
    spec = load_profile("cpu_memorise_full", data=SAMPLE, methods=["ce", "scn"], seeds=[0, 1, 2], train_subset=128,
                        train={"epochs": 1, "image_size": 96},
                        backbone={"name": "test_resnet", "model_kwargs": {}, "weights": None})
    assert set(statuses) == {run_id(s) for _, s in spec.cells(tmp_path / "runs")}
