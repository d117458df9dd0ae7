"""Write a small stratified FERPlus subset in Microsoft's layout (PNGs + label.csv rows copied unchanged).

Example (the command that produced ``data/ferplus_sample``)::

    python scripts/make_sample.py --src /work/shared/data/ferplus --dst data/ferplus_sample \
        --train 1400 --valid 300 --test 300 --seed 0

Strata are the plurality labels (8 classes) plus one stratum for rows plurality drops (unknown/not-a-face), so
the sample also exercises the drop paths. Each class first gets ``min(floor, available)`` rows (``--floor-train``
in train, ``--floor-eval`` in valid/test), the rest is shared in proportion to what is left (largest remainder).
Deterministic for a given ``--seed``.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferlib.classes import CLASSES_8  # noqa: E402
from ferlib.data.ferplus import FERPLUS_DIRS, read_ferplus, votes_to_labels  # noqa: E402

LICENSE = "LICENSE-FERPlus-labels.md"


def allocate(sizes: np.ndarray, n: int, floor: np.ndarray) -> np.ndarray:
    """How many rows to take from each stratum.

    Parameters
    ----------
    sizes : np.ndarray, shape (G,), int
        Rows available per stratum.
    n : int
        Total to take (capped at ``sizes.sum()``).
    floor : np.ndarray, shape (G,), int
        Minimum per stratum (capped at its size).

    Returns
    -------
    np.ndarray, shape (G,), int
        Counts summing to ``min(n, sizes.sum())``.
    """
    take = np.minimum(floor, sizes)
    while (left := min(n, sizes.sum()) - take.sum()) > 0:
        room = sizes - take
        share = left * room / room.sum()
        extra = np.floor(share).astype(int)
        order = np.argsort(-(share - extra), kind="stable")
        extra[order[: left - extra.sum()]] += 1
        take += np.minimum(extra, room)
    return take


def sample_split(lines: list[str], n: int, floor: int, rng: np.random.Generator) -> list[int]:
    """Indices (in file order) of the rows of one ``label.csv`` to keep."""
    votes = np.array([[int(v) for v in row[2:]] for row in csv.reader(lines)])
    labels, _ = votes_to_labels(votes, mode="plurality", num_classes=8)
    strata = [np.flatnonzero(labels == k) for k in range(len(CLASSES_8))] + [np.flatnonzero(labels < 0)]
    floors = np.array([floor] * len(CLASSES_8) + [0])
    take = allocate(np.array([len(s) for s in strata]), n, floors)
    chosen = [rng.permutation(s)[:k] for s, k in zip(strata, take)]
    return sorted(np.concatenate(chosen).tolist())


def copy_split(src: Path, dst: Path, n: int, floor: int, rng: np.random.Generator) -> None:
    """Copy ``n`` stratified rows of ``src/label.csv`` and their PNGs to ``dst``."""
    lines = src.joinpath("label.csv").read_text(encoding="utf-8").splitlines()
    keep = sample_split(lines, n, floor, rng)
    dst.mkdir(parents=True, exist_ok=True)
    rows = [lines[i] for i in keep]
    for row in csv.reader(rows):
        shutil.copy2(src / row[0], dst / row[0])
    dst.joinpath("label.csv").write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def class_table(dst: Path) -> str:
    """Markdown table of images per split and class under both label modes."""
    out = ["| mode | split | images | " + " | ".join(CLASSES_8) + " | dropped |", "|---" * 12 + "|"]
    for mode in ("plurality", "majority"):
        data = read_ferplus(dst, mode=mode)
        for split in FERPLUS_DIRS:
            labels = data.labels[data.split == split]
            counts = np.bincount(labels, minlength=len(CLASSES_8))
            drops = ", ".join(f"{r} {c}" for r, c in data.dropped[split].items()) or "0"
            out.append(f"| {mode} | {split} | {len(labels)} | " + " | ".join(map(str, counts)) + f" | {drops} |")
    return "\n".join(out)


def write_readme(args: argparse.Namespace, dst: Path) -> None:
    listed = {s: len(dst.joinpath(d, "label.csv").read_text().splitlines()) for s, d in FERPLUS_DIRS.items()}
    size_kb = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file()) / 1024
    command = (f"python scripts/make_sample.py --src {args.src} --dst {args.dst} --train {args.train} "
               f"--valid {args.valid} --test {args.test} --seed {args.seed} --floor-train {args.floor_train} "
               f"--floor-eval {args.floor_eval}")
    text = f"""# FERPlus sample

A small stratified subset of FERPlus in Microsoft's layout, for tests and quick experiments:
`FER2013Train/`, `FER2013Valid/`, `FER2013Test/`, each with 48x48 grayscale PNGs and a `label.csv` whose rows
are copied unchanged from the original files. Read it with `ferlib.data.load_dataset("ferplus", "{args.dst}")`.

## Source and licence

- Images: FER2013 (Goodfellow et al., "Challenges in Representation Learning: A report on three machine
  learning contests", ICONIP 2013), as distributed with FERPlus.
- Labels: FERPlus (Barsoum et al., "Training Deep Networks for Facial Expression Recognition with
  Crowd-Sourced Label Distribution", ICMI 2016), https://github.com/microsoft/FERPlus, MIT licence:
  see [{LICENSE}]({LICENSE}) (copied from the source).
- Copied from `{args.src}`.

## How it was made

```
{command}
```

Stratified by the plurality label (8 classes) plus a stratum for rows plurality drops; each class gets at least
{args.floor_train} rows in train and {args.floor_eval} in valid/test where available, the rest proportionally.
Deterministic for the seed.

## Counts

Rows listed: train {listed['train']}, valid {listed['valid']}, test {listed['test']}
({sum(listed.values())} images, {size_kb:.0f} KiB on disk). Images per class after ferlib's label rules
(8 classes):

{class_table(dst)}
"""
    dst.joinpath("README.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="FERPlus root (FER2013Train/, FER2013Valid/, FER2013Test/)")
    p.add_argument("--dst", required=True, help="output folder (a previous sample there is replaced)")
    p.add_argument("--train", type=int, default=1400)
    p.add_argument("--valid", type=int, default=300)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--floor-train", type=int, default=20, help="minimum rows per class in train")
    p.add_argument("--floor-eval", type=int, default=5, help="minimum rows per class in valid and test")
    args = p.parse_args(argv)
    src, dst = Path(args.src), Path(args.dst)
    if dst.exists():
        if any(dst.iterdir()) and not (dst / "FER2013Train").is_dir():
            p.error(f"--dst {dst} exists and is not a FERPlus sample; refusing to replace it")
        shutil.rmtree(dst)
    rng = np.random.default_rng(args.seed)
    for split, folder in FERPLUS_DIRS.items():
        floor = args.floor_train if split == "train" else args.floor_eval
        copy_split(src / folder, dst / folder, getattr(args, split), floor, rng)
    shutil.copy2(src / LICENSE, dst / LICENSE)
    write_readme(args, dst)
    print(dst.joinpath("README.md").read_text())


if __name__ == "__main__":
    main()
