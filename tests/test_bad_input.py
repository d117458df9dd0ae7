"""Bad input through the command line: one line naming what is wrong (the file, the option, the valid values),
exit status 2, nothing computed; the traceback only with --debug."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ferlib.backbones import BackboneConfig, WeightsError, create_model, load_weights
from ferlib.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "ferplus_sample"


def train_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(SAMPLE), "--train-subset", "64", "--epochs", "1", "--batch-size", "32",
            "--backbone", "test_resnet", "--out", str(tmp_path / "runs"), "--no-progress", *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("extra, says", [
    (["--augment-opt", "foo=1"], r"--augment-opt: bad option 'foo=1'.*key in flip, crop, pad"),
    (["--method-opt", "label_smoothing=abc"], r"method 'ce': label_smoothing='abc' is not a valid float"),
    (["--method-opt", "label_smoothing=5"], r"CEConfig.label_smoothing must be in \[0, 1\), got 5.0"),
    (["--method", "dmue", "--method-opt", "T=0"], r"DMUEConfig.T must be > 0, got 0.0"),
    (["--lr", "inf"], r"TrainConfig.lr must be finite and > 0, got inf"),
    (["--lr", "nan"], r"TrainConfig.lr must be finite and > 0, got nan"),
    (["--weight-decay=-inf"], r"TrainConfig.weight_decay must be finite and >= 0, got -inf"),
    (["--noise", "symmetric:2"], r"symmetric:2"),
    (["--image-size", "0"], r"TrainConfig.image_size must be >= 8 \(pixels\), got 0"),
    (["--scheduler", "step", "--step-size", "0"], r"TrainConfig.step_size must be >= 1, got 0"),
    (["--eval-batch-size", "0"], r"TrainConfig.eval_batch_size must be >= 1, got 0"),
    (["--lr", "-1"], r"TrainConfig.lr must be > 0, got -1.0"),
    (["--augment-opt", "flip=2"], r"AugmentConfig.flip must be in \[0, 1\], got 2.0"),
    (["--train-subset", "-5"], r"RunSpec.train_subset must be a positive number of images or None \(all\), got -5"),
    (["--train-subset", "0"], r"RunSpec.train_subset must be a positive number of images or None \(all\), got 0"),
    (["--device", "cuda" if not torch.cuda.is_available() else "cuda:99x"], r"TrainConfig.device 'cuda"),
])
def test_a_bad_setting_is_one_line_before_any_data_loads(tmp_path, capsys, monkeypatch, extra, says):
    monkeypatch.setattr("ferlib.data.load_dataset", lambda *a, **k: pytest.fail("the data were loaded"))
    assert main(train_args(tmp_path, *extra)) == 2
    assert re.search(says, one_line_error(capsys))
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_a_missing_data_folder_is_named(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--epochs", "1"]) == 2
    assert f"{tmp_path / 'nowhere'} does not exist" in one_line_error(capsys)


@pytest.mark.slow
def test_a_non_finite_loss_is_one_line_naming_epoch_and_batch_and_what_to_change(tmp_path, capsys, monkeypatch):
    from ferlib.methods.ce import CE

    step = CE.training_step
    monkeypatch.setattr(CE, "training_step", lambda self, model, batch: {
        "loss": step(self, model, batch)["loss"] * float("nan")})  # what an overflow gives
    assert main(train_args(tmp_path)) == 2
    assert one_line_error(capsys) == ("error: non-finite loss nan at epoch 1, batch 1: lower --lr, or train in "
                                      "float32 with --no-amp (--debug shows the traceback)")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["train", "--debug", "--data", str(tmp_path / "nowhere"), "--epochs", "1"])


def test_a_garbage_weights_file_is_named_without_advising_unsafe_loading(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 4)
    assert main(train_args(tmp_path, "--weights", str(garbage))) == 2
    line = one_line_error(capsys)
    assert str(garbage) in line and "weights_only=True" in line and "weights_only=False" not in line


def test_rgb_weights_on_grayscale_data_say_so(tmp_path):
    rgb = create_model(BackboneConfig(name="test_resnet", in_chans=3), 8)
    torch.save(rgb.backbone.state_dict(), tmp_path / "rgb.pt")
    gray = create_model(BackboneConfig(name="test_resnet", in_chans=1), 8)
    with pytest.raises(WeightsError, match=r"expects 3-channel images .*built for 1 \(in_chans follows the data"):
        load_weights(gray.backbone, tmp_path / "rgb.pt")


def test_a_malformed_profile_names_its_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {methods: [ce]\ntrain: {epochs: 2}\n")
    assert main(["study", "--profile", str(bad), "--dry-run"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: profile {bad} is not valid YAML (line ") and "\n" not in line


def test_a_larger_ferplus_image_keeps_its_whole_face_and_a_box_outside_is_named(tmp_path, build_ferplus,
                                                                             write_image):
    from ferlib.data import DatasetError, read_ferplus

    root = build_ferplus(tmp_path / "ferplus")
    big = np.zeros((96, 96), np.uint8)
    big[48:, 48:] = 200  # the bottom-right quarter: a 48x48 crop of the top-left would lose it
    write_image(root / "FER2013Train" / "fer0000000.png", big, size=(96, 96))
    data = read_ferplus(root, image_size=48)
    first = data.images[[i for i, name in enumerate(data.ids) if "fer0000000" in name][0]]
    assert first.shape == (48, 48, 1) and first[24:, 24:].mean() > 150 and first[:24, :24].mean() < 50

    label = root / "FER2013Train" / "label.csv"
    label.write_text(label.read_text().replace('"(0, 0, 48, 48)"', '"(40, 40, 200, 200)"', 1))
    with pytest.raises(DatasetError, match=r"fer0000000.png .*label.csv, line 1.*face box \(80, 80, 400, 400\) lies "
                                           r"mostly outside the 96x96 image"):
        read_ferplus(root, image_size=48)


def _epoch(epoch: int, loss: float, predicted_counts) -> dict:
    confusion = [[0] * len(predicted_counts) for _ in predicted_counts]
    for k, n in enumerate(predicted_counts):
        confusion[k][k] = n  # the column sums are what matters
    return {"epoch": epoch, "train_loss": loss, "valid": {"confusion": confusion}, "test": {"confusion": confusion}}


def test_health_flags_name_divergence_and_collapse():
    from ferlib.metrics import health_flags

    healthy = [_epoch(1, 2.0, [30, 30, 40]), _epoch(2, 1.2, [30, 35, 35])]
    assert health_flags(healthy) == []
    diverged = [_epoch(1, 2.0, [30, 30, 40]), _epoch(2, 1e14, [30, 35, 35])]
    assert health_flags(diverged) == ["diverged: training loss 1e+14 at epoch 2 is more than 10x the first epoch's 2"]
    collapsed = [_epoch(1, 2.0, [30, 30, 40]), _epoch(2, 1.9, [1, 0, 99])]
    assert health_flags(collapsed, ("a", "b", "c")) == [
        "collapsed: 99% of the valid predictions are 'c' at the last epoch",
        "collapsed: 99% of the test predictions are 'c' at the last epoch"]


def test_a_run_that_blew_up_within_its_first_epoch_is_flagged_against_the_uniform_loss_ln_k():
    from ferlib.metrics import health_flags

    blown = [_epoch(1, 40.0, [30, 30, 40]), _epoch(2, 45.0, [30, 35, 35])]  # 45 < 10 x 40, but ln 3 = 1.1
    assert health_flags(blown) == ["diverged: training loss 45 at epoch 2 is more than 10x ln 3 = 1.1, the loss of a "
                                   "uniform prediction over 3 classes"]
    assert health_flags(blown, tuple("abcdefgh"))[0].startswith("diverged: training loss 45 at epoch 2 is more "
                                                                "than 10x ln 8 = 2.08")
    several_terms = [_epoch(1, 5.6, [30, 30, 40]), _epoch(2, 2.9, [30, 35, 35])]  # LA-Net's losses: healthy
    assert health_flags(several_terms, tuple("abcdefgh")) == []


def test_the_results_table_shows_each_runs_flags(tmp_path, capsys):
    import json

    for run_id, flags in [("ok", ""), ("bad", "collapsed: 99% of the test predictions are 'happiness'"),
                          ("old", None)]:  # a result written before the flags existed
        (tmp_path / run_id).mkdir()
        result = {"run_id": run_id, "method": "ce", "last": {"acc": 0.5}} | ({} if flags is None else {"flags": flags})
        (tmp_path / run_id / "result.json").write_text(json.dumps(result))
    assert main(["results", str(tmp_path)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[-1] == "flags"
    assert {row.split()[0]: row.split(maxsplit=3)[3:] for row in rows} == {
        "bad": ["collapsed: 99% of the test predictions are 'happiness'"], "ok": [], "old": []}


def test_a_diverged_run_is_flagged_in_its_result(tmp_path, small_ferplus):
    from ferlib.experiment import RunSpec, run
    from ferlib.rundir import collect_results

    spec = {"noise": "symmetric:0.3", "backbone": {"name": "test_resnet"},
            "train": {"epochs": 2, "batch_size": 16, "image_size": 32, "progress": False, "scheduler": "none",
                      "amp": False, "lr": 1e6}}  # finite but absurd: Adam moves every weight by ~1e6 a step
    wild = run(RunSpec.from_dict(spec, data=str(small_ferplus), out=str(tmp_path)))
    assert wild["flags"].startswith(("diverged", "collapsed"))
    assert collect_results(tmp_path)["flags"].tolist() == [wild["flags"]]


def test_a_flagged_run_is_never_averaged_with_healthy_ones():
    import pandas as pd

    from ferlib.analysis import summary_table

    rows = [{"method": "ce", "noise": "symmetric:0.3", "seed": s, "last.acc": acc, "flags": flag}
            for s, acc, flag in [(0, 0.7, ""), (1, 0.72, ""), (2, 0.125, "collapsed: 100% of the test ...")]]
    table = summary_table(pd.DataFrame(rows), metrics=("acc",))
    assert table[["flags", "n_seeds"]].values.tolist() == [["", 2], ["collapsed: 100% of the test ...", 1]]
    assert table["last.acc_mean"].tolist() == pytest.approx([0.71, 0.125])
