"""What a study is: a dataset, a grid of runs (methods x noise x seeds), shared train settings, the notebooks.

A :class:`StudySpec` is plain data; it is usually read from a YAML profile shipped in
``ferlib/study/profiles/`` (``smoke``, ``cpu``, ``full``) by :func:`load_profile`, with keyword overrides::

    spec = load_profile("smoke")                                   # the shipped sample (its time: README)
    spec = load_profile("cpu", data="../shared/data/ferplus", seeds=[0, 1, 2], train={"epochs": 20})
    spec.run_specs("runs/cpu")                                     # the grid as ferlib.experiment.RunSpec

The YAML keys are the fields of :class:`StudySpec`, with the grid nested under ``grid:``; an unknown key
raises naming it and listing the valid ones. ``grid.methods: all`` means every registered method at the time
the grid is expanded (:func:`ferlib.methods.list_methods`), so a newly registered method joins every study
without an edit here; oracle methods (``method_class(name).oracle``) are included and marked as such.
The optional ``slurm:`` mapping sets each cell's job resources under ``--launcher slurm`` (keys and defaults:
:class:`ferlib.study.launch.SlurmOptions`, listed at :class:`StudySpec`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

__all__ = ["StudySpec", "Grid", "NOTEBOOKS", "ROLES", "COMMON", "STUDY_PARAMETERS", "CELL_FOLDERS", "cell_dir",
           "find_cell", "load_profile", "list_profiles", "profile_path"]

#: The study's notebooks, in the order the runner executes them (see :func:`ferlib.study.run_study`).
NOTEBOOKS: tuple[str, ...] = ("00_prepare_data", "01_inject_noise", "02_train", "03_ablations",
                              "04_label_distributions", "05_uncertainty", "06_embeddings", "07_review_labels",
                              "99_summary")
#: What a notebook declares in its metadata (``"ferlib": {"role": ...}``); the runner acts on the role, never
#: on the notebook's name. A notebook without the key is a ``view``.
ROLES: dict[str, str] = {
    "cell": "executed once per training cell (grid, ablation, fold, init) with the cell's ``spec``",
    "view": "executed once, in the order of ``notebooks``, over the runs folder; ``needs: <kind>`` skips it "
            "when the study has no cell of that kind (``ablation``, ``fold``)",
}
#: Parameters every study notebook receives from the runner.
COMMON: tuple[str, ...] = ("data", "dataset", "dataset_options", "runs_dir", "study_dir")
#: Study-derived parameters given to any notebook whose ``parameters`` cell declares them (the main noise,
#: the first seed, the train subset), and ``spec``, which the runner gives a ``cell`` notebook.
STUDY_PARAMETERS: tuple[str, ...] = ("noise", "seed", "train_subset", "spec")
#: Where each kind of cell (:meth:`StudySpec.cells`) keeps its run folders under a study's runs folder.
CELL_FOLDERS: dict[str, str] = {"grid": "", "control": "", "ablation": "ablations", "fold": "cleanlab",
                                "init": "init"}


def cell_dir(runs_dir: str | os.PathLike, kind: str) -> Path:
    """The folder holding the run folders of the cells of ``kind`` (a key of :data:`CELL_FOLDERS`)."""
    return Path(runs_dir) / CELL_FOLDERS[kind]


def find_cell(runs_dir: str | os.PathLike, run_id: str) -> Path | None:
    """The run folder of the cell ``run_id`` under a study's ``runs_dir``, whatever its kind (the first kind of
    :data:`CELL_FOLDERS` whose folder holds it); None when none does."""
    return next((folder for kind in CELL_FOLDERS if (folder := cell_dir(runs_dir, kind) / run_id).is_dir()), None)


@dataclass
class Grid:
    """The cells of a study: every combination of ``methods`` x ``noise`` x ``seeds``.

    methods : ``"all"`` (every registered method, oracles included) or a list of registry names.
    noise : noise specs (:class:`ferlib.noise.NoiseSpec` strings such as ``"symmetric:0.3"``), stored in
        canonical form so that ``symmetric:0.30`` and ``symmetric:0.3`` are the same cell.
    seeds : training seeds; seed ``s`` also seeds the noise, so every method sees the same flipped labels.
    """

    methods: list[str] | str = "all"
    noise: list[str] = field(default_factory=lambda: ["symmetric:0.3"])
    seeds: list[int] = field(default_factory=lambda: [0])

    def __post_init__(self) -> None:
        from ferlib.methods import list_methods, method_class
        from ferlib.noise import NoiseSpec

        if self.methods != "all":
            self.methods = _str_list(self.methods, "grid.methods")
            for name in self.methods:
                method_class(name)  # raises listing the valid names
            _no_duplicates(self.methods, "grid.methods")
        elif not list_methods():
            raise ValueError("grid.methods is 'all' but no method is registered")
        noise = _str_list(self.noise, "grid.noise")
        self.noise = [str(NoiseSpec.parse(n)) for n in noise]
        _no_duplicates(self.noise, "grid.noise")
        self.seeds = _seed_list(self.seeds, "grid.seeds")

    def resolved_methods(self) -> list[str]:
        """The method names this grid runs (``"all"`` resolved against the registry now)."""
        from ferlib.methods import list_methods

        return list_methods() if self.methods == "all" else list(self.methods)


def _triples(grid: Grid) -> list[tuple[str, str, int]]:
    """``(method, noise, seed)`` of every cell of ``grid``, seed-major."""
    return [(m, n, s) for s in grid.seeds for n in grid.noise for m in grid.resolved_methods()]


@dataclass
class StudySpec:
    """Everything that defines a study.

    name, description : the profile's name and a line saying what it is for (shown in the report).
    dataset, data, dataset_options : reader name, dataset root and reader options
        (:func:`ferlib.data.load_dataset`); a relative ``data`` is taken from the current directory.
    grid : :class:`Grid` (methods x noise x seeds); a dict is converted.
    extra_grids : further :class:`Grid` s of cells with the same settings, in the grid's folder: more seeds where
        the claims are close, without crossing every method, noise and seed (e.g. ``[{methods: [ce, nla], noise:
        [annotator], seeds: [3, 4]}]``). They are grid cells (the views read them as any other); the cleanlab
        folds, init contrast and clean control stay at ``grid.seeds``. A cell of the grid or the clean control
        listed again is refused.
    method_options : ``{method: {option: value}}`` config overrides for single methods.
    recipe : ``shared`` (default: every cell trains with ``train``, one budget for all methods) or ``paper``
        (each method with its official recipe, :mod:`ferlib.recipes`; ``train`` then sets only what the recipe
        does not, e.g. the input size).
    train : :class:`ferlib.engine.TrainConfig` fields shared by every cell (not ``seed``: that is
        ``grid.seeds``). ``progress`` defaults to False in a study (no progress bars inside notebooks).
    backbone : :class:`ferlib.backbones.BackboneConfig` fields. ``weights: ssl`` starts every cell from the
        self-supervised checkpoint of the train images (:mod:`ferlib.pretrain`), which the runner pretrains once
        before the cells.
    pretrain : :class:`ferlib.pretrain.PretrainConfig` overrides of that checkpoint ({} = the defaults); used
        only with ``backbone: {weights: ssl}``.
    train_subset : stratified number of train images kept before noise (None: all); at least every cell's
        batch size (the cleanlab folds': of the (K - 1) / K they train on), checked here.
    notebooks : names (without ``.ipynb``) of the notebooks to execute, in order; see :data:`NOTEBOOKS` and
        :data:`ROLES`.
    ablations : train each grid method's ``ablations`` variants as cells (:meth:`ablation_specs`), which
        ``03_ablations`` shows.
    ablation_noise : the noise setting(s) of the ablation runs, one spec or a list (default: the grid's first
        noise other than ``none``).
    ablation_seeds : the seeds of the ablation runs (default: the grid's first seed).
    ablation_methods : the grid methods whose variants are trained (default: every grid method that declares
        variants).
    ablation_train : TrainConfig overrides for the ablation runs only (e.g. fewer epochs). Without them, the
        full method at a grid noise and seed is the grid's own cell (:meth:`ablation_specs`).
    cleanlab_folds : K of the cross-fitted CE runs behind cleanlab (>= 2; 0 = none): for every noise setting
        of the grid that flips labels and every seed, K ``ce`` cells each hold one fold of the train split out
        (RunSpec ``fold``) under ``<runs_dir>/cleanlab``; ``05_uncertainty`` reads them.
    cleanlab_train : TrainConfig overrides for those fold runs only (e.g. fewer epochs).
    init_contrast : the grid's other start for some methods, ``{weights: W, methods: [...], noise: [...]}``
        ({} = none): every listed method, at every listed noise (default: all the grid's; each must be one of
        them) and every seed, also starts from ``W`` (``null``: random init, ``ssl``, or a weights file) in place
        of ``backbone.weights``, under ``<runs_dir>/init`` (cell kind ``init``), so the summary shows what the
        start changes (:meth:`init_specs`).
    clean_control : methods also trained on the clean labels (noise ``none``) at every seed, otherwise as their
        grid cells, in the grid's folder (cell kind ``control``, :meth:`control_specs`), so the report tells the
        drop that noise causes from a method's own drop on clean labels without crossing every method with
        ``none``. [] = none.
    eval_data : datasets every finished grid run is scored on after training, without training
        (:mod:`ferlib.cross_eval`, ``READER:PATH[:KEY=VALUE,...]``, e.g. ``ferplus:data/ferplus_sample:mode=majority``
        or ``folder:exports/no_neutral``), its predictions restricted to the classes both share; written to each
        run's ``cross_eval.json``, shown by ``99_summary`` and the report. [] = none.
    cell_time_limit, view_time_limit : seconds a training cell's notebook (``cell`` role), or any code cell of a
        ``view`` notebook, may run before it is stopped and recorded as failed, so a hung cell never stalls the
        study (None: no limit). Set from the profile's measured times with a wide margin.
    notebook_parameters : ``{notebook: {parameter: value}}``, profile-specific papermill parameters
        (e.g. ``05_uncertainty: {cleanlab_folds: 5}``). Notebook names must be among :data:`NOTEBOOKS`;
        parameters the runner sets itself (:data:`COMMON`, :data:`STUDY_PARAMETERS`) are refused.
        A parameter the notebook's ``parameters`` cell does not declare is not passed (the runner warns).
    slurm : resources of each cell's job under ``--launcher slurm`` (:class:`ferlib.study.launch.SlurmOptions`),
        every key optional: ``partition`` (default: the cluster's), ``timeout_min`` (240), ``cpus_per_task`` (4,
        also the cell's ``OMP_NUM_THREADS``), ``gpus_per_node`` (0), ``mem_gb`` (16), ``array_parallelism``
        (32: the most cells running at once). Ignored by the local launcher.
    """

    name: str = "custom"
    description: str = ""
    dataset: str = "ferplus"
    data: str | None = None
    dataset_options: dict = field(default_factory=dict)
    grid: Grid = field(default_factory=Grid)
    extra_grids: list[Grid] = field(default_factory=list)
    method_options: dict = field(default_factory=dict)
    recipe: str = "shared"
    train: dict = field(default_factory=dict)
    backbone: dict = field(default_factory=dict)
    train_subset: int | None = None
    notebooks: list[str] = field(default_factory=lambda: list(NOTEBOOKS))
    ablations: bool = False
    ablation_noise: str | list[str] | None = None
    ablation_seeds: list[int] | None = None
    ablation_methods: list[str] | None = None
    ablation_train: dict = field(default_factory=dict)
    cleanlab_folds: int = 0
    cleanlab_train: dict = field(default_factory=dict)
    init_contrast: dict = field(default_factory=dict)
    clean_control: list[str] = field(default_factory=list)
    eval_data: list[str] = field(default_factory=list)
    cell_time_limit: int | None = None
    view_time_limit: int | None = None
    notebook_parameters: dict = field(default_factory=dict)
    slurm: dict = field(default_factory=dict)
    pretrain: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ferlib.backbones import BackboneConfig
        from ferlib.data import list_datasets
        from ferlib.engine import TrainConfig
        from ferlib.methods import method_class, method_config
        from ferlib.noise import NoiseSpec
        from ferlib.pretrain import PretrainConfig
        from ferlib.recipes import RECIPES

        from .launch import SlurmOptions

        if self.dataset not in list_datasets():
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {', '.join(list_datasets())}")
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; valid: {', '.join(RECIPES)}")
        if isinstance(self.grid, dict):
            self.grid = Grid(**_checked_keys(self.grid, _field_names(Grid), "grid"))
        elif not isinstance(self.grid, Grid):
            raise ValueError(f"grid must be a mapping with keys {_field_names(Grid)}, got {self.grid!r}")
        if not isinstance(self.extra_grids, list):
            raise ValueError(f"extra_grids must be a list of grids, got {self.extra_grids!r}")
        self.extra_grids = [g if isinstance(g, Grid) else Grid(**_checked_keys(g, _field_names(Grid),
                                                                                f"extra_grids[{i}]"))
                            for i, g in enumerate(self.extra_grids)]
        for key in ("dataset_options", "method_options", "train", "backbone", "ablation_train", "cleanlab_train",
                    "notebook_parameters", "slurm", "pretrain", "init_contrast"):
            if not isinstance(getattr(self, key), dict):
                raise ValueError(f"{key} must be a mapping, got {getattr(self, key)!r}")
        for key in ("train", "ablation_train", "cleanlab_train"):
            options = getattr(self, key)
            _checked_keys(options, _field_names(TrainConfig), key)
            if "seed" in options:
                raise ValueError(f"{key}.seed is not a study setting: list the seeds in grid.seeds")
            TrainConfig(**{**self.train, **options})  # validates values (optimizer, scheduler ...)
        BackboneConfig(**_checked_keys(self.backbone, _field_names(BackboneConfig), "backbone"))
        self._check_init_contrast()
        self._check_clean_control()
        self._check_extra_grids()
        SlurmOptions(**_checked_keys(self.slurm, _field_names(SlurmOptions), "slurm"))
        PretrainConfig(**_checked_keys(self.pretrain, _field_names(PretrainConfig), "pretrain"))
        for method, options in self.method_options.items():
            valid = [f.name for f in dataclasses.fields(method_class(method).Config)]
            _checked_keys(options or {}, valid, f"method_options.{method}")
            try:
                method_config(method, **(options or {}))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"method_options.{method}: {exc}") from None
        self.notebook_parameters = _checked_notebook_parameters(self.notebook_parameters)
        self.notebooks = _str_list(self.notebooks, "notebooks")
        _no_duplicates(self.notebooks, "notebooks")
        if self.train_subset is not None and (not isinstance(self.train_subset, int) or self.train_subset < 1):
            raise ValueError(f"train_subset must be a positive integer or null, got {self.train_subset!r}")
        if isinstance(self.cleanlab_folds, bool) or not isinstance(self.cleanlab_folds, int) or \
                self.cleanlab_folds == 1 or self.cleanlab_folds < 0:
            raise ValueError(f"cleanlab_folds must be 0 (none) or an integer >= 2, got {self.cleanlab_folds!r}")
        self._check_train_subset()
        for key in ("cell_time_limit", "view_time_limit"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be a positive number of seconds or null, got {value!r}")
        if not isinstance(self.ablations, bool):
            raise ValueError(f"ablations must be true or false, got {self.ablations!r}")
        self._check_ablation_cells()
        if self.eval_data:
            from ferlib.cross_eval import EvalTarget

            self.eval_data = _str_list(self.eval_data, "eval_data")
            for target in self.eval_data:
                EvalTarget.parse(target)  # syntax, reader and options; the roots are checked when the study runs
        if self.data is not None:
            self.data = os.fspath(self.data)

    def _check_ablation_cells(self) -> None:
        """``ablation_noise`` in canonical form (a single spec stays a string) and ``ablation_seeds``, checked."""
        from ferlib.noise import NoiseSpec

        if self.ablation_noise is not None:
            noise = [str(NoiseSpec.parse(n)) for n in _str_list(self.ablation_noise, "ablation_noise")]
            _no_duplicates(noise, "ablation_noise")
            self.ablation_noise = noise[0] if isinstance(self.ablation_noise, str) else noise
        if self.ablation_seeds is not None:
            self.ablation_seeds = _seed_list(self.ablation_seeds, "ablation_seeds")
        if self.ablation_methods is not None:
            self.ablation_methods = _str_list(self.ablation_methods, "ablation_methods")
            offered = self._ablatable()
            for method in self.ablation_methods:
                if method not in offered:
                    raise ValueError(f"ablation_methods lists {method!r}, not a grid method with ablation variants; "
                                     f"valid: {', '.join(offered) or 'none'}")

    def ablation_method_names(self) -> list[str]:
        """The methods whose variants are ablation cells: ``ablation_methods``, else every grid method that
        declares variants."""
        return self.ablation_methods if self.ablation_methods is not None else self._ablatable()

    def _ablatable(self) -> list[str]:
        """The grid methods that declare ablation variants."""
        from ferlib.methods import method_class

        return [m for m in self.grid.resolved_methods() if method_class(m).ablations]

    def _check_init_contrast(self) -> None:
        from ferlib.methods import method_class

        if not self.init_contrast:
            return
        from ferlib.noise import NoiseSpec

        _checked_keys(self.init_contrast, ["weights", "methods", "noise"], "init_contrast")
        if "weights" not in self.init_contrast or "methods" not in self.init_contrast:
            raise ValueError("init_contrast needs both 'weights' (null: random init, ssl, or a file) and 'methods'")
        methods = _str_list(self.init_contrast["methods"], "init_contrast.methods")
        for name in methods:
            method_class(name)  # raises listing the valid names
        _no_duplicates(methods, "init_contrast.methods")
        noise = [str(NoiseSpec.parse(n)) for n in _str_list(self.init_contrast.get("noise", self.grid.noise),
                                                            "init_contrast.noise")]
        _no_duplicates(noise, "init_contrast.noise")
        outside = [n for n in noise if n not in self.grid.noise]
        if outside:
            raise ValueError(f"init_contrast.noise {outside} is not in grid.noise {self.grid.noise}: the contrast "
                             "pairs each cell with the grid's")
        if self.init_contrast["weights"] == self.backbone.get("weights"):
            raise ValueError(f"init_contrast.weights is the grid's own backbone.weights "
                             f"({self.init_contrast['weights']!r}): the contrast needs the other start")
        self.init_contrast = {"weights": self.init_contrast["weights"], "methods": methods, "noise": noise}

    def _check_clean_control(self) -> None:
        from ferlib.methods import method_class

        if not self.clean_control:
            self.clean_control = []
            return
        self.clean_control = _str_list(self.clean_control, "clean_control")
        for name in self.clean_control:
            method_class(name)  # raises listing the valid names
        _no_duplicates(self.clean_control, "clean_control")
        grid = self.grid.resolved_methods() if "none" in self.grid.noise else []
        twice = [m for m in self.clean_control if m in grid]
        if twice:
            raise ValueError(f"clean_control {twice}: the grid already trains them at noise 'none' (grid.noise)")

    def _check_extra_grids(self) -> None:
        seen = {(m, n, s) for m, n, s in _triples(self.grid)}
        seen |= {(m, "none", s) for s in self.grid.seeds for m in self.clean_control}
        for i, grid in enumerate(self.extra_grids):
            twice = [t for t in _triples(grid) if t in seen]
            if twice:
                m, n, s = twice[0]
                raise ValueError(f"extra_grids[{i}] lists {m} at noise {n}, seed {s} again (and {len(twice) - 1} "
                                 "more): the grid, the clean control or an earlier extra grid trains it")
            seen |= set(_triples(grid))

    def _check_train_subset(self) -> None:
        """Refuse a train subset smaller than a cell's batch size: the engine trains on full batches, so every
        such cell would fail once its data loaded. The cleanlab fold cells train on (K - 1) / K of the subset."""
        from ferlib.recipes import resolve_recipe

        if self.train_subset is None:
            return
        n, k = self.train_subset, self.cleanlab_folds
        methods = list(dict.fromkeys([*self.grid.resolved_methods(), *self.clean_control,
                                      *(m for g in self.extra_grids for m in g.resolved_methods())]))
        cells = [(f"{m} cells", m, {}, n) for m in methods]
        cells += [(f"{m} ablation cells", m, self.ablation_train, n) for m in methods if self.ablations]
        cells += [(f"cleanlab fold cells ({k} folds)", "ce", self.cleanlab_train, n * (k - 1) // k)] if k else []
        for what, method, extra, faces in cells:
            batch = resolve_recipe(method, self.recipe, self.train_config(0, extra)).batch_size
            if faces < batch:
                raise ValueError(f"train_subset (--train-subset) {n} gives the {what} {faces} train faces, fewer "
                                 f"than their batch size {batch}: they would fail once the data loaded; pass a "
                                 "larger --train-subset or a smaller batch size")

    # ------------------------------------------------------------------------------- the grid
    def train_config(self, seed: int, extra: dict | None = None):
        """The :class:`~ferlib.engine.TrainConfig` of one cell (``progress`` off unless set)."""
        from ferlib.engine import TrainConfig

        return TrainConfig(**{"progress": False, **self.train, **(extra or {}), "seed": seed})

    def run_spec(self, method: str, noise: str, seed: int, runs_dir: str | os.PathLike, *,
                 train_extra: dict | None = None, **fields):
        """The :class:`~ferlib.experiment.RunSpec` of one cell; ``data`` made absolute (it enters the run id).
        ``fields`` are further RunSpec fields (``method_options`` replaces the profile's, ``fold``, ...);
        ``backbone`` is merged into the profile's."""
        from ferlib.backbones import BackboneConfig
        from ferlib.experiment import RunSpec

        fields.setdefault("method_options", dict(self.method_options.get(method) or {}))
        backbone = BackboneConfig(**{**self.backbone, **fields.pop("backbone", {})})
        return RunSpec(data=str(self.data_path()), dataset=self.dataset, dataset_options=dict(self.dataset_options),
                       noise=noise, train_subset=self.train_subset, method=method, recipe=self.recipe,
                       backbone=backbone, train=self.train_config(seed, train_extra),
                       pretrain=dict(self.pretrain),
                       out=str(Path(runs_dir).absolute()), **fields)

    def run_specs(self, runs_dir: str | os.PathLike) -> list:
        """Every cell of the grid, then of each extra grid, as a RunSpec, seed-major (all methods and noises of
        seed 0 first, so a partly finished study already compares every method)."""
        return [self.run_spec(m, n, s, cell_dir(runs_dir, "grid"))
                for grid in (self.grid, *self.extra_grids) for m, n, s in _triples(grid)]

    def control_specs(self, runs_dir: str | os.PathLike) -> list:
        """The clean-control cells (none unless ``clean_control`` is set): each of its methods at noise ``none``
        and every seed, with the grid's settings otherwise, in the grid's folder, seed-major like the grid."""
        return [self.run_spec(m, "none", s, cell_dir(runs_dir, "control"))
                for s in self.grid.seeds for m in self.clean_control]

    def main_noise(self) -> str:
        """The grid's first noise other than ``none`` (the one the noise and ablation notebooks show)."""
        return next((n for n in self.grid.noise if n != "none"), self.grid.noise[0])

    def ablation_noises(self) -> list[str]:
        """The noise settings of the ablation cells: ``ablation_noise`` as a list, else the main noise."""
        noise = self.ablation_noise or self.main_noise()
        return [noise] if isinstance(noise, str) else list(noise)

    def ablation_specs(self, runs_dir: str | os.PathLike) -> list:
        """The ablation cells (none unless ``ablations`` is on), under ``<runs_dir>/ablations``.

        For every method of :meth:`ablation_method_names` (``method_class(name).ablations``), at every noise of
        :meth:`ablation_noises` and every seed of ``ablation_seeds`` (default: the grid's first), seed-major: its
        full configuration (``variant="full"``: the profile's ``method_options`` of that method) and each variant
        (the same options with the variant's overrides merged in), with the train settings and ``ablation_train``.
        A variant whose resolved config equals the full one (the profile's options already give it) is left out,
        and so is the full configuration where it is a grid cell (the same RunSpec but for ``out`` and
        ``variant``: no ``ablation_train``, a grid noise and seed): ``03_ablations`` reads that one from the grid.
        """
        if not self.ablations:
            return []
        methods = self.ablation_method_names()
        cells = [self.run_spec(m, noise, seed, cell_dir(runs_dir, "ablation"), train_extra=self.ablation_train,
                               method_options=options, variant=variant)
                 for seed in self.ablation_seeds or self.grid.seeds[:1] for noise in self.ablation_noises()
                 for m in methods for variant, options in self._ablation_variants(m)]
        grid = [_what_trains(s) for s in self.run_specs(runs_dir)]
        return [c for c in cells if c.variant != "full" or _what_trains(c) not in grid]

    def _ablation_variants(self, method: str) -> list[tuple[str, dict]]:
        """``(variant, method options)`` of a method's ablation cells: ``full`` (the profile's options of the
        method) and each variant of ``method_class(method).ablations`` whose resolved config differs from it."""
        from ferlib.methods import method_class, method_config

        base = dict(self.method_options.get(method) or {})
        variants = [(name, {**base, **overrides}) for name, overrides in method_class(method).ablations.items()]
        return [("full", base), *((name, options) for name, options in variants
                                  if method_config(method, **options) != method_config(method, **base))]

    def fold_specs(self, runs_dir: str | os.PathLike) -> list:
        """The cross-fitted CE cells behind cleanlab, under ``<runs_dir>/cleanlab``: ``cleanlab_folds`` runs
        (``fold = [i, K]``) for every grid noise that flips labels and every seed, with ``cleanlab_train``."""
        from ferlib.noise import NoiseSpec

        k = self.cleanlab_folds
        return [self.run_spec("ce", n, s, cell_dir(runs_dir, "fold"), train_extra=self.cleanlab_train,
                              method_options={}, fold=[i, k])
                for s in self.grid.seeds for n in self.grid.noise if k and NoiseSpec.parse(n).relabels
                for i in range(k)]

    def init_specs(self, runs_dir: str | os.PathLike) -> list:
        """The init-contrast cells (none unless ``init_contrast`` is set), under ``<runs_dir>/init``: each of its
        methods at each of its noises and every seed from ``init_contrast.weights``, seed-major like the grid."""
        if not self.init_contrast:
            return []
        weights, methods, noise = (self.init_contrast[k] for k in ("weights", "methods", "noise"))
        return [self.run_spec(m, n, s, cell_dir(runs_dir, "init"), backbone={"weights": weights})
                for s in self.grid.seeds for n in noise for m in methods]

    def cells(self, runs_dir: str | os.PathLike) -> list[tuple[str, object]]:
        """Everything the study trains, in order: ``(kind, RunSpec)`` with kind ``grid`` (:meth:`run_specs`),
        ``control`` (:meth:`control_specs`), ``ablation`` (:meth:`ablation_specs`), ``fold`` (:meth:`fold_specs`)
        or ``init`` (:meth:`init_specs`)."""
        return [*(("grid", s) for s in self.run_specs(runs_dir)),
                *(("control", s) for s in self.control_specs(runs_dir)),
                *(("ablation", s) for s in self.ablation_specs(runs_dir)),
                *(("fold", s) for s in self.fold_specs(runs_dir)),
                *(("init", s) for s in self.init_specs(runs_dir))]

    def data_path(self) -> Path:
        if self.data is None:
            raise ValueError(f"study {self.name!r} has no data path: pass data=PATH (command line: --data PATH)")
        return Path(self.data).expanduser().resolve()

    # ------------------------------------------------------------------------------- description
    def describe(self) -> str:
        """A few lines for logs and the report: dataset, grid (oracles marked), settings."""
        from ferlib.methods import method_class

        methods = [f"{m} [oracle]" if method_class(m).oracle else m for m in self.grid.resolved_methods()]
        cells = len(methods) * len(self.grid.noise) * len(self.grid.seeds)
        return "\n".join([
            f"study {self.name}: {self.description}".rstrip(": "),
            f"data: {self.dataset} at {self.data} {self.dataset_options or ''}".rstrip()
            + (f", train subset {self.train_subset}" if self.train_subset else ""),
            f"grid: {cells} cells = {len(methods)} methods x {len(self.grid.noise)} noise x "
            f"{len(self.grid.seeds)} seeds",
            f"  methods: {', '.join(methods)}",
            f"  noise: {', '.join(self.grid.noise)}; seeds: {', '.join(map(str, self.grid.seeds))}",
            *(f"extra grid: {', '.join(g.resolved_methods())} at {', '.join(g.noise)}, seeds "
              f"{', '.join(map(str, g.seeds))}" for g in self.extra_grids),
            f"recipe: {self.recipe}; train: {self.train or 'defaults'}; backbone: {self.backbone or 'defaults'}",
            f"ablations: {self._describe_ablations()}; cleanlab folds: {self.cleanlab_folds or 'none'}; "
            f"notebooks: {', '.join(self.notebooks)}",
            *([f"init contrast: {', '.join(self.init_contrast['methods'])} also from weights "
               f"{self.init_contrast['weights'] or 'none (random init)'} at "
               f"{', '.join(self.init_contrast['noise'])}"] if self.init_contrast else []),
            *([f"clean control: {', '.join(self.clean_control)} also at noise none, every seed"]
              if self.clean_control else []),
            *([f"eval data (scored after training): {', '.join(self.eval_data)}"] if self.eval_data else []),
            *(f"  {name}: {params}" for name, params in self.notebook_parameters.items()),
        ])

    def _describe_ablations(self) -> str:
        if not self.ablations:
            return "off"
        seeds = self.ablation_seeds or self.grid.seeds[:1]
        return (f"{', '.join(self.ablation_method_names())} at {', '.join(self.ablation_noises())}, seeds "
                f"{', '.join(map(str, seeds))}"
                + (f", train {self.ablation_train}" if self.ablation_train else ""))

    def to_dict(self) -> dict:
        """JSON/YAML-able form (``grid.methods`` resolved in ``resolved_methods``; each extra grid's methods
        resolved in place)."""
        out = asdict(self)
        out["resolved_methods"] = self.grid.resolved_methods()
        out["extra_grids"] = [{**g, "methods": grid.resolved_methods()}
                              for g, grid in zip(out["extra_grids"], self.extra_grids)]
        return out

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "study spec") -> "StudySpec":
        """Build from a mapping (a parsed YAML profile); unknown keys raise listing the valid ones."""
        if not isinstance(values, dict):
            raise ValueError(f"{source} must be a mapping of keys {_field_names(cls)}, got {type(values).__name__}")
        return cls(**_checked_keys(values, _field_names(cls), source))


# ----------------------------------------------------------------------------------- profiles
def _profiles_dir():
    return resources.files("ferlib.study") / "profiles"


def list_profiles() -> list[str]:
    """Names of the shipped profiles (``ferlib/study/profiles/*.yaml``)."""
    return sorted(p.name[:-5] for p in _profiles_dir().iterdir() if p.name.endswith(".yaml"))


def profile_path(name: str | os.PathLike):
    """The YAML file of a profile name, or ``name`` itself when it is a path to a ``.yaml`` file."""
    if str(name).endswith((".yaml", ".yml")) and Path(name).is_file():
        return Path(name)
    path = _profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown study profile {str(name)!r}; valid: {', '.join(list_profiles())} "
                         "(or the path of a .yaml file)")
    return path


def load_profile(name: str | os.PathLike, *, data: str | os.PathLike | None = None, **overrides) -> StudySpec:
    """Read a profile and apply overrides.

    Parameters
    ----------
    name : a shipped profile (:func:`list_profiles`: ``smoke``, ``cpu``, ``full``) or a ``.yaml`` path.
    data : dataset root replacing the profile's ``data``.
    **overrides : :class:`StudySpec` fields, or the grid's ``methods``, ``noise``, ``seeds`` directly.
        ``train``, ``backbone``, ``ablation_train``, ``cleanlab_train``, ``slurm`` and ``grid`` are merged into
        the profile's mapping (``train={"epochs": 3}`` keeps the profile's other train settings),
        ``notebook_parameters`` per notebook (``{"05_uncertainty": {"n_faces": 4}}`` keeps the profile's other
        05 parameters); other fields are replaced. An override of the grid (``methods``, ``noise``, ``seeds``,
        ``grid``) names the cells to train: the profile's ``extra_grids`` are dropped unless given too.

    Raises
    ------
    ValueError naming an unknown profile or key and listing the valid ones.
    """
    import yaml

    path = profile_path(name)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ValueError(f"profile {path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    source = f"profile {str(name)!r} ({path})"
    if not isinstance(values, dict):
        raise ValueError(f"{source} must be a mapping, got {type(values).__name__}")
    values = dict(values)
    values.setdefault("name", Path(str(name)).stem if str(name).endswith((".yaml", ".yml")) else str(name))
    grid_keys = _field_names(Grid)
    _checked_keys(overrides, _field_names(StudySpec) + grid_keys, "override")
    _checked_keys(values, _field_names(StudySpec), source)
    grid = dict(values.get("grid") or {})
    for key, value in overrides.items():
        if key in grid_keys:
            grid[key] = value
        elif key == "grid":
            grid.update(asdict(value) if isinstance(value, Grid) else value)
        elif key in ("train", "backbone", "ablation_train", "cleanlab_train", "slurm") and isinstance(value, dict):
            values[key] = {**(values.get(key) or {}), **value}
        elif key == "notebook_parameters" and isinstance(value, dict) and isinstance(values.get(key), dict):
            merged = dict(values[key])
            for name, params in value.items():
                both = isinstance(params, dict) and isinstance(merged.get(name), dict)
                merged[name] = {**merged[name], **params} if both else params
            values[key] = merged
        else:
            values[key] = value
    values["grid"] = grid
    if {"grid", *grid_keys} & set(overrides) and "extra_grids" not in overrides:
        values["extra_grids"] = []  # the override names the cells to train: the profile's extra ones are not
    if overrides and "description" not in overrides:  # the profile's line no longer describes the study alone
        changed = ", ".join(f"{k}={v}" for k, v in overrides.items())
        values["description"] = f"{values.get('description', '')} [overridden: {changed}]".strip()
    if data is not None:
        values["data"] = os.fspath(data)
    return StudySpec.from_dict(values, source=source)


# ----------------------------------------------------------------------------------- helpers
def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _checked_keys(values: dict, valid: list[str], where: str) -> dict:
    unknown = [k for k in values if k not in valid]
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; valid keys: {', '.join(valid)}")
    return values


def _checked_notebook_parameters(values: dict) -> dict:
    """``notebook_parameters`` validated: known notebook names, mappings of parameter names to JSON values."""
    import json

    unknown = [k for k in values if k not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebook(s) {', '.join(map(repr, unknown))} in notebook_parameters; valid: "
                         f"{', '.join(NOTEBOOKS)}")
    out = {}
    for name, params in values.items():
        where = f"notebook_parameters.{name}"
        if params is None:
            params = {}
        if not isinstance(params, dict) or not all(isinstance(k, str) and k.isidentifier() for k in params):
            raise ValueError(f"{where} must be a mapping of parameter names to values, got {params!r}")
        reserved = sorted(set(params) & {*COMMON, *STUDY_PARAMETERS})
        if reserved:
            raise ValueError(f"{where}: {', '.join(reserved)} is set by the study runner from the study's "
                             "own settings")
        try:
            json.dumps(params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where} must hold JSON values (numbers, strings, lists, mappings, null): {exc}") \
                from None
        out[name] = dict(params)
    return out


def _str_list(value, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what} must be a non-empty list of names, got {value!r}")
    return list(value)


def _what_trains(run_spec) -> dict:
    """A RunSpec's fields but ``out`` and ``variant`` (where it is written and what the study calls it)."""
    return {k: v for k, v in asdict(run_spec).items() if k not in ("out", "variant")}


def _seed_list(value, what: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise ValueError(f"{what} must be a non-empty list of integers >= 0, got {value!r}")
    _no_duplicates(list(value), what)
    return list(value)


def _no_duplicates(values: list, what: str) -> None:
    dup = sorted({str(v) for v in values if values.count(v) > 1})
    if dup:
        raise ValueError(f"{what} lists {', '.join(dup)} more than once")
