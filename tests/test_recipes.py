"""Seeds and recipes at the public boundary: identical CLI commands give identical results; the noise seed holds
the flipped labels fixed; ``paper`` applies each method's official recipe and ``shared`` leaves the run alone."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ferlib.cli import main
from ferlib.engine import TrainConfig
from ferlib.experiment import RunSpec, prepare_data
from ferlib.methods import list_methods
from ferlib.recipes import PAPER_RECIPES, paper_recipe, recipe_source, resolve_recipe

SAMPLE = Path(__file__).parents[1] / "data" / "ferplus_sample"
TINY = ["--backbone-opt", "channels=[8,16,32,64]", "--backbone-opt", "stem_width=8"]


def _train(out: Path, *extra: str) -> dict:
    args = ["train", "--data", str(SAMPLE), "--noise", "symmetric:0.3", "--train-subset", "64", "--epochs", "1",
            "--batch-size", "16", "--image-size", "32", "--no-progress", "--device", "cpu", "--out", str(out),
            *TINY, *extra]
    assert main(args) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return json.loads((run_dir / "result.json").read_text())


@pytest.mark.slow
def test_two_identical_train_commands_give_identical_results(tmp_path):
    a, b = _train(tmp_path / "a"), _train(tmp_path / "b")
    assert a["last"] == b["last"] and a["best"] == b["best"] and a["last_valid"] == b["last_valid"]
    assert a["train_loss_last"] == b["train_loss_last"]
    c = _train(tmp_path / "c", "--seed", "1")  # the seed matters (initial weights, order, noise)
    assert c["train_loss_last"] != a["train_loss_last"]


def test_noise_seed_holds_the_flipped_labels_fixed():
    def labels(seed, noise_seed=None):
        data, _ = prepare_data(RunSpec(data=str(SAMPLE), noise="symmetric:0.3", noise_seed=noise_seed,
                                       train=TrainConfig(seed=seed)))
        return data.subset("train").labels

    assert not np.array_equal(labels(0), labels(1))
    np.testing.assert_array_equal(labels(0), labels(1, noise_seed=0))


@pytest.mark.parametrize("method", sorted(PAPER_RECIPES))
def test_paper_recipe_replaces_what_it_names_and_keeps_the_rest(method):
    base = TrainConfig(image_size=40, device="cpu", seed=3, lr=0.5, epochs=2)
    recipe = paper_recipe(method, 40)
    resolved = resolve_recipe(method, "paper", base)
    for key, value in recipe.train.items():
        if key != "augment":
            assert getattr(resolved, key) == (tuple(value) if isinstance(value, (list, tuple)) else value), key
    for key, value in recipe.train["augment"].items():
        assert getattr(resolved.augment, key) == value, key
    assert (resolved.image_size, resolved.device, resolved.seed) == (40, "cpu", 3)
    assert resolve_recipe(method, "shared", base) == base
    assert "@" in recipe.source and ".py" in recipe.source  # cites the official file


def test_official_values_of_the_paper_recipes():
    nla, lanet, ldlva = (resolve_recipe(m, "paper", TrainConfig(image_size=48)) for m in ("nla", "lanet", "ldlva"))
    assert (nla.optimizer, nla.lr, nla.weight_decay, nla.scheduler, nla.gamma, nla.batch_size, nla.epochs) == \
        ("adam", 1e-4, 1e-4, "exponential", 0.9, 32, 60)
    assert nla.augment.noise_std == pytest.approx(math.sqrt(30) / 255) and nla.augment.noise_p == 0.5
    assert (lanet.lr, lanet.weight_decay, lanet.scheduler, lanet.batch_size, lanet.epochs) == \
        (1e-3, 0.0, "linear", 128, 80)
    assert (ldlva.weight_decay, ldlva.scheduler, ldlva.milestones, ldlva.gamma, ldlva.batch_size, ldlva.epochs) == \
        (0.0, "multistep", (10, 20, 40), 0.1, 32, 60)
    assert ldlva.augment.pad == 2 and ldlva.augment.erase_fill == "random"


def test_run_spec_applies_the_recipe_and_explicit_options_win():
    spec = RunSpec(data="x", method="lanet", recipe="paper")
    assert spec.train.batch_size == 128 and spec.method_options == {"positive_batch": 64}
    spec = RunSpec(data="x", method="lanet", recipe="paper", method_options={"positive_batch": 32})
    assert spec.method_options == {"positive_batch": 32}
    ldlva = RunSpec(data="x", method="ldlva", recipe="paper", train=TrainConfig(image_size=112))
    assert ldlva.train.augment.pad == 4 and ldlva.method_options == {"neighbour_pad": 4}  # 8 px at 224, scaled
    ce = RunSpec(data="x", method="ce", recipe="paper", train=TrainConfig(lr=0.3))
    assert ce.train == TrainConfig(lr=0.3)  # no official recipe: the shared settings
    with pytest.raises(ValueError, match="recipe"):
        RunSpec(data="x", recipe="papers")


def test_runs_record_their_recipe(tmp_path):
    result = _train(tmp_path, "--recipe", "paper")
    assert result["recipe"] == "paper" and result["recipe_source"].startswith("no official recipe for 'ce'")
    assert "jungyu0413/NLA" in recipe_source("nla", "paper") and recipe_source("nla", "shared").startswith("shared")


def test_every_recipe_names_a_registered_method():
    assert set(PAPER_RECIPES) <= set(list_methods())
