"""``python -m ferlib bench`` at tiny sizes: every registered method is measured beside ce with its ratios and its
step split, the README block is rewritten exactly and idempotently, and bad input is one error line. Speed itself is what the bench reports, never asserted here."""
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

NOWHERE = "/nonexistent/data"  # never read: the estimate takes the data sizes as given

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


@pytest.mark.slow
def test_every_registered_method_is_measured_beside_ce_with_its_ratios(every_method):
    _, report = every_method
    records = report["measurements"]
    assert [r["method"] for r in records] == list_methods() and records[0]["method"] == "ce"
    assert [r["error"] for r in records if "error" in r] == []
    ce = records[0]["metrics"]
    for r in records:
        probe = r["precision"].pop("bf16_probe", {"passed": True})  # bf16 only where the layers compute it right
        used = {**r["options"], "amp": r["options"]["amp"] and probe["passed"]}
        assert r["precision"] == resolve_precision(TrainConfig(**used), torch.device("cpu"))
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


@pytest.mark.slow
def test_the_step_split_is_measured_for_every_method_with_its_overhead(tmp_path):
    """Each phase timed (positive), the overhead the forward minus the plain forward. Whether the phases add up
    to the step timed whole is a figure the bench prints (README), not asserted: it depends on the machine's load."""
    _, report = _bench(tmp_path, "--methods", "ldl_votes", "lanet", "--image-size", "32", "--batch-size", "16",
                       "--steps", "8")
    assert [r["method"] for r in report["measurements"]] == ["ce", "ldl_votes", "lanet"]
    for r in report["measurements"]:
        x = r["metrics"]
        assert min(x["data_s"], x["forward_s"], x["backward_s"], x["plain_forward_s"], x["step_s"]) > 0, r["method"]
        assert x["overhead_s"] == pytest.approx(x["forward_s"] - x["plain_forward_s"])
        assert x["peak_memory_bytes"] is None or x["peak_memory_bytes"] >= 0


@pytest.mark.slow
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


@pytest.mark.slow
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


def _report(records, **settings):
    """A bench report with the smoke profile's model, batch and input size, and ``records``."""
    base = {"backbone": {"name": "resnet18", "model_kwargs": {}}, "batch_size": 64, "image_size": 48, "threads": 2}
    return {"settings": {**base, **settings}, "measurements": records}


def _measured(label, train, infer, *, amp=True):
    cfg = TrainConfig(amp=amp)
    precision = resolve_precision(cfg, torch.device("cpu"))  # bf16 on a CPU: the bench records its probe too
    probe = {"bf16_probe": {"passed": True, "max_rel_err": 0.01}} if precision["autocast"] == "bfloat16" else {}
    return {"method": label, "device": "cpu", "precision": {**precision, **probe},
            "metrics": {"train_images_per_s": train, "infer_images_per_s": infer}}


def test_the_grid_estimate_is_cells_times_epochs_times_images_over_measured_throughput(monkeypatch):
    from ferlib.bench.estimate import cell_seconds, format_estimate, grid_estimate
    from ferlib.study import load_profile

    monkeypatch.setattr(engine, "cpu_native_bf16", lambda: True)
    spec = load_profile("smoke", data=NOWHERE, methods=["ce", "ldlva", "nla"], noise=["symmetric:0.3"],
                        seeds=[0, 1], method_options={"ldlva": {"neighbours": "bank"}})
    cells = spec.cells("runs")
    report = _report([_measured("ce", 400.0, 2000.0), _measured("ce", 250.0, 900.0, amp=False),
                      _measured("ldlva", 50.0, 1000.0), _measured("ldlva:neighbours=bank", 300.0, 1000.0)])
    sizes = {"train": 1000, "valid": 100, "test": 200}
    est = grid_estimate(cells, report, sizes=sizes)
    rows = {(r["kind"], r["method"]): r for r in est["rows"]}
    assert est["missing"] == ["nla"]  # not measured: left out, and said
    epochs = spec.train["epochs"]
    ce = cell_seconds(epochs, 1000, 300, 1200, 400.0, 2000.0)
    assert ce == pytest.approx(epochs * (1000 / 400 + 300 / 2000) + 1200 / 2000)
    assert rows["grid", "ce"]["cells"] == 2 and rows["grid", "ce"]["seconds"] == pytest.approx(2 * ce)
    assert rows["grid", "ldlva:neighbours=bank"]["seconds"] == pytest.approx(  # the profile's options' figure
        2 * cell_seconds(epochs, 1000, 300, 1200, 300.0, 1000.0))
    k, fold_epochs = spec.cleanlab_folds, spec.cleanlab_train["epochs"]  # a fold trains on (k-1)/k, predicts 1/k
    assert rows["fold", "ce"]["seconds"] == pytest.approx(
        2 * k * cell_seconds(fold_epochs, 1000 - 1000 // k, 100 + 1000 // k, 1000, 400.0, 2000.0))
    assert est["seconds"] == pytest.approx(sum(r["seconds"] for r in est["rows"]))
    assert f"total: {est['seconds'] / 3600:.2f} h" in format_estimate(est, sizes)
    with pytest.raises(ValueError, match=r"the bench report measured .*'image_size': 32.* the study trains"):
        grid_estimate(cells, _report([], image_size=32), sizes=sizes)


def test_a_missing_bench_report_for_the_estimate_is_one_error_line(tmp_path, capsys):
    missing = tmp_path / "none.json"
    assert main(["study", "--profile", "smoke", "--estimate", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --estimate {missing}: FileNotFoundError")
