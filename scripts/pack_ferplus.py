"""Carry a FERPlus copy to a machine that lacks it (a lent GPU: no network, no ``../shared``, no dlib, no
lightly), and unpack it there so that ``load_dataset``, ``python -m ferlib train`` and the run ids work unchanged.

``pack`` (here) writes one xz-compressed tar, split into parts of at most ``--part-mib`` MiB plus ``parts.json``
(their sizes and SHA-256), holding:

- ``data.npz``: the canonical cache of the copy (:class:`ferlib.data.FERData` as ``ferlib.data.cache`` stores it:
  images, labels, votes, splits, ids) at the profile's reader options;
- ``manifest.json``: the reader and its options, the relative path and size of every file under the copy, its
  ``data_fingerprint`` and the data's ``fingerprint()``;
- ``cache/...``: the cache entries the profile's cells read that the machine cannot make: the self-supervised
  checkpoint of its backbone (``weights: ssl``; pretraining needs lightly) and, with ``--landmarks dlib``, the
  landmarks of the train split (LA-Net; extraction needs dlib).

``unpack`` (there) checks the parts, builds a stand-in root: the same relative paths and sizes as the copy, as
empty (sparse) files, so its ``data_fingerprint`` and hence every run id are the copy's; stores ``data.npz`` as
the cache entry ``load_dataset`` reads for that root (:func:`ferlib.data.cache_dataset`; the reader never opens
the empty files) and puts the carried entries into the cache (``$FERLIB_CACHE``). It checks that
``load_dataset`` then gives the packed data. An unpacked root is reused when it still checks out.

    python scripts/pack_ferplus.py pack --data ../shared/data/ferplus --profile cpu_memorise_full \
        --landmarks dlib --out .gpu/ferplus
    python scripts/pack_ferplus.py unpack --parts .gpu/ferplus --root /tmp/ferlib-gpu/ferplus

Sizes, measured (FERPlus, plurality 8 classes: 35,198 faces at 48 px, 78 MiB as ``data.npz``): packed with the
train split's dlib landmarks 62.3 MiB, with cpu_memorise_full's self-supervised checkpoint too 72.2 MiB (5 parts
of 16 MiB; xz, about 2 min here; unpacking about 11 s). A device call carries at most 64 MiB with the working tree
(~45 MiB), so the parts travel one per call to one warm machine (scripts/gpu_check.sh).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferlib.data import FERData, cache_dataset, data_fingerprint, default_cache_dir, load_dataset  # noqa: E402
from ferlib.paths import portable_path  # noqa: E402

PACK = "pack.tar.xz"
PARTS = "parts.json"
MANIFEST, DATA, CACHE = "manifest.json", "data.npz", "cache"


# ----------------------------------------------------------------------------------- pack
def root_files(root: Path) -> list[list]:
    """``[[relative path, size], ...]`` of every file under ``root``, in the order and form that
    :func:`ferlib.data.data_fingerprint` hashes them."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        files += [[f"{rel}/{name}", os.stat(os.path.join(dirpath, name)).st_size] for name in sorted(filenames)]
    return files


def cache_entries(data: FERData, spec, landmarks: list[str]) -> list[Path]:
    """The cache files a profile's cells read that a bare machine cannot make: the self-supervised checkpoint
    of ``spec``'s backbone (its ``weights.pt`` and ``provenance.json``) when it starts from ``ssl``, and the
    landmarks of the train split for each backend of ``landmarks``; each must exist (made here first)."""
    from ferlib.backbones import BackboneConfig
    from ferlib.landmarks import landmarks_cache_file
    from ferlib.pretrain import SSL, PretrainConfig, ssl_weights
    from ferlib.pretrain.store import PROVENANCE

    files = []
    backbone = BackboneConfig(**spec.backbone)
    if backbone.weights == SSL:
        weights = Path(ssl_weights(spec.data, dataset=spec.dataset, dataset_options=spec.dataset_options,
                                   backbone=backbone, config=PretrainConfig(**spec.pretrain)))
        files += [weights, weights.with_name(PROVENANCE)]
    for backend in landmarks:
        path = landmarks_cache_file(data.subset("train"), backend=backend)
        if not path.is_file():
            raise FileNotFoundError(f"no {backend} landmarks of the train split in the cache ({path}): extract "
                                    "them first (notebooks/00_prepare_data with extract_limit null)")
        files.append(path)
    return files


def pack(data_root: Path, spec, out: Path, *, landmarks: list[str], part_mib: float) -> dict:
    """Write the parts and ``parts.json`` of ``data_root`` at ``spec``'s reader options into ``out``."""
    data = load_dataset(spec.dataset, data_root, **spec.dataset_options)
    cache = default_cache_dir()
    entries = cache_entries(data, spec, landmarks)
    manifest = {"format": 1, "dataset": spec.dataset, "options": spec.dataset_options,
                "source": portable_path(data_root), "files": root_files(data_root),
                "data_fingerprint": data_fingerprint(data_root), "fingerprint": data.fingerprint(),
                "cache": [p.relative_to(cache).as_posix() for p in entries]}
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob(f"{PACK}.*"), out / PARTS]:
        old.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        saved = data.save(Path(tmp) / DATA)
        packed = Path(tmp) / PACK
        with tarfile.open(packed, "w:xz", preset=6) as tar:
            text = json.dumps(manifest).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
            tar.add(saved, arcname=DATA)
            for path in entries:
                tar.add(path, arcname=f"{CACHE}/{path.relative_to(cache).as_posix()}")
        parts = _split(packed, out, int(part_mib * 2 ** 20))
    index = {"parts": parts, "size": sum(p["size"] for p in parts), "dataset": spec.dataset,
             "source": manifest["source"], "cache": manifest["cache"]}
    (out / PARTS).write_text(json.dumps(index, indent=1) + "\n")
    return index


def _split(path: Path, out: Path, part_bytes: int) -> list[dict]:
    """Cut ``path`` into ``out/<name>.00, .01 ...`` of at most ``part_bytes``; their names, sizes and SHA-256."""
    if part_bytes < 1:
        raise ValueError(f"--part-mib must be positive, got {part_bytes / 2 ** 20}")
    parts = []
    with open(path, "rb") as src:
        while chunk := src.read(part_bytes):
            name = f"{PACK}.{len(parts):02d}"
            (out / name).write_bytes(chunk)
            parts.append({"name": name, "size": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    return parts


# ----------------------------------------------------------------------------------- unpack
def checked_parts(folder: Path) -> list[Path]:
    """The parts listed in ``folder/parts.json``, each present with its size and SHA-256; raises naming every part
    that is missing or differs (one line)."""
    index = json.loads((folder / PARTS).read_text())
    bad = []
    for part in index["parts"]:
        path = folder / part["name"]
        if not path.is_file():
            bad.append(f"{part['name']} missing")
        elif path.stat().st_size != part["size"] or hashlib.sha256(path.read_bytes()).hexdigest() != part["sha256"]:
            bad.append(f"{part['name']} differs from parts.json (size or SHA-256)")
    if bad:
        raise OSError(f"{folder}: {len(bad)} of {len(index['parts'])} parts unusable: {'; '.join(bad)} (each part "
                      "travels in its own device call; see scripts/gpu_check.sh)")
    return [folder / p["name"] for p in index["parts"]]


class _Joined(io.RawIOBase):
    """The parts read one after the other as one stream."""

    def __init__(self, paths: list[Path]) -> None:
        self._files = [open(p, "rb") for p in paths]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._files:
            n = self._files[0].readinto(buffer)
            if n:
                return n
            self._files.pop(0).close()
        return 0

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def unpack(parts: Path, root: Path, *, cache_dir: Path | None = None) -> dict:
    """Build the stand-in ``root`` and the cache entries from the parts under ``parts``; the manifest."""
    cache = Path(cache_dir or default_cache_dir())
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        with _Joined(checked_parts(parts)) as stream, tarfile.open(fileobj=stream, mode="r|xz") as tar:
            for member in tar:
                tar.extract(member, tmp, filter="data")
        manifest = json.loads((Path(tmp) / MANIFEST).read_text())
        if not _unpacked(root, manifest, cache):
            _stand_in(root, manifest["files"])
            data = FERData.load(Path(tmp) / DATA)
            cache_dataset(data, manifest["dataset"], root, cache_dir=cache, **manifest["options"])
        for rel in manifest["cache"]:
            (cache / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / CACHE / rel, cache / rel)
    if not _unpacked(root, manifest, cache):
        raise OSError(f"{root}: load_dataset does not give the packed data after unpacking (cache {cache})")
    return manifest


def _stand_in(root: Path, files: list[list]) -> None:
    """Empty files of the given relative paths and sizes under a new ``root`` (sparse: no disk is used), marked
    as a stand-in by ``<root>.stand-in`` beside it; an existing ``root`` is replaced only when so marked."""
    marker = root.with_name(root.name + ".stand-in")
    if root.exists():
        if not marker.is_file():
            raise OSError(f"{root} exists and is no stand-in root made by this script: pass another --root")
        shutil.rmtree(root)
    marker.write_text("empty files standing in for a dataset copy (scripts/pack_ferplus.py); safe to delete\n")
    for rel, size in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)


def _unpacked(root: Path, manifest: dict, cache: Path) -> bool:
    """``root`` has the copy's data fingerprint and ``load_dataset`` reads the packed data from it."""
    if not root.is_dir() or data_fingerprint(root) != manifest["data_fingerprint"]:
        return False
    try:
        data = load_dataset(manifest["dataset"], root, cache_dir=cache, **manifest["options"])
    except (OSError, ValueError):  # the reader read the stand-in's empty files: no cache entry
        return False
    return data.fingerprint() == manifest["fingerprint"]


# ----------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the parts (here)")
    p.add_argument("--data", required=True, help="the dataset copy (e.g. ../shared/data/ferplus)")
    p.add_argument("--profile", default="cpu_memorise_full",
                   help="study profile whose reader options and backbone to pack for (default: cpu_memorise_full)")
    p.add_argument("--landmarks", action="append", default=[], metavar="BACKEND",
                   help="also carry the cached landmarks of the train split from this backend (repeatable: dlib)")
    p.add_argument("--out", default=".gpu/ferplus", help="folder of the parts (default: .gpu/ferplus, ignored)")
    p.add_argument("--part-mib", type=float, default=16.0, help="largest part in MiB (default: 16)")
    u = sub.add_parser("unpack", help="build the stand-in root and the cache entries (there)")
    u.add_argument("--parts", default=".gpu/ferplus", help="folder of the parts and parts.json")
    u.add_argument("--root", required=True, help="the stand-in dataset root to build (e.g. /tmp/ferlib-gpu/ferplus)")
    u.add_argument("--cache", default=None, help="cache folder (default: $FERLIB_CACHE or ~/.cache/ferlib)")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            from ferlib.study import load_profile

            spec = load_profile(args.profile, data=args.data)
            index = pack(Path(args.data), spec, Path(args.out), landmarks=args.landmarks, part_mib=args.part_mib)
            print(f"{len(index['parts'])} parts, {index['size'] / 2 ** 20:.1f} MiB in {args.out} "
                  f"(cache entries: {', '.join(index['cache']) or 'none'})")
        else:
            manifest = unpack(Path(args.parts), Path(args.root), cache_dir=args.cache and Path(args.cache))
            print(f"{manifest['dataset']} from {manifest['source']}: stand-in root {args.root}, "
                  f"data fingerprint {manifest['data_fingerprint']}, {len(manifest['cache'])} cache entries")
    except (OSError, ValueError, lzma.LZMAError, tarfile.TarError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
