"""Dataset readers, label rules, bad-input errors, the cache and the shipped FERPlus sample."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from ferlib.classes import class_index, class_names
from ferlib.data import (DatasetError, affectnet_va, cache_dataset, list_datasets, load_dataset, read_affectnet,
                         read_fer2013, read_ferplus, read_folder, read_rafdb, votes_to_labels)
from ferlib.data import common

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "ferplus_sample"
REAL_FERPLUS = Path(__file__).resolve().parents[2] / "shared/data/ferplus"


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Never write the user's cache from tests."""
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------- label rules
RULE_ROWS = np.array([
    [0, 9, 1, 0, 0, 0, 0, 0, 0, 0],  # clear happiness
    [5, 1, 1, 1, 1, 1, 0, 0, 0, 0],  # majority only once single votes are removed (5 of 5, not 5 of 10)
    [4, 0, 0, 1, 3, 2, 0, 0, 0, 0],  # no majority (4 of 9); plurality neutral
    [3, 3, 0, 0, 0, 0, 0, 0, 2, 2],  # tie neutral/happiness: plurality takes the lowest index
    [0, 0, 3, 0, 0, 0, 0, 0, 3, 0],  # emotion tied with unknown: plurality needs strictly more
    [2, 0, 0, 0, 0, 0, 0, 0, 6, 2],  # unknown dominant
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # only single votes
    [0, 0, 0, 0, 0, 0, 0, 6, 1, 3],  # contempt
    [0] * 10,                        # no votes
])


@pytest.mark.parametrize("mode, num_classes, labels, reasons", [
    ("majority", 8, [1, 0, -1, -1, -1, -1, -1, 7, -1],
     ["", "", "no majority", "no majority", "no majority", "unknown/not-a-face", "no majority", "", "no votes"]),
    ("plurality", 8, [1, 0, 0, 0, -1, -1, -1, 7, -1],
     ["", "", "", "", "unknown/not-a-face", "unknown/not-a-face", "unknown/not-a-face", "", "no votes"]),
    ("plurality", 7, [1, 0, 0, 0, -1, -1, -1, -1, -1],
     ["", "", "", "", "unknown/not-a-face", "unknown/not-a-face", "unknown/not-a-face", "contempt (7-class)",
      "no votes"]),
])
def test_vote_rules(mode, num_classes, labels, reasons):
    got_labels, got_reasons = votes_to_labels(RULE_ROWS, mode=mode, num_classes=num_classes)
    assert got_labels.tolist() == labels
    assert got_reasons.tolist() == reasons


def test_vote_rules_reject_bad_options():
    with pytest.raises(ValueError, match="'majority', 'plurality'"):
        votes_to_labels(RULE_ROWS, mode="mean")
    with pytest.raises(ValueError, match="num_classes"):
        read_ferplus("nowhere", num_classes=6)


# ---------------------------------------------------------------------------------------------- readers
def test_ferplus_reader(tiny_ferplus):
    d = read_ferplus(tiny_ferplus, mode="plurality")
    assert d.split_counts() == {"train": 5, "valid": 2, "test": 3}
    assert d.labels.tolist() == [1, 0, 2, 0, 7, 3, 5, 4, 6, 0]
    assert d.ids[0] == "FER2013Train/fer0000000.png" and d.ids[-1] == "FER2013Test/fer0000010.png"
    # image k is filled with k: images follow their ids
    assert [int(i[-11:-4]) for i in d.ids] == d.images[:, 0, 0, 0].tolist()
    assert d.images.shape == (10, 48, 48, 1) and d.votes.shape == (10, 8) and d.votes.dtype == np.float32
    assert d.votes[3].tolist() == [4, 0, 0, 1, 3, 2, 0, 0]  # raw votes, single votes kept
    assert d.dropped == {"train": {"unknown/not-a-face": 1}, "valid": {}, "test": {}}
    assert d.options["mode"] == "plurality"


def test_ferplus_reader_majority_7_classes_and_resize(tiny_ferplus):
    d = read_ferplus(tiny_ferplus, mode="majority", num_classes=7, image_size=32, channels=3)
    assert d.labels.tolist() == [1, 0, 2, 3, 5, 4, 6]
    assert d.classes[-1] == "fear" and d.votes.shape == (7, 7)
    assert d.images.shape == (7, 32, 32, 3)
    assert d.dropped["train"] == {"contempt (7-class)": 1, "no majority": 1, "unknown/not-a-face": 1}
    assert d.dropped["test"] == {"no majority": 1}


def _write_fer2013(root: Path, votes: dict[str, list[list[int]]], *, faceless: int = 1) -> Path:
    """fer2013.csv + fer2013new.csv for the same images as the tiny FERPlus tree (+ ``faceless`` rows)."""
    usage = {"train": "Training", "valid": "PublicTest", "test": "PrivateTest"}
    pix, new, k = ["emotion,pixels,Usage"], [
        "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"], 0
    for split, rows in votes.items():
        for row in rows:
            pix.append(f"0,{' '.join([str(k)] * 2304)},{usage[split]}")
            new.append(f"{usage[split]},fer{k:07d}.png," + ",".join(map(str, row)))
            k += 1
    for _ in range(faceless):
        pix.append(f"0,{' '.join(['0'] * 2304)},Training")
        new.append("Training,," + ",".join(["0"] * 10))
    root.mkdir(parents=True, exist_ok=True)
    (root / "fer2013.csv").write_text("\n".join(pix) + "\n")
    (root / "fer2013new.csv").write_text("\n".join(new) + "\n")
    return root


def test_fer2013_matches_ferplus(tmp_path, tiny_ferplus, tiny_ferplus_votes):
    root = _write_fer2013(tmp_path / "fer2013", tiny_ferplus_votes)
    for mode in ("majority", "plurality"):
        a, b = read_fer2013(root, mode=mode), read_ferplus(tiny_ferplus, mode=mode)
        for attr in ("ids", "labels", "split", "votes", "images"):
            np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
    assert a.dropped["train"] == {"no face (empty image name)": 1, "unknown/not-a-face": 1}


def test_fer2013_original_labels(tmp_path, tiny_ferplus_votes):
    """mode="original": the same faces as the vote modes, labelled by FER2013's emotion code mapped by name."""
    root = _write_fer2013(tmp_path / "fer2013", tiny_ferplus_votes)
    lines = (root / "fer2013.csv").read_text().splitlines()
    codes = [(i * 3) % 7 for i in range(len(lines) - 1)]
    (root / "fer2013.csv").write_text("\n".join([lines[0]] + [f"{c}{line[1:]}" for c, line in zip(codes, lines[1:])])
                                      + "\n")
    d = read_fer2013(root, mode="original", num_classes=7)
    faces = len(lines) - 2  # the last row is faceless
    assert len(d) == faces and d.dropped["train"] == {"no face (empty image name)": 1}
    canonical = [class_index(("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")[c], 7)
                 for c in codes[:faces]]
    assert d.labels.tolist() == canonical and d.classes == class_names(7)
    (root / "fer2013.csv").write_text((root / "fer2013.csv").read_text().replace(f"{codes[0]},", "9,", 1))
    with pytest.raises(DatasetError, match=r"fer2013\.csv, line 2: emotion must be an integer 0-6"):
        read_fer2013(root, mode="original")


def test_fer2013_row_count_mismatch(tmp_path):
    root = _write_fer2013(tmp_path, {"train": [[0, 9, 1, 0, 0, 0, 0, 0, 0, 0]]}, faceless=0)
    with (root / "fer2013new.csv").open("a") as f:
        f.write("Training,fer0000099.png,1,0,0,0,0,0,0,0,0,0\n")
    with pytest.raises(DatasetError, match=r"fer2013\.csv has 1 data rows but .*fer2013new\.csv has 2"):
        read_fer2013(root)


def test_rafdb_reader(tmp_path, write_rafdb):
    root = write_rafdb(tmp_path, ["train_00001.jpg 5", "train_00002.jpg 1", "test_0001.jpg 7",
                                                "test_0002.jpg 6"])
    d = read_rafdb(root, image_size=64)
    assert d.labels.tolist() == [3, 2, 0, 4]  # sadness, surprise, neutral, anger
    assert d.split.tolist() == ["train", "train", "test", "test"] and d.classes[-1] == "fear"
    assert d.ids[0] == "train_00001.jpg" and d.images.shape == (4, 64, 64, 3) and d.votes is None
    assert np.abs(d.images[:, 5, 5, 0].astype(int) - [0, 20, 40, 60]).max() <= 2  # JPEG rounding


def test_affectnet_reader(tmp_path, write_affectnet):
    rows = [("training.csv", "1/a.jpg", 1), ("training.csv", "1/b.jpg", 2), ("training.csv", "1/c.jpg", 7),
            ("training.csv", "2/d.jpg", 8), ("training.csv", "2/e.jpg", 10), ("validation.csv", "3/f.jpg", 6)]
    root = write_affectnet(tmp_path, rows)
    d = read_affectnet(root, num_classes=7, image_size=16)
    assert d.ids.tolist() == ["1/a.jpg", "1/b.jpg", "3/f.jpg"]
    assert d.labels.tolist() == [1, 3, 4] and d.split.tolist() == ["train", "train", "test"]
    assert d.images.shape == (3, 16, 16, 3) and d.images.min() > 240  # cropped to the white face box
    assert d.dropped == {"train": {"contempt (7-class)": 1, "none (8)": 1, "no face (10)": 1}, "test": {}}
    assert read_affectnet(root, crop=False, image_size=16).images.min() < 10
    va = affectnet_va(root)
    assert len(va) == 6 and va.set_index("id").loc["3/f.jpg", "valence"] == pytest.approx(0.5)


def test_folder_reader(tmp_path, write_image):
    for rel, value in [("train/Happy/a.png", 1), ("train/angry/b.jpg", 2), ("train/contempt/c.png", 3),
                       ("val/NEUTRAL/d.png", 4), ("test/sad/e.png", 5)]:
        write_image(tmp_path / rel, value * 40, size=(24, 24))
    (tmp_path / "train" / "angry" / "notes.txt").write_text("x")
    d = read_folder(tmp_path, num_classes=7, channels=1)
    assert d.ids.tolist() == ["train/Happy/a.png", "train/angry/b.jpg", "val/NEUTRAL/d.png", "test/sad/e.png"]
    assert d.labels.tolist() == [1, 4, 0, 3] and d.split.tolist() == ["train", "train", "valid", "test"]
    assert d.images.shape == (4, 24, 24, 1)
    assert d.dropped["train"] == {"contempt (7-class)": 1, "not an image file": 1}


# ---------------------------------------------------------------------------------------------- bad input
def _label_csv(root: Path, split: str = "FER2013Train") -> Path:
    return root / split / "label.csv"


def test_missing_image_names_file_and_row(tiny_ferplus):
    (tiny_ferplus / "FER2013Train" / "fer0000001.png").unlink()
    with pytest.raises(DatasetError, match=r"fer0000001\.png.*label\.csv, line 2"):
        read_ferplus(tiny_ferplus)
    d = read_ferplus(tiny_ferplus, on_missing="drop")
    assert d.dropped["train"]["missing image"] == 1


def test_corrupt_image_names_file_and_row(tiny_ferplus):
    (tiny_ferplus / "FER2013Valid" / "fer0000007.png").write_bytes(b"\x89PNG garbage" * 10)
    with pytest.raises(DatasetError, match=r"cannot read image .*fer0000007\.png.*label\.csv, line 2"):
        read_ferplus(tiny_ferplus)


def test_wrong_column_count_names_file_and_row(tiny_ferplus):
    path = _label_csv(tiny_ferplus)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"label\.csv, line 3: expected 12 columns, got 11"):
        read_ferplus(tiny_ferplus)


def test_bad_votes_name_file_and_row(tiny_ferplus):
    path = _label_csv(tiny_ferplus, "FER2013Test")
    path.write_text(path.read_text().replace("0,0,0,0,0,0,10,0,0,0", "0,0,0,0,0,0,x,0,0,0"))
    with pytest.raises(DatasetError, match=r"FER2013Test.label\.csv, line 2: vote counts must be integers"):
        read_ferplus(tiny_ferplus)


def test_empty_split_is_an_error(tmp_path, build_ferplus):
    happy, unknown = [0, 9, 1, 0, 0, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0, 0, 0, 6, 2]
    root = build_ferplus(tmp_path, {"train": [happy], "valid": [unknown], "test": [happy]})
    with pytest.raises(DatasetError, match=r"split 'valid' .*no usable samples.*unknown/not-a-face"):
        read_ferplus(root)


def test_out_of_range_label_id_names_file_and_row(tmp_path, write_rafdb):
    root = write_rafdb(tmp_path, ["train_00001.jpg 5", "train_00002.jpg 8", "test_0001.jpg 7"])
    with pytest.raises(DatasetError, match=r"list_patition_label\.txt, line 2: label id '8' out of range.*7 neutral"):
        read_rafdb(root)


def test_affectnet_bad_expression_names_file_and_row(tmp_path, write_affectnet):
    root = write_affectnet(tmp_path, [("training.csv", "a.jpg", 1), ("validation.csv", "b.jpg", 11)])
    with pytest.raises(DatasetError, match=r"validation\.csv, line 2: expression '11' out of range"):
        read_affectnet(root)


def test_unknown_class_folder_lists_valid_names(tmp_path, write_image):
    write_image(tmp_path / "train" / "happy" / "a.png", 1)
    write_image(tmp_path / "train" / "bored" / "b.png", 2)
    with pytest.raises(DatasetError, match=r"unknown class folder .*bored.*neutral, happiness"):
        read_folder(tmp_path)


def test_unknown_dataset_and_option():
    assert list_datasets() == ["affectnet", "fer2013", "ferplus", "folder", "rafdb"]
    with pytest.raises(ValueError, match="unknown dataset 'fer'.*ferplus"):
        load_dataset("fer", ".")
    with pytest.raises(TypeError, match="unknown option.*labels.*valid: mode"):
        load_dataset("ferplus", ".", labels="soft")


# ---------------------------------------------------------------------------------------------- the registry
#: A tiny tree of each registered dataset: ``name -> make(root, fixtures) -> root``. A new reader gets its
#: contract checked below once it has an entry here (the registry test fails until it has one).
TINY_TREES = {
    "ferplus": lambda root, fx: fx["build_ferplus"](root),
    "fer2013": lambda root, fx: _write_fer2013(root, fx["tiny_ferplus_votes"]),
    "rafdb": lambda root, fx: fx["write_rafdb"](root, ["train_00001.jpg 5", "train_00002.jpg 1", "test_0001.jpg 7"]),
    "affectnet": lambda root, fx: fx["write_affectnet"](root, [("training.csv", "1/a.jpg", 1),
                                                              ("training.csv", "1/b.jpg", 2),
                                                              ("validation.csv", "2/c.jpg", 6)]),
    "folder": lambda root, fx: _write_folder(root, fx["write_image"]),
}


def _write_folder(root: Path, write_image) -> Path:
    for rel in ("train/happy/a.png", "train/angry/b.png", "val/sad/c.png", "test/fear/d.png"):
        write_image(root / rel, 40, size=(24, 24))
    return root


def _as_text(value) -> str:
    """How a default value is written on the command line (``--dataset-opt KEY=TEXT``)."""
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("name", list_datasets())
def test_every_registered_reader_keeps_the_contract(name, tmp_path, build_ferplus, tiny_ferplus_votes, write_rafdb,
                                                    write_affectnet, write_image):
    """Registered by name; canonical classes, splits and arrays; typed, defaulted options; cached; clear errors."""
    from ferlib.classes import class_names
    from ferlib.data import SPLITS, dataset_reader
    from ferlib.data.registry import READERS
    from ferlib.options import parse_options

    assert name in TINY_TREES, f"add a tiny tree of dataset {name!r} to TINY_TREES"
    reader = dataset_reader(name)
    assert READERS[name] is reader
    root = TINY_TREES[name](tmp_path / name, dict(build_ferplus=build_ferplus, tiny_ferplus_votes=tiny_ferplus_votes,
                                                  write_rafdb=write_rafdb, write_affectnet=write_affectnet,
                                                  write_image=write_image))
    d = load_dataset(name, root)
    assert d.classes == class_names(d.num_classes) and d.name == name
    assert set(d.split) <= set(SPLITS) and "train" in set(d.split) and "test" in set(d.split)
    assert d.images.dtype == np.uint8 and d.images.ndim == 4 and len(d.images) == len(d.labels) == len(d.ids)
    assert d.labels.min() >= 0 and d.labels.max() < d.num_classes and len(set(d.ids)) == len(d)
    cached = load_dataset(name, root)  # the second load comes from the cache, equal
    np.testing.assert_array_equal(cached.images, d.images)
    assert len(list((tmp_path / "cache").glob(f"{name}-*.npz"))) == 1
    # every option has a default and a type hint the CLI's --dataset-opt reads back to that default
    params = [p for p in inspect.signature(reader).parameters.values() if p.kind == p.KEYWORD_ONLY]
    assert params and all(p.default is not p.empty for p in params)
    defaults = {p.name: p.default for p in params}
    typed = parse_options(reader, [f"{k}={_as_text(v)}" for k, v in defaults.items()], where="--dataset-opt")
    assert typed == defaults
    with pytest.raises(TypeError, match=f"unknown option.*no_such_option.*dataset '{name}'.*valid: "):
        load_dataset(name, root, no_such_option=1)


def test_a_dataset_name_is_registered_once():
    from ferlib.data import register_dataset

    with pytest.raises(ValueError, match="dataset name 'ferplus' is empty or already registered"):
        register_dataset("ferplus")
    assert load_dataset.__module__ == "ferlib.data.registry" and list_datasets().count("ferplus") == 1


@pytest.mark.parametrize("name", [n for n in TINY_TREES if n != "folder"])  # folder: no label file
def test_label_files_saved_with_a_byte_order_mark_read_the_same(name, tmp_path, build_ferplus, tiny_ferplus_votes,
                                                                write_rafdb, write_affectnet, write_image):
    """Spreadsheet programs save CSV with a UTF-8 BOM: every sample still loads, under its own name."""
    root = TINY_TREES[name](tmp_path / name, dict(build_ferplus=build_ferplus, tiny_ferplus_votes=tiny_ferplus_votes,
                                                  write_rafdb=write_rafdb, write_affectnet=write_affectnet,
                                                  write_image=write_image))
    plain = load_dataset(name, root)
    label_files = [p for p in root.rglob("*") if p.suffix in (".csv", ".txt")]
    assert label_files
    for path in label_files:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    marked = load_dataset(name, root)
    assert marked.ids.tolist() == plain.ids.tolist() and not any("\ufeff" in i for i in marked.ids)
    np.testing.assert_array_equal(marked.labels, plain.labels)
    np.testing.assert_array_equal(marked.images, plain.images)


def test_a_missing_name_with_invisible_characters_blames_the_encoding(tiny_ferplus):
    path = _label_csv(tiny_ferplus)
    path.write_text(path.read_text().replace("fer0000001.png", "fer0000001\u200b.png"))
    for on_missing in ("error", "drop"):  # dropping would train without the sample, silently
        with pytest.raises(DatasetError, match=r"fer0000001\\u200b\.png.*line 2.*invisible characters.*encoding") \
                as err:
            read_ferplus(tiny_ferplus, on_missing=on_missing)
        assert "on_missing" not in str(err.value)


# ---------------------------------------------------------------------------------------------- cache
def test_cache_second_load_skips_images(tiny_ferplus, tmp_path, monkeypatch):
    first = load_dataset("ferplus", tiny_ferplus, mode="plurality")
    assert len(list((tmp_path / "cache").glob("ferplus-*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("image decoded despite the cache")

    monkeypatch.setattr(common, "decode", fail)
    second = load_dataset("ferplus", tiny_ferplus, mode="plurality", progress=True)
    for attr in ("images", "labels", "split", "ids", "votes"):
        np.testing.assert_array_equal(getattr(first, attr), getattr(second, attr))
    assert (second.classes, second.dropped, second.options) == (first.classes, first.dropped, first.options)
    with pytest.raises(DatasetError, match="despite the cache"):  # other options -> another entry
        load_dataset("ferplus", tiny_ferplus, mode="majority")


def test_cache_follows_file_changes(tiny_ferplus):
    assert len(load_dataset("ferplus", tiny_ferplus, mode="majority")) == 8
    assert len(load_dataset("ferplus", tiny_ferplus)) == 10  # the reader's default: plurality
    path = _label_csv(tiny_ferplus)
    path.write_text(path.read_text().replace("0,9,1,0,0,0,0,0,0,0", "0,0,0,0,0,0,0,0,10,1"))
    assert len(load_dataset("ferplus", tiny_ferplus, mode="majority")) == 7  # label file edited: re-read
    (tiny_ferplus / "FER2013Test" / "fer0000009.png").unlink()
    with pytest.raises(DatasetError, match="missing image"):  # image listing changed: re-read
        load_dataset("ferplus", tiny_ferplus)


def test_a_dataset_decoded_elsewhere_is_read_through_the_cache(tiny_ferplus, tmp_path):
    data = load_dataset("ferplus", tiny_ferplus, mode="majority")
    stand_in = tmp_path / "stand_in"  # holds none of the reader's files: reading them would fail
    (stand_in / "FER2013Train").mkdir(parents=True)
    assert cache_dataset(data, "ferplus", stand_in, mode="majority") is data
    again = load_dataset("ferplus", stand_in, mode="majority")
    for attr in ("images", "labels", "split", "ids", "votes"):
        np.testing.assert_array_equal(getattr(again, attr), getattr(data, attr))
    with pytest.raises(DatasetError):  # other options: another entry, read from the (empty) files
        load_dataset("ferplus", stand_in, mode="plurality")
    with pytest.raises(TypeError, match="modes"):
        cache_dataset(data, "ferplus", stand_in, modes="majority")


# ---------------------------------------------------------------------------------------------- real data
@pytest.mark.parametrize("mode, counts", [("plurality", (1382, 296, 296)), ("majority", (1214, 270, 255))])
def test_shipped_sample(mode, counts):
    d = read_ferplus(SAMPLE, mode=mode)
    assert tuple(d.split_counts().values()) == counts
    assert sum(sum(r.values()) for r in d.dropped.values()) + len(d) == 2000
    if mode == "plurality":
        assert np.bincount(d.labels[d.split == "train"], minlength=8).min() >= 20  # rare classes kept


@pytest.mark.slow
@pytest.mark.skipif(not REAL_FERPLUS.is_dir(), reason=f"{REAL_FERPLUS} not present")
@pytest.mark.parametrize("mode, counts", [("majority", (25045, 3191, 3137)), ("plurality", (28150, 3526, 3522))])
def test_real_ferplus_counts(mode, counts, tmp_path_factory):
    d = load_dataset("ferplus", REAL_FERPLUS, mode=mode, cache_dir=tmp_path_factory.getbasetemp() / "ferlib-cache")
    assert tuple(d.split_counts().values()) == counts
    assert d.images.shape[1:] == (48, 48, 1) and d.votes.shape == (len(d), 8)
