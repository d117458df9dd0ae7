"""Settings are checked once, at the boundary: typed option parsing from the config dataclasses, wrong types
and values named before any data loads, noise specs in one canonical form."""
from __future__ import annotations

import math
import typing

import pytest

from ferlib.augment import AugmentConfig
from ferlib.engine import TrainConfig
from ferlib.experiment import RunSpec, run_id
from ferlib.methods import parse_overrides
from ferlib.options import field_hints, parse_options, split_options
from ferlib.study import load_profile

NOWHERE = "/nonexistent/data"  # never read: every check below fails (or passes) before any data loads


def test_options_are_typed_from_the_dataclass_hints():
    assert parse_overrides("lanet", ["graph_batch=none", "positive_batch=64", "use_lde=false", "sigma=2"]) == {
        "graph_batch": None, "positive_batch": 64, "use_lde": False, "sigma": 2.0}
    assert parse_options(AugmentConfig, ["scale=[0.5, 1]", "crop=resized"], where="--augment-opt") == {
        "scale": (0.5, 1), "crop": "resized"}
    with pytest.raises(ValueError, match=r"method 'lanet': positive_batch='sixty' is not a valid int"):
        parse_overrides("lanet", ["positive_batch=sixty"])
    with pytest.raises(ValueError, match="--augment-opt: bad option 'eras=0'.*erase"):
        parse_options(AugmentConfig, ["eras=0"], where="--augment-opt")


def test_bad_values_fail_at_the_run_spec_naming_the_parameter():
    with pytest.raises(ValueError, match="neighbours"):
        RunSpec(data=NOWHERE, method="ldlva", method_options={"neighbours": "bnak"})
    with pytest.raises(ValueError, match="method 'nla': lam_c must be float, got 'abc'"):
        RunSpec(data=NOWHERE, method="nla", method_options={"lam_c": "abc"})
    with pytest.raises(ValueError, match="TrainConfig: lr must be float, got 'abc'"):
        RunSpec(data=NOWHERE, train={"lr": "abc"})
    with pytest.raises(ValueError, match="symetric"):
        RunSpec(data=NOWHERE, noise="symetric:0.3")


NUMERIC_TRAIN = {k: typing.get_args(hint) or (hint,) for k, hint in field_hints(TrainConfig).items()
                 if {int, float} & set(typing.get_args(hint) or (hint,))}


@pytest.mark.parametrize("key", list(NUMERIC_TRAIN))
def test_every_numeric_train_setting_refuses_a_negative_or_non_finite_value_naming_it(key):
    """No count, size, rate, factor or seed of TrainConfig is meaningful below 0, nor any float at NaN or +-inf."""
    for value in [-1] + ([math.nan, math.inf] if float in NUMERIC_TRAIN[key] else []):
        with pytest.raises(ValueError, match=rf"^TrainConfig\.{key} must be .*, got "):
            TrainConfig(**{key: (value,) if Ellipsis in NUMERIC_TRAIN[key] else value})


def test_noise_specs_are_canonical_so_one_setting_is_one_run(tmp_path):
    a, b = RunSpec(data=str(tmp_path), noise="symmetric:0.30"), RunSpec(data=str(tmp_path), noise="symmetric:0.3")
    assert a.noise == b.noise and run_id(a) == run_id(b)


def test_a_profile_with_a_bad_method_option_value_fails_on_load():
    with pytest.raises(ValueError, match="method_options.ldlva.*neighbours"):
        load_profile("smoke", method_options={"ldlva": {"neighbours": "bnak"}})
    with pytest.raises(ValueError, match=r"method_options\.ldlva: LDLVAConfig\.aux: unknown aux source 'magic'.*"
                                         r"valid: .*landmarks\[:<backend>\]"):
        load_profile("smoke", method_options={"ldlva": {"aux": "magic"}})
    with pytest.raises(ValueError, match="lr"):
        load_profile("smoke", train={"lr": "abc"})
    assert TrainConfig(lr=1).lr == 1  # an int where a float is expected is fine


def _train_args(*flags: str):
    from ferlib.cli import build_parser

    return build_parser().parse_args(["train", "--data", NOWHERE, *flags])


def test_dataset_options_are_typed_from_the_reader_signature():
    from ferlib.cli import spec_from_args

    spec = spec_from_args(_train_args("--dataset", "rafdb", "--dataset-opt", "image_size=64",
                                      "--dataset-opt", "on_missing=drop", "--dataset-opt", "progress=true"))
    assert spec.dataset_options == {"image_size": 64, "on_missing": "drop", "progress": True}
    spec = spec_from_args(_train_args("--dataset-opt", "image_size=none", "--classes", "7", "--mode", "majority"))
    assert spec.dataset_options == {"mode": "majority", "num_classes": 7, "image_size": None}
    with pytest.raises(ValueError, match=r"^--dataset-opt \(dataset 'ferplus'\): image_size='big' is not a valid "
                                         r"int \| None$"):
        spec_from_args(_train_args("--dataset-opt", "image_size=big"))
    with pytest.raises(ValueError, match=r"^--dataset-opt \(dataset 'rafdb'\): bad option 'mode=majority': expected "
                                         r"key=value with key in image_size, channels, on_missing, progress$"):
        spec_from_args(_train_args("--dataset", "rafdb", "--dataset-opt", "mode=majority"))
    with pytest.raises(ValueError, match=r"unknown dataset 'rafd'; valid: affectnet, fer2013, ferplus, folder, rafdb"):
        spec_from_args(_train_args("--dataset", "rafd"))


def test_backbone_options_type_config_fields_and_pass_timm_keywords_as_literals():
    from ferlib.cli import spec_from_args

    # the exact flags of reports/evidence/cpu_full/README.md (half-width ResNet-18)
    spec = spec_from_args(_train_args("--backbone-opt", "channels=[32,64,128,256]", "--backbone-opt", "stem_width=32",
                                      "--backbone-opt", "drop_rate=0.25", "--backbone-opt", "act_layer=relu"))
    assert spec.backbone.model_kwargs == {"channels": [32, 64, 128, 256], "stem_width": 32, "act_layer": "relu"}
    assert spec.backbone.drop_rate == 0.25 and "drop_rate" not in spec.backbone.model_kwargs
    with pytest.raises(ValueError, match=r"^--backbone-opt: drop_rate='lots' is not a valid float$"):
        spec_from_args(_train_args("--backbone-opt", "drop_rate=lots"))
    with pytest.raises(ValueError, match=r"^--backbone-opt: name is not set here: use --backbone$"):
        spec_from_args(_train_args("--backbone-opt", "name=resnet50"))
    with pytest.raises(ValueError, match=r"^--backbone-opt: bad option 'stem_width': expected KEY=VALUE$"):
        spec_from_args(_train_args("--backbone-opt", "stem_width"))


def test_the_cli_reports_a_wrong_option_type_in_one_line(capsys):
    from ferlib.cli import main

    assert main(["train", "--data", NOWHERE, "--dataset-opt", "num_classes=eight"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --dataset-opt (dataset 'ferplus'): num_classes='eight' is not a valid int "
                   "(--debug shows the traceback)")


def test_split_options_keeps_commas_inside_brackets_and_quotes():
    assert split_options("a=1,scale=[0.5, 1],b='x,y'") == ["a=1", "scale=[0.5, 1]", "b='x,y'"]
    assert split_options("") == [] and split_options("neighbours=bank") == ["neighbours=bank"]
    assert parse_options(AugmentConfig, split_options("erase=0,scale=[0.5,1]"), where="bench") == {
        "erase": 0.0, "scale": (0.5, 1)}


def test_fold_flag_makes_a_cross_fitting_cell_and_names_a_bad_value():
    from ferlib.cli import spec_from_args

    assert spec_from_args(_train_args("--fold", "1/2")).fold == [1, 2]
    assert spec_from_args(_train_args()).fold is None
    with pytest.raises(SystemExit):
        _train_args("--fold", "1-2")
    with pytest.raises(ValueError, match=r"RunSpec.fold must be \[i, k\]"):
        spec_from_args(_train_args("--fold", "2/2"))
