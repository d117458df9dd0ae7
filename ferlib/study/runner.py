"""Run a study: every grid cell through ``notebooks/02_train.ipynb`` (papermill), the analysis notebooks once,
then an HTML report. In the spirit of recommenders' ``notebook_utils``: a small papermill runner.

Command line (``python -m ferlib study``)::

    python -m ferlib study --profile smoke                       # the shipped sample (its time: README)
    python -m ferlib study --profile cpu --data ../shared/data/ferplus --seeds 0 1 2
    python -m ferlib study --profile full --methods ce nla --epochs 20 --dry-run
    python -m ferlib study --profile cpu --data ../shared/data/ferplus --workers 4   # 4 cells at once
    python -m ferlib study --profile full --launcher slurm                           # a Slurm job array

Python / JupyterLab::

    from ferlib.study import load_profile, run_study
    run_study(load_profile("smoke"), runs_dir="runs/smoke", reports_dir="reports/smoke")

One study at a time: a study holds the lock of its runs folder and of its reports folder (:func:`ferlib.rundir.lock`,
the run folders' own) from its first write to its last; a second study on either is refused in one line naming the
holder (pid, host, start, command).

Order of work: the notebooks of ``spec.notebooks`` in order, each as its metadata declares
(:data:`ROLES`, ``"ferlib": {"role": ...}``), with :data:`COMMON` parameters ``data``, ``dataset``,
``dataset_options``, ``runs_dir`` and ``study_dir`` = ``reports_dir`` (paths relative to the repository root the
notebooks work from, where they lie in or beside it: :func:`ferlib.paths.portable_path`; else absolute):

1. ``view`` notebooks before the training notebook (``00_prepare_data``, ``01_inject_noise``): once. They come
   first so that a data problem shows in a minute, not after every cell has failed on it.
2. The ``cell`` notebook (``02_train``) once per training cell of :meth:`StudySpec.cells`, with ``spec`` =
   ``dataclasses.asdict(RunSpec)`` (JSON round-tripped): the grid (methods x noise x seeds) first, then the
   clean-control cells (``clean_control``, in the grid's folder), the ablation variants (``<runs_dir>/ablations``,
   when ``ablations`` is on) and the cross-fitted CE folds behind cleanlab (``<runs_dir>/cleanlab``, when
   ``cleanlab_folds`` >= 2). A cell whose ``<out>/<run_id>`` holds a
   finished, intact run (:func:`ferlib.rundir.find_problem`: ``result.json`` parses and matches its read-out) is
   skipped, so a study resumes where it stopped and a rerun does no work; a cell whose ``result.json`` fails
   the check is logged with the reason and run again (the run replaces the corrupted files); ``run_id``
   (:func:`ferlib.experiment.run_id`) hashes the cell's parameters, so a changed setting is a new cell. A
   failed cell is recorded in ``reports_dir/failures.json`` and the others go on. Only this notebook trains,
   after one step: cells that start from ``backbone: {weights: ssl}`` need a self-supervised checkpoint, so
   before the first cell :func:`ferlib.pretrain.pretrain` runs once per distinct checkpoint that an unfinished
   cell needs (a study whose cells all finished, e.g. re-rendered from committed cells, pretrains nothing; the
   views read run folders, never the checkpoint), in this process
   (cached: a finished one is reused; under ``--launcher slurm`` the cache, ``$FERLIB_CACHE``, must be one the
   jobs see); one that fails is recorded as ``pretrain:<name>`` and its cells fail naming the command.
   Where the cells run is the launcher's choice (:mod:`ferlib.study.launch`): one after another in this process
   (the default); ``workers`` N at once on this machine (``--workers N``: N processes, each kernel with
   ``OMP_NUM_THREADS`` = cores // N, at least 1, and with several GPUs one GPU per worker through
   ``CUDA_VISIBLE_DEVICES``); or one Slurm job per cell through submitit (``--launcher slurm``, resources from
   the profile's ``slurm:`` key). Whatever the launcher, only unfinished cells are started, each cell's outcome
   comes back to this process, which alone logs it (each line names the run id) and writes the failure ledger,
   and the views below start once every cell has ended.
   With the profile's ``eval_data``, every finished grid run is then scored on those datasets without training
   (:func:`ferlib.cross_eval.evaluate_run`: its ``cross_eval.json``; targets already scored are kept), in this
   process; a run that cannot be scored is recorded as ``cross_eval:<run_id>`` in ``failures.json``.
3. The other ``view`` notebooks (``03``, ``04``, ``05``, ``06``, ``99``) once each: they read run directories.
   A view declaring ``needs: ablation`` (``03_ablations``) is skipped when the study has no such cell.
4. HTML of every executed notebook (nbconvert) and ``reports_dir/index.html`` (:mod:`ferlib.study.report`).

Any notebook also gets the study parameters (:data:`STUDY_PARAMETERS`: ``noise`` = the grid's first noise other
than none, ``seed`` = the first seed, ``train_subset``) and the profile's ``notebook_parameters[<notebook>]``,
those its parameters cell declares; an undeclared profile parameter is left out with a warning.

A notebook whose file is missing is skipped with a warning, so the runner works while notebooks are added.

Kernel: papermill starts the Jupyter kernel ``python3``. ipykernel installed in the virtual environment ships
that kernelspec in ``<venv>/share/jupyter/kernels/python3`` with ``argv[0] = "python"``, which jupyter_client
replaces by ``sys.executable`` of the process launching it, and inside a venv jupyter prefers the env's
kernelspecs over the user's: started from ``.venv/bin/python``, the kernel is the venv's python.
:func:`ensure_kernel` checks this and, if another ``python3`` kernelspec shadows it, installs one into the
venv prefix (``ipykernel install --sys-prefix``) on first use, or a ``ferlib`` one if that is shadowed too.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ferlib import rundir
from ferlib.cross_eval import evaluate_run, parse_targets
from ferlib.paths import portable_path, repo_root
from ferlib.results import read_json, write_json

from .launch import LAUNCHERS, CellJob, error_record, execute_notebook, make_launcher
from .report import render_all, study_record, write_report
from .spec import COMMON, ROLES, StudySpec, list_profiles, load_profile

__all__ = ["run_study", "StudyOutcome", "execute_notebook", "ensure_kernel", "add_study_arguments", "study_main",
           "main", "COMMON"]

FALLBACK_KERNEL = "ferlib"
#: How a study's lock names its runs and reports folders to a second study (:func:`ferlib.rundir.lock`).
STUDY_FOLDERS = ("runs folder of a study", "reports folder of a study")


@dataclass
class StudyOutcome:
    """What :func:`run_study` did.

    cells : one dict per training cell: ``run_id``, ``kind`` (a key of :data:`~ferlib.study.spec.CELL_FOLDERS`),
        ``status`` (``done`` / ``skipped`` / ``failed`` / ``missing`` when the cell notebook is absent), ``seconds``
        (0 when not executed).
    notebooks : ``{name: status}`` of the other notebooks (``done`` / ``failed`` / ``missing`` / ``off``).
    failures : contents of ``failures.json`` at the end.
    index : path of ``index.html``.
    """

    cells: list[dict] = field(default_factory=list)
    notebooks: dict[str, str] = field(default_factory=dict)
    failures: dict = field(default_factory=dict)
    index: Path | None = None

    @property
    def executed(self) -> int:
        """Number of training cells executed (done or failed) in this invocation."""
        return sum(c["status"] in ("done", "failed") for c in self.cells)

    @property
    def ok(self) -> bool:
        return not self.failures


# ----------------------------------------------------------------------------------- kernel
def _kernel_python(name: str) -> str | None:
    """The interpreter a kernelspec starts when launched from this process (None: no such kernel)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv = KernelSpecManager().get_kernel_spec(name).argv
    except NoSuchKernel:
        return None
    major, minor = sys.version_info[:2]
    if argv and argv[0] in ("python", f"python{major}", f"python{major}.{minor}"):
        return sys.executable  # jupyter_client substitutes the launching interpreter
    return argv[0] if argv else None


def _is_this_python(exe: str | None) -> bool:
    # Same bin folder = same environment. Symlinks are NOT resolved: a venv's python links to the base one.
    return exe is not None and Path(os.path.abspath(exe)).parent == Path(os.path.abspath(sys.executable)).parent


def ensure_kernel(kernel_name: str | None = None, *, log=print) -> str:
    """The Jupyter kernel name to execute notebooks with, running this interpreter.

    An explicit ``kernel_name`` is returned unchecked (the caller chose it). Otherwise ``python3`` when it
    runs ``sys.executable``; if not, a ``python3`` kernelspec is installed into ``sys.prefix``
    (``python -m ipykernel install --sys-prefix``), and if another ``python3`` still takes precedence a
    kernelspec named ``ferlib`` is installed there and returned.
    """
    if kernel_name:
        return kernel_name
    from ipykernel.kernelspec import install

    for name in ("python3", FALLBACK_KERNEL):  # the first that runs this interpreter, installed if need be
        if not _is_this_python(_kernel_python(name)):
            path = install(kernel_name=name, prefix=sys.prefix,
                           display_name=f"Python 3 ({Path(sys.prefix).name})" if name == FALLBACK_KERNEL else None)
            log(f"installed Jupyter kernelspec {name!r} for {sys.executable} at {path}")
        if _is_this_python(_kernel_python(name)):
            return name
    raise RuntimeError(f"no Jupyter kernel runs {sys.executable}: kernelspecs 'python3' and {FALLBACK_KERNEL!r} "
                       "are shadowed; pass kernel_name (command line: --kernel NAME)")


class _Failures:
    """``failures.json``: ``{key: record}``, rewritten atomically on every change. Written by the coordinating
    thread only: cells running concurrently (workers, Slurm jobs) return their outcome to it, never write here."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict = read_json(path) if path.exists() else {}

    def add(self, key: str, record: dict) -> None:
        self.items[key] = {**record, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json(self.path, self.items)

    def clear(self, key: str) -> None:
        if self.items.pop(key, None) is not None or not self.path.exists():
            write_json(self.path, self.items)


# ----------------------------------------------------------------------------------- the study
def run_study(spec: StudySpec | str, *, runs_dir: str | os.PathLike, reports_dir: str | os.PathLike,
              notebooks_dir: str | os.PathLike = "notebooks", kernel_name: str | None = None, log=print,
              command: str | None = None, workers: int = 1, launcher: str = "local",
              executor=None) -> StudyOutcome:
    """Run every cell of ``spec``'s grid (skipping finished ones), the study notebooks, and write the report.

    Parameters
    ----------
    spec : a :class:`StudySpec` or a profile name (:func:`load_profile`).
    runs_dir : parent folder of the run directories (``runs_dir/<run_id>/``).
    reports_dir : executed notebooks, their HTML, ``index.html``, ``results.csv``, ``failures.json``.
    notebooks_dir : folder holding the study notebooks (``02_train.ipynb`` ...).
    kernel_name : Jupyter kernel; None = :func:`ensure_kernel` (``python3`` running this interpreter).
    log : called with each progress line.
    command : the command line shown in the report (the CLI passes it).
    workers : training cells run at once on this machine (``launcher="local"``); 1 = one after another in this
        process. Each of N > 1 workers is a process with ``OMP_NUM_THREADS`` = cores // N (at least 1) and, with
        GPUs, its own ``CUDA_VISIBLE_DEVICES`` (:func:`ferlib.study.launch.worker_envs`).
    launcher : ``local`` (this machine) or ``slurm`` (a job array through submitit, resources from
        ``spec.slurm``); see :mod:`ferlib.study.launch`.
    executor : for ``slurm``, a ``submitit.AutoExecutor`` to submit with (None: a Slurm one in
        ``reports_dir/slurm``); ``AutoExecutor(folder, cluster="local")`` runs the Slurm path on this machine.

    Returns
    -------
    :class:`StudyOutcome`. Failures do not raise: they are in ``outcome.failures`` and ``failures.json``.

    Raises
    ------
    FileNotFoundError for a missing data folder; ValueError for a bad ``workers`` / ``launcher`` / ``executor``
    (:func:`ferlib.study.launch.make_launcher`), before any notebook runs; :class:`ferlib.rundir.RunLockedError`
    naming the holder when another study writes ``runs_dir`` or ``reports_dir``: the study holds both folders'
    locks (:func:`ferlib.rundir.lock`, as a run holds its folder's) from its first write to its last, so two
    studies never write one ``failures.json`` or ``index.html``.
    """
    if isinstance(spec, str):
        spec = load_profile(spec)
    runs_dir, reports_dir = Path(runs_dir).absolute(), Path(reports_dir).absolute()
    notebooks_dir = Path(notebooks_dir).absolute()
    data = spec.data_path()
    if not data.exists():
        raise FileNotFoundError(f"data folder {data} of study {spec.name!r} does not exist; pass data=PATH "
                                "(command line: --data PATH)")
    targets = parse_targets(spec.eval_data)  # a missing eval root fails before any cell runs
    launch = make_launcher(launcher, workers=workers, executor=executor, slurm=spec.slurm,
                           folder=reports_dir / "slurm", name=f"ferlib-{spec.name}")
    # one study at a time on these folders: the run folders' lock (which also creates them)
    with rundir.lock(runs_dir, what=STUDY_FOLDERS[0]), rundir.lock(reports_dir, what=STUDY_FOLDERS[1]):
        record = study_record(spec, command)
        write_json(reports_dir / "study.json", record)
        log(record["describe"])
        log(f"runs: {runs_dir}\nreports: {reports_dir}\nnotebooks: {notebooks_dir}")

        failures = _Failures(reports_dir / "failures.json")
        outcome = StudyOutcome()
        where = functools.partial(_notebook_path, root=repo_root(notebooks_dir))
        common = {"data": where(data), "dataset": spec.dataset, "dataset_options": dict(spec.dataset_options),
                  "runs_dir": where(runs_dir), "study_dir": where(reports_dir)}
        kernel: list[str] = []  # resolved on first use

        declared: dict[str, set[str]] = {}  # notebook -> names its parameters cell assigns, read on first use
        warned: set[str] = set()

        def declared_by(name: str) -> set[str]:
            if name not in declared:
                declared[name] = _declared_parameters(notebooks_dir / f"{name}.ipynb")
            return declared[name]

        def prepared(name: str, params: dict) -> dict:
            """:func:`execute_notebook`'s ``source``, ``parameters`` and ``kernel_name`` for notebook ``name``."""
            if not kernel:
                kernel.append(ensure_kernel(kernel_name, log=log))
            chosen = spec.notebook_parameters.get(name) or {}
            if chosen:
                known = declared_by(name)
                unknown = [k for k in chosen if k not in known]
                if unknown and name not in warned:
                    warned.add(name)
                    log(f"warning: {name}.ipynb does not declare notebook_parameters {', '.join(unknown)}: not passed")
                params = {**params, **{k: v for k, v in chosen.items() if k in known}}
            return {"source": str(notebooks_dir / f"{name}.ipynb"), "parameters": _jsonable(params),
                    "kernel_name": kernel[0]}

        def execute(name: str, output: Path, params: dict) -> None:
            execute_notebook(output=output, time_limit=spec.view_time_limit, **prepared(name, params))

        def cell_job(name: str, rid: str, run_spec) -> CellJob:
            cell = {**dataclasses.asdict(run_spec), "data": where(run_spec.data), "out": where(run_spec.out)}
            return CellJob(output=str(reports_dir / "runs" / f"{rid}.ipynb"), run_dir=str(Path(run_spec.out) / rid),
                           time_limit=spec.cell_time_limit, **prepared(name, {**common, "spec": cell}))

        cells = spec.cells(runs_dir)
        study_params = {"noise": spec.main_noise(), "seed": spec.grid.seeds[0], "train_subset": spec.train_subset}
        for name in spec.notebooks:
            source = notebooks_dir / f"{name}.ipynb"
            role = _declared_role(source)
            if role.get("role") == "cell":
                _pretrain(cells, failures, log)
                outcome.cells = _run_cells(cells, source, functools.partial(cell_job, name), launch, failures, log)
                for out in sorted({s.out for _, s in cells}):  # each runs folder's results.csv, once per study
                    rundir.write_results(out)
                _cross_eval(cells, targets, failures, log)
                continue
            if not source.exists():
                log(f"warning: {source} is missing: skipped")
                outcome.notebooks[name] = "missing"
                continue
            needs = role.get("needs")
            if needs and not any(kind == needs for kind, _ in cells):
                log(f"{name}: the study has no {needs} cell: skipped")
                outcome.notebooks[name] = "off"
                continue
            params = {**common, **{k: v for k, v in study_params.items() if k in declared_by(name)}}
            outcome.notebooks[name] = _run_once(name, reports_dir / f"{name}.ipynb", params, execute, failures, log)

        log("rendering HTML reports ...")
        render_all(reports_dir, log=log)
        outcome.index = write_report(runs_dir=runs_dir, reports_dir=reports_dir, study=record,
                                     order=list(spec.notebooks))
        outcome.failures = dict(failures.items)
        log(f"report: {outcome.index}" + (f"  ({len(outcome.failures)} failure(s): {failures.path})"
                                          if outcome.failures else ""))
        return outcome


def _notebook_path(path: str | os.PathLike, *, root: Path | None) -> str:
    """A path as the notebooks get it: relative to the repository root they work from (``root``, where
    :func:`ferlib.analysis.setup_notebook` moves them; :func:`ferlib.paths.portable_path`), so that what they
    print and record names no folder of this machine; absolute when the notebooks are not in a checkout."""
    return portable_path(path, root) if root is not None else str(path)


def _run_cells(cells: list, source: Path, cell_job, launcher, failures: _Failures, log) -> list[dict]:
    """Execute the cell notebook ``source`` once per unfinished ``(kind, RunSpec)`` cell through ``launcher``
    (:mod:`ferlib.study.launch`); ``cell_job(run_id, run_spec)`` gives the cell's :class:`CellJob`. Returns one
    status dict per cell, in the order of ``cells``; outcomes are logged and recorded here, as cells end."""
    from ferlib.experiment import run_id

    cells = [(kind, run_id(s), s) for kind, s in cells]
    total = len(cells)
    if not source.exists():
        log(f"warning: {source} is missing: the {total} training cell(s) are not run")
        return [{"run_id": rid, "kind": kind, "status": "missing", "seconds": 0.0} for kind, rid, _ in cells]
    for _, rid, s in cells:
        folder = Path(s.out) / rid
        if (folder / rundir.RESULT).is_file() and not rundir.is_finished(folder):
            log(f"warning: {folder}: {rundir.find_problem(folder)}: this cell is run again")
    todo = [i for i, (_, rid, s) in enumerate(cells) if not _finished(s, rid)]
    log(f"cells: {total} ({_kinds(k for k, _, _ in cells)}), {total - len(todo)} already finished, "
        f"{len(todo)} to run" + (f", {launcher.parallel} at once" if launcher.parallel > 1 else ""))
    tags = [f"cell {i}/{total} {kind} {rid}" for i, (kind, rid, _) in enumerate(cells, 1)]
    out = [{"run_id": rid, "kind": kind, "status": "skipped", "seconds": 0.0} for kind, rid, _ in cells]
    for i in sorted(set(range(total)) - set(todo)):
        failures.clear(out[i]["run_id"])
        log(f"{tags[i]} ... skipped (finished: result.json checked)")

    def started(k: int, note: str) -> None:
        log(f"{tags[todo[k]]} ... {note} ({_describe(cells[todo[k]][2])})")

    times = []
    for k, error, seconds in launcher.run([cell_job(rid, s) for _, rid, s in (cells[i] for i in todo)], started):
        times.append(seconds)
        i = todo[k]
        kind, rid, run_spec = cells[i]
        out[i] = {"run_id": rid, "kind": kind, "status": "done" if error is None else "failed", "seconds": seconds}
        eta = f"ETA {sum(times) / len(times) * (len(todo) - len(times)) / launcher.parallel:.0f}s"
        if error is None:
            failures.clear(rid)
            log(f"{tags[i]} ... done in {seconds:.0f}s, {eta}")
        else:
            failures.add(rid, {"notebook": source.stem, "report": f"runs/{rid}.ipynb", "kind": kind,
                               "method": run_spec.method, "noise": run_spec.noise, "seed": run_spec.train.seed,
                               **error})
            log(f"{tags[i]} ... FAILED in {seconds:.0f}s ({error['error']}), {eta}")
    return out


def _pretrain(cells: list, failures: _Failures, log) -> None:
    """Pretrain, once and before any cell, each self-supervised backbone that the unfinished cells of
    ``(kind, RunSpec)`` ``cells`` start from (``backbone.weights: ssl``; :func:`ferlib.pretrain.pretrain` in this
    process, cached: a finished one is reused); finished cells need none, and a failure recorded for one that no
    unfinished cell needs any more is cleared. One that fails is recorded as ``pretrain:<name>`` and its cells
    then fail naming the command that creates it."""
    from ferlib.experiment import run_id
    from ferlib.pretrain import pretrain, pretrain_jobs

    jobs = pretrain_jobs([s for _, s in cells if not _finished(s, run_id(s))])
    for key in [k for k in failures.items if k.startswith("pretrain:") and k.split(":", 1)[1] not in jobs]:
        failures.clear(key)
    for name, job in jobs.items():
        key = f"pretrain:{name}"
        log(f"{key} ... running (self-supervised pretraining for the cells with weights: ssl)")
        try:
            result = pretrain(**job)
        except Exception as exc:
            failures.add(key, {"step": "pretrain", **error_record(exc)})
            log(f"{key} ... FAILED ({failures.items[key]['error']})")
        else:
            failures.clear(key)
            log(f"{key} ... done: {result['weights']}")


def _cross_eval(cells: list, targets: list, failures: _Failures, log) -> None:
    """Score every finished ``grid`` cell of ``(kind, RunSpec)`` ``cells`` on ``targets``
    (:func:`ferlib.cross_eval.evaluate_run`, no training); a run that cannot be scored is recorded as
    ``cross_eval:<run_id>`` and the others go on."""
    from ferlib.experiment import run_id

    if not targets:
        return
    for kind, run_spec in cells:
        folder = Path(run_spec.out) / run_id(run_spec)
        if kind != "grid" or not rundir.is_finished(folder):
            continue
        key = f"cross_eval:{folder.name}"
        try:
            evaluate_run(folder, targets, log=lambda line: log(f"cross eval {folder.name}: {line}"))
        except Exception as exc:
            failures.add(key, {"step": "cross_eval", **error_record(exc)})
            log(f"cross eval {folder.name} ... FAILED ({failures.items[key]['error']})")
        else:
            failures.clear(key)


def _describe(run_spec) -> str:
    """``method ce, noise symmetric:0.3, seed 0`` (and the variant or fold) of a cell, for the log."""
    return (f"method {run_spec.method}, noise {run_spec.noise}, seed {run_spec.train.seed}"
            + (f", variant {run_spec.variant}" if run_spec.variant else "")
            + (f", fold {run_spec.fold[0]} of {run_spec.fold[1]}" if run_spec.fold else ""))


def _finished(run_spec, rid: str) -> bool:
    """The cell's run folder holds a finished, intact run (:func:`ferlib.rundir.is_finished`)."""
    return rundir.is_finished(Path(run_spec.out) / rid)


def _kinds(kinds) -> str:
    from collections import Counter

    return ", ".join(f"{n} {kind}" for kind, n in Counter(kinds).items()) or "none"


def _run_once(name: str, output: Path, params: dict, execute, failures: _Failures, log) -> str:
    key = f"notebook:{name}"
    log(f"{name} ... running")
    t0 = time.perf_counter()
    try:
        execute(name, output, params)
    except Exception as exc:
        error = error_record(exc)
        failures.add(key, {"notebook": name, "report": output.name, **error})
        log(f"{name} ... FAILED in {time.perf_counter() - t0:.0f}s ({error['error']})")
        return "failed"
    failures.clear(key)
    log(f"{name} ... done in {time.perf_counter() - t0:.0f}s")
    return "done"


def _declared_role(source: Path) -> dict:
    """A notebook's ``metadata["ferlib"]`` (``role``, optional ``needs``); ``{}`` (a view) when absent or
    unreadable. An unknown role raises naming the notebook and the valid roles."""
    try:
        meta = json.loads(source.read_text()).get("metadata", {}).get("ferlib", {})
    except (OSError, ValueError):
        return {}
    if meta.get("role", "view") not in ROLES:
        raise ValueError(f"{source}: unknown role {meta.get('role')!r} in metadata.ferlib; valid: {', '.join(ROLES)}")
    return meta


def _declared_parameters(source: Path) -> set[str]:
    """Names assigned in the notebook's ``parameters`` cell (papermill's inspection; empty if it fails)."""
    import papermill as pm

    try:
        return set(pm.inspect_notebook(str(source)))
    except Exception:
        return set()


def _jsonable(params: dict) -> dict:
    """Parameters as papermill can write them into a cell: JSON types only (tuples become lists)."""
    return json.loads(json.dumps(params, default=str))


# ----------------------------------------------------------------------------------- command line
def add_study_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``study`` options to ``parser`` (a subparser of ``python -m ferlib``)."""
    parser.add_argument("--profile", default="smoke",
                        help=f"study profile: {', '.join(list_profiles())} or a .yaml path (default: smoke)")
    parser.add_argument("--data", default=None, help="dataset root (default: the profile's)")
    parser.add_argument("--runs", default=None, help="folder of run directories (default: runs/<profile>)")
    parser.add_argument("--reports", default=None, help="report folder (default: reports/<profile>)")
    parser.add_argument("--notebooks", default="notebooks", help="folder of the study notebooks (default: notebooks)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="grid seeds, e.g. 0 1 2")
    parser.add_argument("--methods", nargs="+", default=None, help="grid methods (default: the profile's, "
                                                                   "usually all registered)")
    parser.add_argument("--noise", nargs="+", default=None, help="grid noise specs, e.g. none symmetric:0.3")
    parser.add_argument("--recipe", choices=("shared", "paper"), default=None,
                        help="shared: one budget (the profile's train settings) for every method; paper: each "
                             "method's official recipe (default: the profile's, else shared)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs of every cell (a paper "
                                                                  "recipe's own epochs win)")
    parser.add_argument("--train-subset", type=int, default=None, help="stratified number of train images")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=None,
                        help="run 03_ablations (default: the profile's)")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel name (default: python3 running this python)")
    parser.add_argument("--workers", type=int, default=1,
                        help="training cells at once on this machine, each in its own process with cores // N "
                             "threads and, with GPUs, its own GPU (default: 1, one after another)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: the cells run on this machine; slurm: a Slurm job array through submitit, "
                             "resources from the profile's slurm: key (default: local)")
    parser.add_argument("--dry-run", action="store_true", help="print the grid (run ids, finished or not) and stop")
    parser.add_argument("--estimate", metavar="BENCH_JSON", default=None,
                        help="print what the grid costs on the machine a python -m ferlib bench report measured "
                             "(per method: cells x epochs x images / measured throughput) and stop")
    return parser


def spec_from_study_args(args: argparse.Namespace) -> StudySpec:
    overrides = {k: v for k, v in (("seeds", args.seeds), ("methods", args.methods), ("noise", args.noise),
                                   ("train_subset", args.train_subset), ("ablations", args.ablations),
                                   ("recipe", args.recipe))
                 if v is not None}
    if args.epochs is not None:
        overrides["train"] = {"epochs": args.epochs}
    return load_profile(args.profile, data=args.data, **overrides)


def study_main(args: argparse.Namespace) -> int:
    """Run the study the parsed arguments describe; exit status 0, 1 (something failed) or 2 (bad arguments)."""
    from functools import partial

    log = partial(print, flush=True)
    try:
        spec = spec_from_study_args(args)
        make_launcher(args.launcher, workers=args.workers, slurm=spec.slurm)  # checked before a dry run too
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = Path(args.runs or Path("runs") / spec.name)
    reports = Path(args.reports or Path("reports") / spec.name)
    if args.estimate:
        return _print_estimate(spec, runs, args.estimate, log)
    if args.dry_run:
        from ferlib.experiment import run_id

        log(spec.describe())
        for kind, s in spec.cells(runs):
            rid = run_id(s)
            where = Path(s.out).relative_to(runs.absolute())
            problem = rundir.find_problem(Path(s.out) / rid)
            state = ("finished" if problem is None else
                     f"to run again ({problem})" if (Path(s.out) / rid / rundir.RESULT).is_file() else "to run")
            log(f"{kind:8s} {where / rid}  {state}")
        return 0
    argv = getattr(args, "argv", None)  # set by main(); under ferlib.cli, sys.argv holds "study ..."
    command = "python -m ferlib " + shlex.join(["study", *argv] if argv is not None else sys.argv[1:])
    try:
        outcome = run_study(spec, runs_dir=runs, reports_dir=reports, notebooks_dir=args.notebooks,
                            kernel_name=args.kernel, log=log, command=command, workers=args.workers,
                            launcher=args.launcher)
    except (FileNotFoundError, ValueError, rundir.RunLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if outcome.ok else 1


def _print_estimate(spec: StudySpec, runs: Path, report_path: str, log) -> int:
    """``--estimate``: the grid's cost from a bench report (:func:`ferlib.bench.estimate.grid_estimate`)."""
    from ferlib.bench.estimate import format_estimate, grid_estimate
    from ferlib.experiment import prepare_data
    from ferlib.results import read_json

    try:
        report = read_json(report_path)
        cells = spec.cells(runs)
        data, _ = prepare_data(cells[0][1])
        sizes = data.split_counts()
        estimate = grid_estimate(cells, report, sizes=sizes)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: --estimate {report_path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    log(spec.describe())
    log(format_estimate(estimate, sizes))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ferlib study [options]`` called from Python: ``main(["--profile", "smoke", "--dry-run"])``."""
    parser = add_study_arguments(argparse.ArgumentParser(prog="python -m ferlib study",
                                                         description="Run a study: grid of runs, notebooks, report."))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return study_main(args)
