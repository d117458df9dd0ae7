"""One experiment = one cell of a study grid: dataset -> noise -> model -> method -> :func:`ferlib.engine.fit`.

:class:`RunSpec` holds everything that defines a run; its :func:`run_id` is a stable hash of those fields, so a
study can tell a finished cell from a new one. The CLI (``python -m ferlib train``), the ``02_train``
notebook and the study runner all go through :func:`run`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import distributed, rundir
from .backbones import BackboneConfig, create_model
from .data.cache import data_fingerprint
from .engine import TrainConfig, fit, resolve_device, seed_everything
from .paths import portable_path
from .pretrain.store import SSL
from .recipes import recipe_method_options, recipe_source, resolve_recipe
from .results import flatten
from .rundir import RunDir

__all__ = ["RunSpec", "run", "build", "run_id", "prepare_data", "carve_valid", "hold_out_fold", "stratified_subset"]


@dataclass
class RunSpec:
    """Everything that defines a run.

    data : dataset root (a folder in the reader's layout).
    dataset : reader name (:func:`ferlib.data.list_datasets`).
    dataset_options : reader options (:func:`ferlib.data.load_dataset`); {} = the reader's defaults (FERPlus:
        ``mode="plurality", num_classes=8``).
    noise : noise spec (:mod:`ferlib.noise`), e.g. ``"symmetric:0.3"``; applied to the train split only,
        seeded with ``noise_seed`` (so a seed always gives the same flipped labels, whatever the method).
    noise_seed : seed of the noise draw; None (default) = ``train.seed``. Fix it while varying ``train.seed``
        to measure training variance with the flipped labels held fixed.
    train_subset : keep only this many training images (stratified by given label, fixed seed 0, BEFORE
        noise), so that short CPU profiles keep every method on the same images. None = all.
    valid_fraction : for a dataset without a validation split (RAF-DB, AffectNet): this share of the train
        split becomes the validation split (stratified by label, fixed seed 0, before the train subset and the
        noise), so the best epoch is still selected on validation data, never on test. 0 = carve none (then
        only ``select_on="test"`` can pick a best epoch). Datasets with a validation split keep theirs.
    method, method_options : registry name and config overrides (:func:`ferlib.methods.create_method`).
    recipe : ``shared`` (default: ``train`` as given, one budget for every method) or ``paper`` (the method's
        official recipe, :mod:`ferlib.recipes`, replaces the fields it names in ``train`` and adds its method
        options under ``method_options``). Resolved on construction, so ``train`` is what the run uses.
    fold : ``[i, k]`` makes this a cross-fitting cell: after the subset and the noise, the train split is cut
        into k folds stratified by given label (seeded by ``train.seed``) and fold i becomes the test split (the
        dataset's own test split is left out), so the read-out's ``test_logits`` are out-of-sample
        predictions of those training labels (cleanlab's input, :func:`ferlib.analysis.cleanlab_table`).
        None (default) = an ordinary run.
    variant : the name of the ablation variant this run is (``"full"`` or a key of the method's
        ``ablations``), recorded in ``result.json`` for the ablation table; a label, not in the run id (its
        ``method_options`` already hold what the variant changes). ``""`` = not an ablation cell.
    pretrain : :class:`ferlib.pretrain.PretrainConfig` overrides ({} = its defaults) of the self-supervised
        checkpoint that ``backbone.weights: ssl`` names (:func:`ferlib.pretrain.ssl_weights`: the cached
        pretraining of this dataset's train images, this backbone and this config; a clear error naming the
        ``python -m ferlib pretrain`` command when there is none). In the run id only with ``weights: ssl``.
    out : parent folder of run directories.
    """

    data: str
    dataset: str = "ferplus"
    dataset_options: dict = field(default_factory=dict)
    noise: str = "none"
    train_subset: int | None = None
    valid_fraction: float = 0.1
    method: str = "ce"
    method_options: dict = field(default_factory=dict)
    recipe: str = "shared"
    noise_seed: int | None = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fold: list[int] | None = None
    variant: str = ""
    pretrain: dict = field(default_factory=dict)
    out: str = "runs"

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig(**self.backbone)
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        from .methods import method_config
        from .noise import NoiseSpec

        self.noise = str(NoiseSpec.parse(self.noise))  # "symmetric:0.30" and "symmetric:0.3": one run
        self.train = resolve_recipe(self.method, self.recipe, self.train)
        self.method_options = recipe_method_options(self.method, self.recipe, self.method_options,
                                                    self.train.image_size)
        method_config(self.method, **self.method_options)  # a bad option fails here, before any data loads
        _pretrain_config(self)  # idem
        if self.train_subset is not None and (isinstance(self.train_subset, bool)
                                              or not isinstance(self.train_subset, int) or self.train_subset < 1):
            raise ValueError(f"RunSpec.train_subset must be a positive number of images or None (all), got "
                             f"{self.train_subset!r}")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"RunSpec.valid_fraction must lie in [0, 1), got {self.valid_fraction!r}")
        if self.fold is not None:
            fold = list(self.fold)
            if len(fold) != 2 or not all(isinstance(v, int) for v in fold) or not 0 <= fold[0] < fold[1] \
                    or fold[1] < 2:
                raise ValueError(f"RunSpec.fold must be [i, k] with k >= 2 and 0 <= i < k, got {self.fold!r}")
            self.fold = fold

    @classmethod
    def from_dict(cls, values: dict, **defaults) -> "RunSpec":
        """A RunSpec from ``dataclasses.asdict(spec)`` or any part of it (a notebook's ``spec`` parameter).

        Missing fields take ``defaults``, then RunSpec's own; nested ``backbone`` / ``train`` dicts may be
        partial. An unknown field raises naming it and the valid ones.
        """
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown RunSpec field(s) {unknown}; valid: {', '.join(valid)}")
        return cls(**{**defaults, **values})

    @classmethod
    def from_run(cls, run_dir, *, out=None) -> "RunSpec":
        """The RunSpec that reproduces the finished run in ``run_dir`` (from its ``config.json``); ``out``
        defaults to the run's parent folder."""
        run_dir = Path(run_dir)
        cfg = rundir.read_config(run_dir)
        missing = [k for k in ("train", "method", "data", "dataset", "noise", "backbone") if k not in cfg]
        if missing:
            raise ValueError(f"{run_dir}/config.json lacks {missing}; it was not written by ferlib.experiment.run")
        keys = ("data", "dataset", "dataset_options", "noise", "train_subset", "valid_fraction", "method",
                "method_options", "recipe", "backbone", "train", "fold", "variant", "pretrain")
        values = {k: cfg[k] for k in keys if cfg.get(k) is not None}
        if cfg.get("noise_seed") not in (None, cfg["train"].get("seed")):  # recorded resolved; None = train seed
            values["noise_seed"] = cfg["noise_seed"]
        return cls(**values, out=str(out if out is not None else run_dir.parent))


_NOT_IN_ID = {"out", "variant", "train.progress", "train.device", "train.eval_batch_size", "train.save_features",
              "train.keep_checkpoint", "train.compile"}


def run_id(spec: RunSpec) -> str:
    """``<method>-<noise>-s<seed>-<hash>``: readable, and unique for the fields that change results.

    The data enter as their :func:`ferlib.data.data_fingerprint` (file names and sizes under the root), so the
    same data named relatively or absolutely, or a checkout moved elsewhere, keep their run ids."""
    flat = {k: v for k, v in flatten(asdict(spec)).items() if not k.startswith("pretrain.")}
    if spec.backbone.weights == SSL:  # the pretraining decides the start: all its settings, defaults filled in
        flat.update(flatten({"pretrain": _pretrain_config(spec).key_fields()}))
    flat["data"] = data_fingerprint(spec.data)  # what the data holds, not where: a moved checkout keeps its ids
    key = json.dumps({k: v for k, v in sorted(flat.items()) if k not in _NOT_IN_ID}, sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    noise = spec.noise.replace(":", "").replace("+", "_")
    return f"{spec.method}-{noise}-s{spec.train.seed}-{digest}"


def stratified_subset(labels: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """Sorted indices of exactly ``min(n, len(labels))`` samples keeping each class's share (at least one per
    present class when ``n`` covers them), drawn with ``seed``; the class quotas are :func:`_quotas`."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    keep = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
            for c, q in zip(classes, _quotas(counts, n))]
    return np.sort(np.concatenate(keep))


def _quotas(counts: np.ndarray, n: int) -> np.ndarray:
    """Per-class sample counts summing to ``n`` (< ``counts.sum()``), each within [1, count] when ``n`` >= the
    number of classes: each class's share rounded, at least 1, then, where that sum misses ``n``, largest
    remainder: one more for the classes rounded furthest below their share, one less for those furthest above
    (ties to the lower class index). A rounding that already sums to ``n`` is kept as it is, so the subsets
    drawn before this correction (run ids do not record the faces) stay the same."""
    share = counts * n / counts.sum()
    low = 1 if n >= len(counts) else 0
    quota = np.minimum(np.maximum(low, np.round(share).astype(int)), counts)
    while quota.sum() != n:
        if quota.sum() < n:
            quota[np.argmax(np.where(quota < counts, share - quota, -np.inf))] += 1
        else:
            quota[np.argmax(np.where(quota > low, quota - share, -np.inf))] -= 1
    return quota


def carve_valid(data, fraction: float, *, seed: int = 0):
    """``data`` with a stratified ``fraction`` of its train split moved into the ``valid`` split (at least one
    face of every class)."""
    train = np.flatnonzero(data.split == "train")
    labels = data.labels[train]
    picked = train[stratified_subset(labels, max(round(fraction * len(train)), len(np.unique(labels))), seed=seed)]
    split = data.split.copy()
    split[picked] = "valid"
    return dataclasses.replace(data, split=split)


def prepare_data(spec: RunSpec):
    """Load the dataset, carve a validation split if it has none, cut the train subset, inject noise.
    Returns ``(data, noise_report)``."""
    from .data import load_dataset
    from .noise import apply_noise

    data = load_dataset(spec.dataset, spec.data, **spec.dataset_options)
    if spec.valid_fraction and not data.split_counts()["valid"]:
        data = carve_valid(data, spec.valid_fraction)
    if spec.train_subset is not None:
        is_train = data.split == "train"
        keep = np.ones(len(data), bool)
        keep[np.flatnonzero(is_train)] = False
        keep[np.flatnonzero(is_train)[stratified_subset(data.labels[is_train], spec.train_subset)]] = True
        data = data.select(keep)
    data, report = apply_noise(data, spec.noise, seed=spec.train.seed if spec.noise_seed is None else spec.noise_seed)
    return (data if spec.fold is None else hold_out_fold(data, *spec.fold, seed=spec.train.seed)), report


def hold_out_fold(data, i: int, k: int, *, seed: int):
    """``data`` with fold ``i`` of ``k`` of its train split (stratified by given label, shuffled with ``seed``)
    as the test split, and the dataset's own test split left out."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    data = data.select(data.split != "test")
    train = np.flatnonzero(data.split == "train")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(train, data.labels[train]))
    split = data.split.copy()
    split[train[folds[i][1]]] = "test"
    return dataclasses.replace(data, split=split)


def build(spec: RunSpec, data):
    """The run's model and method, their initial weights fixed by ``spec.train.seed``.

    data : the run's :class:`~ferlib.data.FERData` (its channels, classes and train size shape both).
    """
    from .methods import create_method

    seed_everything(spec.train.seed)
    model = create_model(_resolved_weights(spec, _backbone(spec, data)), data.num_classes)
    method = create_method(spec.method, num_classes=data.num_classes, num_train=data.split_counts()["train"],
                           feature_dim=model.feature_dim, **spec.method_options)
    return model, method


def _backbone(spec: RunSpec, data) -> BackboneConfig:
    return dataclasses.replace(spec.backbone, in_chans=data.image_shape[2])


def _pretrain_config(spec: RunSpec):
    from .pretrain import PretrainConfig

    return PretrainConfig(**spec.pretrain)


def _resolved_weights(spec: RunSpec, backbone: BackboneConfig) -> BackboneConfig:
    """``backbone`` with ``weights: ssl`` replaced by the path of its cached self-supervised checkpoint."""
    if backbone.weights != SSL:
        return backbone
    from .pretrain import ssl_weights

    return dataclasses.replace(backbone, weights=ssl_weights(
        spec.data, dataset=spec.dataset, dataset_options=spec.dataset_options, backbone=backbone,
        config=_pretrain_config(spec)))


def run(spec: RunSpec, *, resume: bool = True) -> dict:
    """Run (or resume) one experiment in ``<spec.out>/<run_id>``; returns its ``result.json`` summary.

    This call owns the run folder (:class:`ferlib.rundir.RunDir`): it holds the folder's lock for the whole
    call, so a second process running the same spec gets :class:`ferlib.rundir.RunLockedError` naming the
    holder before any data loads; it decides whether the folder is finished, resumed or started afresh; and
    :func:`ferlib.engine.fit` writes the run's files through it.

    resume : True (default): a finished, intact run is returned as it is, without loading data or training; an
        unfinished one continues from its checkpoint; a corrupted one (:func:`ferlib.rundir.find_problem`) is
        trained again with a warning. False (CLI ``--no-resume``): the folder's old generation is removed first
        (:meth:`ferlib.rundir.RunDir.retire`, ``result.json`` first), so an interrupted fresh run is never taken
        for a finished one and never mixes old and new files.

    The runs folder's ``results.csv`` is not touched: the command or study that runs the experiments rebuilds
    it once (:func:`ferlib.rundir.write_results`).

    Under ``torchrun`` every process calls ``run`` with the same spec and trains its shard; rank 0 holds the
    lock and writes every file; each process returns the summary.
    """
    resolve_device(spec.train.device)  # an unavailable device fails here, before any data loads
    rid = run_id(spec)
    folder = RunDir(Path(spec.out) / rid)
    with distributed.main_only(folder.lock()):  # rank 0 writes the folder (fit: the others train too)
        result = distributed.on_main(folder.finished, keep_checkpoint=spec.train.keep_checkpoint) if resume else None
        return result if result is not None else _train(spec, rid, folder, resume=resume)


def _train(spec: RunSpec, rid: str, folder: RunDir, *, resume: bool) -> dict:
    data, noise_report = prepare_data(spec)
    model, method = build(spec, data)
    distributed.on_main(folder.begin, resume=resume)  # after the data loaded: a data error leaves the folder as it was
    distributed.on_main(folder.write_noise, noise_report)
    meta = {
        "run_id": rid, "dataset": spec.dataset, "data": portable_path(spec.data),
        "dataset_options": spec.dataset_options, "classes": data.num_classes, "split_counts": data.split_counts(), "noise": spec.noise,
        "noise_rate": noise_report["train"]["overall_rate"], "train_subset": spec.train_subset,
        "noise_seed": spec.train.seed if spec.noise_seed is None else spec.noise_seed,
        "recipe": spec.recipe, "recipe_source": recipe_source(spec.method, spec.recipe),
        "method_options": spec.method_options, "backbone": asdict(_backbone(spec, data)),
        "optimizer": spec.train.optimizer, "lr": spec.train.lr, "batch_size": spec.train.batch_size,
        "image_size": spec.train.image_size, "valid_fraction": spec.valid_fraction, "fold": spec.fold,
        "variant": spec.variant, "pretrain": spec.pretrain,
    }
    return fit(model, method, data, spec.train, folder, meta=meta)
