"""Metrics, backbones and weights, the method registry, the CLI."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ferlib.backbones import BackboneConfig, WeightsError, create_model, load_weights
from ferlib.metrics import classification_metrics
from ferlib.methods import create_method, list_methods, method_class, parse_overrides, register_method


def test_metrics_hand_computed():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 0, 2])
    m = classification_metrics(y_true, y_pred, num_classes=4)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["per_class_acc"][:3] == pytest.approx([2 / 3, 1 / 2, 1.0]) and np.isnan(m["per_class_acc"][3])
    assert m["mean_acc"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)  # absent class 3 left out
    f1_0 = 2 * (2 / 3) * (2 / 3) / (4 / 3)
    f1_1 = 2 * (1 / 2) * (1 / 2) / 1
    assert m["macro_f1"] == pytest.approx((f1_0 + f1_1 + 1.0) / 3)
    assert m["confusion"][0] == [2, 1, 0, 0]


def test_metrics_reject_out_of_range_labels():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        classification_metrics(np.array([0, 3]), np.array([0, 1]), num_classes=3)


def test_model_split_embed_head_and_grayscale_input():
    model = create_model(BackboneConfig(in_chans=1), 8)
    model.eval()
    x = torch.randn(2, 1, 48, 48)
    f = model.embed(x)
    assert f.shape == (2, model.feature_dim) and model.feature_dim == 512
    assert torch.allclose(model(x), model.head(f))


def test_small_input_removes_the_stem_maxpool():
    small = create_model(BackboneConfig(small_input=True), 8)
    assert isinstance(small.backbone.maxpool, torch.nn.Identity)
    with pytest.raises(ValueError, match="ResNet-family"):
        create_model(BackboneConfig(name="vit_tiny_patch16_224", small_input=True), 8)


def test_local_weights_roundtrip_with_module_prefix(tmp_path):
    src = create_model(BackboneConfig(), 8)
    state = {"module." + k: v for k, v in src.backbone.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    dst = create_model(BackboneConfig(weights=str(tmp_path / "w.pth")), 8)
    assert torch.equal(dst.backbone.conv1.weight, src.backbone.conv1.weight)


def test_missing_and_mismatched_weights_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found: .*nope.pth"):
        create_model(BackboneConfig(weights=str(tmp_path / "nope.pth")), 8)
    torch.save(create_model(BackboneConfig(name="resnet34"), 8).backbone.state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="does not match"):
        load_weights(create_model(BackboneConfig(), 8).backbone, tmp_path / "r34.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="no state dict"):
        load_weights(create_model(BackboneConfig(), 8).backbone, tmp_path / "list.pth")


def test_registry_lists_and_rejects_unknown_names():
    assert {"ce", "ldl_votes"} <= set(list_methods())
    assert method_class("ldl_votes").oracle and not method_class("ce").oracle
    with pytest.raises(ValueError, match="unknown method 'xyz'; valid: .*ce"):
        method_class("xyz")
    with pytest.raises(ValueError, match="method name 'ce' is empty or already registered"):
        register_method(type("CEAgain", (method_class("ce"),), {}))
    assert list_methods().count("ce") == 1
    with pytest.raises(ValueError, match="unknown option.*label_smooth"):
        create_method("ce", num_classes=8, num_train=4, feature_dim=8, label_smooth=0.1)
    assert parse_overrides("ce", ["label_smoothing=0.2"]) == {"label_smoothing": 0.2}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides("ce", ["label_smoothing"])


def test_ce_readout_ranks_the_wrong_label_higher():
    method = create_method("ce", num_classes=3, num_train=2, feature_dim=4)
    logits = torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    method.record(torch.tensor([0, 1]), logits, torch.tensor([0, 2]))
    out = method.readout()
    assert out["score"][1] > out["score"][0] and out["margin"][0] == pytest.approx(5.0)


def test_aum_averages_the_margin_over_every_visit():
    method = create_method("ce", num_classes=3, num_train=3, feature_dim=4)
    for logits in ([[5.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 4.0]]):
        method.record(torch.tensor([0, 1]), torch.tensor(logits), torch.tensor([0, 1]))
    method.record(torch.tensor([0, 0]), torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0]]), torch.tensor([0, 0]))
    aum = method.readout().aum
    # sample 0: margins 5, 1, 3, 3 (twice in the last batch); sample 1: 2, -4; sample 2: never visited
    assert aum[0] == pytest.approx(3.0) and aum[1] == pytest.approx(-1.0) and np.isnan(aum[2])
    assert method.readout().margin[1] == pytest.approx(-4.0)  # the latest margin, beside the average


def test_vote_oracle_targets_are_vote_distributions():
    method = create_method("ldl_votes", num_classes=3, num_train=2, feature_dim=4)
    model = torch.nn.Identity()
    batch = {"image": torch.log(torch.tensor([[0.5, 0.5, 1e-9], [0.2, 0.2, 0.6]])), "index": torch.tensor([0, 1]),
             "label": torch.tensor([0, 2]), "votes": torch.tensor([[5.0, 5.0, 0.0], [2.0, 2.0, 6.0]])}
    out = method.training_step(model, batch)  # logits = log(votes share): the loss is the vote entropy
    entropy = -(0.5 * np.log(0.5) * 2 + (0.2 * np.log(0.2) * 2 + 0.6 * np.log(0.6))) / 2
    assert out["loss"].item() == pytest.approx(entropy, rel=1e-4)


@pytest.mark.slow
def test_cli_help_and_methods():
    out = subprocess.run([sys.executable, "-m", "ferlib", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--noise" in out.stdout and "--optimizer" in out.stdout
    out = subprocess.run([sys.executable, "-m", "ferlib", "methods"], capture_output=True, text=True)
    assert "ldl_votes" in out.stdout and "[ORACLE]" in out.stdout


def test_cli_backbone_and_augment_options_reach_the_run_spec():
    from ferlib.cli import build_parser, spec_from_args

    args = build_parser().parse_args(["train", "--data", "x", "--backbone-opt", "channels=[32,64,128,256]",
                                      "--backbone-opt", "stem_width=32", "--augment-opt", "erase=0"])
    spec = spec_from_args(args)
    assert spec.backbone.model_kwargs == {"channels": [32, 64, 128, 256], "stem_width": 32}
    assert spec.train.augment.erase == 0 and spec.train.augment.flip == 0.5


@pytest.mark.parametrize("profile", ["cpu_memorise", "cpu_memorise_full", "full", "smoke"])
def test_train_argv_gives_back_every_cell_of_a_profile(profile, tmp_path):
    import dataclasses

    from ferlib.cli import build_parser, spec_from_args, train_argv
    from ferlib.experiment import run_id
    from ferlib.study import load_profile

    (tmp_path / "data").mkdir()
    spec = load_profile(profile, data=tmp_path / "data", ablations=False)
    for _, cell in spec.cells(tmp_path / "runs"):  # grid, control, cleanlab folds, init contrast
        back = spec_from_args(build_parser().parse_args(["train", *train_argv(cell)]))
        assert dataclasses.asdict(back) == dataclasses.asdict(cell) and run_id(back) == run_id(cell)


def test_train_argv_refuses_what_the_command_line_cannot_set():
    import dataclasses

    from ferlib.cli import train_argv
    from ferlib.experiment import RunSpec

    spec = RunSpec(data="x", method="nla", method_options={"lam_b": 0.0})
    assert "--method-opt" in train_argv(spec) and "lam_b=0.0" in train_argv(spec)
    with pytest.raises(ValueError, match=r"cannot set variant of this run spec \(variant='no_naw'\)"):
        train_argv(dataclasses.replace(spec, variant="no_naw"))
    with pytest.raises(ValueError, match="cannot set valid_fraction"):
        train_argv(dataclasses.replace(spec, valid_fraction=0.2))


@pytest.mark.parametrize("argv, target", [(["train", "--data", "x"], "ferlib.experiment.run"),
                                          (["pretrain", "--data", "x"], "ferlib.pretrain.pretrain"),
                                          (["study"], "ferlib.study.runner.study_main")])
def test_ctrl_c_is_one_line_and_exit_status_130(argv, target, monkeypatch, capsys):
    from ferlib.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted; rerun the same command to resume"]
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--debug"])


@pytest.mark.slow
def test_import_without_notebook_stack():
    code = ("import sys; sys.modules.update({m: None for m in ('papermill', 'umap', 'nbconvert', 'cleanlab')});"
            "import ferlib.engine, ferlib.methods, ferlib.experiment, ferlib.data, ferlib.noise; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
