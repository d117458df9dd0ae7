"""Settings are checked once, at the boundary: typed option parsing from the config dataclasses, wrong types
and values named before any data loads, noise specs in one canonical form."""
from __future__ import annotations

import pytest

from ferlib.augment import AugmentConfig
from ferlib.engine import TrainConfig
from ferlib.experiment import RunSpec, run_id
from ferlib.methods import parse_overrides
from ferlib.options import parse_options
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


def test_noise_specs_are_canonical_so_one_setting_is_one_run():
    a, b = RunSpec(data=NOWHERE, noise="symmetric:0.30"), RunSpec(data=NOWHERE, noise="symmetric:0.3")
    assert a.noise == b.noise and run_id(a) == run_id(b)


def test_a_profile_with_a_bad_method_option_value_fails_on_load():
    with pytest.raises(ValueError, match="method_options.ldlva.*neighbours"):
        load_profile("smoke", method_options={"ldlva": {"neighbours": "bnak"}})
    with pytest.raises(ValueError, match="lr"):
        load_profile("smoke", train={"lr": "abc"})
    assert TrainConfig(lr=1).lr == 1  # an int where a float is expected is fine
