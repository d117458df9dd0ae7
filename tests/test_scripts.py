"""The scripts under scripts/ import against the package as it is (their names resolve) without running, and no
Python lives under reports/ (analysis code belongs in the package or in scripts/, where this test reaches it)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def test_the_scripts_are_found():
    assert {"make_sample.py", "dmue_gradient_norms.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_a_script_imports_without_running(path, capsys):
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a name the package no longer has fails here
    assert callable(module.main) and module.__doc__.strip()
    assert capsys.readouterr().out == ""  # importing did nothing: the work runs from main() under __main__


def test_no_python_under_reports():
    assert sorted(str(p.relative_to(ROOT)) for p in (ROOT / "reports").rglob("*.py")) == []
