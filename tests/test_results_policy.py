"""The results policy (docs/results-policy.md) on the committed files: read-outs deflated, no weights, no figure
stored twice, the headline study's cells complete, and the checkout of reports/ under its size budget."""
from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from ferlib import rundir

ROOT = Path(__file__).resolve().parents[1]
HEADLINE_REPORT = ROOT / "reports" / "cpu_memorise"
HEADLINE_RUNS = ROOT / "reports" / "evidence" / "cpu_memorise" / "runs"
REPORTS_BUDGET = 52 * 2 ** 20  # bytes: the committed files under reports/ (docs/results-policy.md, Sizes)
WEIGHTS = (".pt", ".pth", ".ckpt", ".safetensors", ".onnx")


@pytest.fixture(scope="module")
def tracked() -> list[Path]:
    """The files git tracks in this checkout (skips outside a git checkout, e.g. an unpacked sdist)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.stdout.decode().split("\0") if p]


def _under(files: list[Path], folder: Path) -> list[Path]:
    return [f for f in files if folder in f.parents]


def test_committed_readouts_are_deflated(tracked):
    readouts = [f for f in tracked if f.name == rundir.READOUT]
    assert readouts
    stored = [f.relative_to(ROOT) for f in readouts
              if any(i.compress_type != zipfile.ZIP_DEFLATED for i in zipfile.ZipFile(f).infolist())]
    assert not stored, f"read-outs stored uncompressed (re-save with numpy.savez_compressed): {stored}"


def test_no_weights_or_checkpoints_are_committed(tracked):
    weights = [f.relative_to(ROOT) for f in tracked if f.suffix in WEIGHTS]
    assert not weights


def test_the_headline_report_stores_no_figure_twice(tracked):
    """The notebooks' figures are inside their HTML; the only figure files are the ones index.html links."""
    linked = set(re.findall(r"src='(figures/[^']+)'", (HEADLINE_REPORT / "index.html").read_text()))
    files = {f.relative_to(HEADLINE_REPORT).as_posix() for f in _under(tracked, HEADLINE_REPORT / "figures")}
    assert linked and files == linked


def test_every_committed_headline_cell_is_finished(tracked):
    cells = [f.parent for f in _under(tracked, HEADLINE_RUNS) if f.name == rundir.RESULT]
    assert cells
    assert not rundir.problems(HEADLINE_RUNS, recursive=True)
    unfinished = [c.relative_to(ROOT) for c in cells if not rundir.is_finished(c)]
    assert not unfinished


def test_the_checkout_of_reports_stays_within_its_budget(tracked):
    sizes = {f: f.stat().st_size for f in _under(tracked, ROOT / "reports") if f.is_file()}
    largest = sorted(sizes, key=sizes.get)[-3:]
    assert sum(sizes.values()) < REPORTS_BUDGET, (
        f"reports/ holds {sum(sizes.values()) / 2 ** 20:.1f} MiB, over the {REPORTS_BUDGET / 2 ** 20:.0f} MiB of "
        f"docs/results-policy.md; largest: {[str(f.relative_to(ROOT)) for f in largest]}")


#: Folders of a machine that a committed record must not name (ferlib.paths.portable_path records paths relative
#: to the repository root).
MACHINE_FOLDERS = ("/work/", "/home/", "/tmp/", "/root/", "/Users/", "/scratch/", "/mnt/")


def test_no_committed_report_names_a_folder_of_the_machine_that_wrote_it(tracked):
    records = [f for f in _under(tracked, ROOT / "reports") if f.suffix in (".html", ".json", ".csv")]
    assert records
    found = {str(f.relative_to(ROOT)): sorted({m for m in MACHINE_FOLDERS if m in f.read_text(errors="replace")})
             for f in records}
    assert not {f: m for f, m in found.items() if m}
