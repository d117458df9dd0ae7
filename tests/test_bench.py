"""``python -m ferlib bench`` at tiny sizes: every registered method is measured beside ce with its ratios, the
step split adds up to the step time measured on its own, the README block is rewritten exactly and idempotently,
and bad input is one error line. Speed itself is what the bench reports, never asserted here."""
from __future__ import annotations

import pytest
import torch

from ferlib.bench import README_MARKERS
from ferlib.bench.measure import RATIO_KEYS, option_grid
from ferlib.bench.report import markdown_table
from ferlib import engine
from ferlib.cli import main
from ferlib.engine import TrainConfig, resolve_precision
from ferlib.methods import list_methods
from ferlib.results import read_json

TINY = ["bench", "--devices", "cpu", "--options", "default", "--backbone", "resnet18", "--backbone-opt",
        "channels=[8,16,32,64]", "--backbone-opt", "stem_width=8", "--warmup", "1"]


def _bench(out, *args) -> tuple:
    """Run the bench CLI into ``out``; returns the report's path and content."""
    assert main([*TINY, "--out", str(out), *args]) == 0
    (path,) = out.glob("*.json")
    return path, read_json(path)


@pytest.fixture(scope="module")
def every_method(tmp_path_factory):
    """A two-step bench of every registered method (the default), 16 px, batch 8: its JSON path and content."""
    return _bench(tmp_path_factory.mktemp("bench"), "--image-size", "16", "--batch-size", "8", "--steps", "2")


def test_every_registered_method_is_measured_beside_ce_with_its_ratios(every_method):
    _, report = every_method
    records = report["measurements"]
    assert [r["method"] for r in records] == list_methods() and records[0]["method"] == "ce"
    assert [r["error"] for r in records if "error" in r] == []
    ce = records[0]["metrics"]
    for r in records:
        assert r["precision"] == resolve_precision(TrainConfig(**r["options"]), torch.device("cpu"))
        ratio = r["ratio_to_ce"]
        assert set(ratio) == set(RATIO_KEYS)
        assert ratio["infer_images_per_s"] == pytest.approx(r["metrics"]["infer_images_per_s"] / ce["infer_images_per_s"])
        if r["method"] != "ce":  # throughput and step time: over the ce steps taken in turn with the method's
            paired = r["metrics"]["paired_step_s"] / r["metrics"]["paired_ce_step_s"]
            assert ratio["step_s"] == pytest.approx(paired) and ratio["train_images_per_s"] == pytest.approx(1 / paired)
    assert all(v in (1.0, None) for v in records[0]["ratio_to_ce"].values())
    assert records[0]["ratio_to_ce"]["train_images_per_s"] == 1.0
    assert {"cpu", "cores", "torch", "cpu_native_bf16", "cuda_device"} <= set(report["machine"])
    assert report["settings"]["data"] == "synthetic"


def test_the_step_split_adds_up_to_the_step_time_measured_on_its_own(tmp_path):
    """data + forward + backward, timed phase by phase, against the engine's train_one_epoch timed whole."""
    _, report = _bench(tmp_path, "--methods", "ldl_votes", "lanet", "--image-size", "32", "--batch-size", "16",
                       "--steps", "8")
    assert [r["method"] for r in report["measurements"]] == ["ce", "ldl_votes", "lanet"]
    for r in report["measurements"]:
        x = r["metrics"]
        assert x["data_s"] + x["forward_s"] + x["backward_s"] == pytest.approx(x["step_s"], rel=0.3), r["method"]
        assert x["overhead_s"] == pytest.approx(x["forward_s"] - x["plain_forward_s"])
        assert x["peak_memory_bytes"] is None or x["peak_memory_bytes"] >= 0


def test_the_readme_block_is_rewritten_exactly_and_idempotently(every_method, tmp_path):
    path, report = every_method
    start, end = README_MARKERS
    head, tail = "# ferlib\n\nbefore the block\n", "\nafter the block\n"
    readme = tmp_path / "README.md"
    readme.write_text(f"{head}{start}\nan old table\n{end}{tail}")
    table = markdown_table(report, source=path)
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(report["measurements"])  # header, rule, one row per measurement
    for _ in range(2):
        assert main(["bench", "--readme", str(path), "--readme-file", str(readme)]) == 0
        assert readme.read_text() == f"{head}{start}\n{table.strip()}\n{end}{tail}"


def test_a_readme_without_the_block_is_one_error_line(every_method, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no block here\n")
    assert main(["bench", "--readme", str(every_method[0]), "--readme-file", str(readme)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no bench block" in err
    assert readme.read_text() == "# no block here\n"


@pytest.mark.parametrize("spec, message", [("nope", "unknown method 'nope'; valid: ce, "),
                                           ("ce:nope=1", "bad option 'nope=1'")])
def test_an_unknown_method_or_option_is_one_error_line(spec, message, tmp_path, capsys):
    assert main(["bench", "--methods", spec, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []


def test_the_option_grid(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    default = {"amp": True, "channels_last": True, "compile": False}
    monkeypatch.setattr(engine, "cpu_native_bf16", lambda: True)
    monkeypatch.setattr(engine, "cuda_bf16", lambda: True)
    assert len(option_grid("ce", cpu, "auto")) == len(option_grid("nla", cuda, "auto")) == 8
    assert option_grid("nla", cpu, "auto") == [default, {**default, "amp": False}]
    assert option_grid("ce", cpu, "default") == [default]
    assert len({tuple(o.values()) for o in option_grid("nla", cpu, "all")}) == 8
    monkeypatch.setattr(engine, "cpu_native_bf16", lambda: False)  # amp on computes as amp off: measured once
    assert option_grid("nla", cpu, "auto") == [default]
    assert [o["amp"] for o in option_grid("ce", cpu, "auto")] == [True] * 4
