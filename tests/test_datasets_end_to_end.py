"""Datasets without a validation split (RAF-DB, AffectNet) train end to end under the same selection protocol:
a stratified share of train becomes the validation split, and the best epoch is picked there, never on test."""
from __future__ import annotations

import numpy as np
import pytest

from ferlib.backbones import BackboneConfig
from ferlib.engine import TrainConfig
from ferlib.experiment import RunSpec, carve_valid, prepare_data, run

TINY = BackboneConfig(model_kwargs={"channels": [8, 16, 32, 64], "stem_width": 8})
TRAIN = TrainConfig(epochs=2, batch_size=8, image_size=32, progress=False, device="cpu", eval_batch_size=64)


@pytest.fixture
def rafdb(tmp_path, write_rafdb):
    lines = [f"train_{i:05d}.jpg {1 + i % 7}" for i in range(42)] + [f"test_{i:04d}.jpg {1 + i % 7}" for i in range(14)]
    return write_rafdb(tmp_path / "rafdb", lines)


@pytest.fixture
def affectnet(tmp_path, write_affectnet):
    rows = [("training.csv", f"t/{i}.jpg", i % 7) for i in range(42)]
    rows += [("validation.csv", f"v/{i}.jpg", i % 7) for i in range(14)]
    return write_affectnet(tmp_path / "affectnet", rows)


@pytest.mark.slow
@pytest.mark.parametrize("name,options", [("rafdb", {"image_size": 32}), ("affectnet", {"image_size": 32,
                                                                                         "num_classes": 7})])
def test_train_end_to_end_with_a_carved_validation_split(name, options, request, tmp_path):
    spec = RunSpec(data=str(request.getfixturevalue(name)), dataset=name, dataset_options=options,
                   noise="symmetric:0.2", backbone=TINY, train=TRAIN, out=str(tmp_path / "runs"))
    result = run(spec)
    counts = result["split_counts"]
    # 10% of 42 is 4, but the stratified draw keeps at least one face of every class: 7 of 7 classes
    assert counts["valid"] == 7 and counts["train"] == 35 and counts["test"] == 14
    assert result["selection"].startswith("primary = last epoch; best = epoch with the highest valid")
    assert 1 <= result["best_epoch"] <= 2 and result["last_valid"]


def test_carved_split_is_stratified_fixed_and_precedes_the_noise(rafdb):
    spec = RunSpec(data=str(rafdb), dataset="rafdb", dataset_options={"image_size": 32}, noise="symmetric:0.5")
    a, _ = prepare_data(spec)
    b, _ = prepare_data(RunSpec(**{**spec.__dict__, "train": TrainConfig(seed=1)}))
    valid = a.split == "valid"
    np.testing.assert_array_equal(valid, b.split == "valid")  # the same faces whatever the training seed
    assert np.array_equal(a.labels[valid], a.clean_labels[valid])  # validation labels are never flipped
    assert len(np.unique(a.labels[valid])) == 7
    with pytest.raises(ValueError, match="valid_fraction"):
        RunSpec(data=str(rafdb), dataset="rafdb", valid_fraction=1.0)


def test_carve_valid_moves_a_stratified_share_of_train():
    from ferlib.data import FERData

    labels = np.repeat(np.arange(4), 25)
    data = FERData(images=np.zeros((100, 4, 4, 1), np.uint8), labels=labels, split=np.full(100, "train"),
                   ids=np.arange(100).astype(str), classes=tuple("abcd"))
    out = carve_valid(data, 0.2)
    assert np.bincount(out.labels[out.split == "valid"]).tolist() == [5, 5, 5, 5]
