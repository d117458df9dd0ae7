"""Self-supervised pretraining (ferlib.pretrain): only the train split's images are read, exact resume, the
cache (reuse, invalidation), a falling loss on real faces, ``weights: ssl`` through the run and the CLI, the
study's pretraining step, the probes, the views."""
from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferlib.backbones import BackboneConfig
from ferlib.cli import main
from ferlib.pretrain import (PretrainConfig, ViewConfig, knn_predict, linear_probe, pretrain, pretrain_jobs,
                             ssl_weights, two_views)
from ferlib.pretrain import loop

SAMPLE = Path(__file__).parents[1] / "data" / "ferplus_sample"
SPLIT_DIRS = ("FER2013Train", "FER2013Valid", "FER2013Test")
TINY_NET = {"channels": [8, 16, 32, 64], "stem_width": 8}
BACKBONE = BackboneConfig(model_kwargs=TINY_NET)
#: A tiny pretraining, as PretrainConfig overrides (also given as RunSpec.pretrain / --pretrain-opt).
TINY = dict(epochs=2, batch_size=32, image_size=32, hidden_dim=32, out_dim=16, queue=64, warmup_epochs=0,
            progress=False, device="cpu")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def faces(tmp_path_factory) -> Path:
    """A FERPlus tree of 64 train, 16 valid and 16 test faces of the shipped sample (rows without
    unknown / not-a-face votes, so any emotion votes keep the same rows)."""
    root = tmp_path_factory.mktemp("faces") / "ferplus"
    for folder, n in zip(SPLIT_DIRS, (64, 16, 16)):
        rows = [r for r in (SAMPLE / folder / "label.csv").read_text().splitlines() if r.endswith(",0,0")][:n]
        (root / folder).mkdir(parents=True)
        for row in rows:
            shutil.copy(SAMPLE / folder / row.split(",")[0], root / folder)
        (root / folder / "label.csv").write_text("\n".join(rows) + "\n")
    return root


def _garbage_labels(folder: Path, rng) -> None:
    """Every row of ``folder/label.csv`` gets random emotion votes (no unknown / not-a-face: rows are kept)."""
    rows = [r.split(",")[:5] for r in (folder / "label.csv").read_text().splitlines()]
    (folder / "label.csv").write_text("".join(",".join(r[:5] + [str(v) for v in rng.integers(0, 10, 8)] + ["0", "0"])
                                              + "\n" for r in rows))


@pytest.fixture
def poisoned(faces, tmp_path) -> Path:
    """``faces`` with garbage labels in every split and random-noise valid and test images."""
    root = shutil.copytree(faces, tmp_path / "poisoned")
    rng = np.random.default_rng(1)
    for folder in SPLIT_DIRS:
        _garbage_labels(root / folder, rng)
    for folder in SPLIT_DIRS[1:]:
        for png in (root / folder).glob("*.png"):
            Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(png)
    return root


def tiny(data, **overrides) -> dict:
    return pretrain(data, backbone=BACKBONE, config=PretrainConfig(**{**TINY, **overrides}), evaluate=False)


def weights_of(result: dict) -> dict:
    return torch.load(result["weights"], weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_only_the_train_images_are_read(faces, poisoned, tmp_path, monkeypatch):
    from ferlib.data import load_dataset

    clean, bad = load_dataset("ferplus", faces), load_dataset("ferplus", poisoned)
    assert (clean.labels != bad.labels).any() and not np.array_equal(clean.subset("test").images,
                                                                     bad.subset("test").images)
    first = tiny(faces)
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "other_cache"))  # train again, from nothing cached
    second = tiny(poisoned)
    assert second["key"] == first["key"]  # the key reads the train images alone, too
    assert_same_weights(weights_of(first), weights_of(second))
    assert second["history"] == [{**r, "time_s": s["time_s"]} for r, s in zip(first["history"], second["history"])]


@pytest.mark.parametrize("method", ["simclr", "byol", "mocov2"])
def test_resume_equals_uninterrupted(faces, tmp_path, monkeypatch, interrupted, method):
    full = tiny(faces, method=method, epochs=3)
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "resumed"))
    interrupted(lambda: tiny(faces, method=method, epochs=3), loop=loop)
    folder = Path(full["weights"].replace(str(tmp_path / "cache"), str(tmp_path / "resumed"))).parent
    assert (folder / loop.CHECKPOINT).is_file() and not (folder / "provenance.json").exists()
    resumed = tiny(faces, method=method, epochs=3)
    assert_same_weights(weights_of(full), weights_of(resumed))
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]
    assert not (folder / loop.CHECKPOINT).exists()


def test_cached_checkpoint_is_reused_and_invalidated(faces, tmp_path, monkeypatch):
    epochs = []
    real = loop.train_one_epoch
    monkeypatch.setattr(loop, "train_one_epoch", lambda *a, **k: epochs.append(1) or real(*a, **k))
    first = tiny(faces)
    assert len(epochs) == 2
    assert tiny(faces) == first and len(epochs) == 2  # cached: no training
    other = tiny(faces, lr=0.05)
    assert other["key"] != first["key"] and len(epochs) == 4
    changed = shutil.copytree(faces, tmp_path / "changed")
    png = next((changed / "FER2013Train").glob("*.png"))
    Image.fromarray(255 - np.asarray(Image.open(png))).save(png)
    assert tiny(changed)["key"] != first["key"] and len(epochs) == 6
    provenance = json.loads((Path(first["weights"]).parent / "provenance.json").read_text())
    assert provenance["command"].startswith("python -m ferlib pretrain --data ")
    assert "--epochs 2" in provenance["command"]
    assert provenance["train_images"]["count"] == 64 and len(provenance["history"]) == 2


@pytest.mark.slow
def test_loss_decreases_on_the_shipped_sample():
    result = pretrain(SAMPLE, backbone=BACKBONE, evaluate=False,
                      config=PretrainConfig(**{**TINY, "epochs": 4, "batch_size": 64, "hidden_dim": 64}))
    losses = [r["loss"] for r in result["history"]]
    assert losses[-1] < 0.95 * losses[0], losses


def _tiny_flags(prefix: str, config: dict) -> list[str]:
    return [a for k, v in config.items() for a in (prefix, f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]


def test_weights_ssl_through_the_command_line(faces, tmp_path, capsys):
    net = ["--backbone-opt", "channels=[8,16,32,64]", "--backbone-opt", "stem_width=8"]
    train = ["train", "--data", str(faces), *net, "--weights", "ssl", *_tiny_flags("--pretrain-opt", TINY),
             "--epochs", "1", "--batch-size", "16", "--image-size", "32", "--no-progress", "--device", "cpu",
             "--out", str(tmp_path / "runs")]
    assert main(train) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: weights 'ssl': no finished self-supervised")
    command = shlex.split(err.split("create it with: ")[1].split(" (--debug")[0])
    assert command[:6] == ["python", "-m", "ferlib", "pretrain", "--data", str(faces)]
    assert "channels=[8,16,32,64]" in command and "--image-size" in command
    assert main(command[3:]) == 0  # the command the error names creates the checkpoint
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["evaluation"]["linear_probe"]) >= {"valid", "test", "l2"}
    assert "test" in printed["evaluation"]["knn"]
    assert main(train) == 0


def test_weights_ssl_starts_the_run_from_the_checkpoint(faces, tmp_path):
    from ferlib.engine import TrainConfig
    from ferlib.experiment import RunSpec, build, prepare_data, run_id

    weights = tiny(faces)["weights"]
    spec = RunSpec(data=str(faces), backbone=dataclasses.replace(BACKBONE, weights="ssl"), pretrain=dict(TINY),
                   train=TrainConfig(epochs=1, device="cpu"), out=str(tmp_path))
    assert ssl_weights(faces, backbone=BACKBONE, config=PretrainConfig(**TINY)) == weights
    model, _ = build(spec, prepare_data(spec)[0])
    assert_same_weights(model.backbone.state_dict(), torch.load(weights, weights_only=True))
    assert run_id(dataclasses.replace(spec, pretrain={**TINY, "lr": 0.05})) != run_id(spec)
    plain = dataclasses.replace(spec, backbone=BACKBONE)
    assert run_id(dataclasses.replace(plain, pretrain={})) == run_id(plain)  # no ssl: the pretraining is not in it
    assert run_id(dataclasses.replace(spec, pretrain={**TINY, "progress": True})) == run_id(spec)


def test_the_study_pretrains_once_before_its_cells(faces, tmp_path):
    from ferlib.study.runner import _Failures, _pretrain
    from ferlib.study.spec import StudySpec

    study = StudySpec(data=str(faces), grid={"methods": ["ce", "gce"], "seeds": [0, 1]}, pretrain=dict(TINY),
                      backbone={"model_kwargs": TINY_NET, "weights": "ssl"})
    cells = study.cells(tmp_path / "runs")
    assert len(cells) == 4 and len(pretrain_jobs([s for _, s in cells])) == 1
    assert not pretrain_jobs(s for _, s in StudySpec(data=str(faces)).cells(tmp_path / "runs"))
    lines = []
    _pretrain(cells, _Failures(tmp_path / "failures.json"), lines.append)
    assert lines[-1].endswith(ssl_weights(faces, backbone=BACKBONE, config=PretrainConfig(**TINY)))
    with pytest.raises(ValueError, match="unknown key"):
        StudySpec(data=str(faces), pretrain={"epoch": 3})


def _clusters(n: int, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, k, n)
    return np.eye(k)[labels] * 5 + rng.normal(0, 0.3, (n, k)) + rng.normal(0, 1, (1, k)), labels


def test_probes_separate_what_is_separable_and_guess_the_rest():
    rng = np.random.default_rng(0)
    (train_x, train_y), (test_x, test_y) = _clusters(200, 4, rng), _clusters(400, 4, rng)
    assert (linear_probe(train_x, train_y, num_classes=4)(test_x) == test_y).mean() == 1.0
    assert (knn_predict(train_x, train_y, test_x, num_classes=4, k=20) == test_y).mean() == 1.0
    noise_x, noise_y = rng.normal(size=(400, 16)), rng.integers(0, 4, 400)
    held_x, held_y = rng.normal(size=(2000, 16)), rng.integers(0, 4, 2000)
    assert abs((linear_probe(noise_x, noise_y, num_classes=4)(held_x) == held_y).mean() - 0.25) < 0.05
    assert abs((knn_predict(noise_x, noise_y, held_x, num_classes=4) == held_y).mean() - 0.25) < 0.05


@pytest.mark.parametrize("channels", [1, 3])
def test_views_are_seeded_pairs_of_each_face(channels):
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 48, 48, channels), dtype=np.uint8))
    a0, a1 = two_views(images, 32, ViewConfig(), torch.Generator().manual_seed(0))
    b0, _ = two_views(images, 32, ViewConfig(), torch.Generator().manual_seed(0))
    assert a0.shape == (6, channels, 32, 32) and torch.equal(a0, b0) and not torch.equal(a0, a1)
    assert a0.min() >= -1 and a0.max() <= 1
    with pytest.raises(ValueError, match="ViewConfig.blur"):
        ViewConfig(blur=2.0)
