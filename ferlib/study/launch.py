"""Where a study's training cells run: one notebook execution as plain data, and the launchers that run many.

A training cell is a :class:`CellJob`: the papermill execution of the ``cell`` notebook (``02_train``) with the
cell's parameters, and the run folder it must leave finished. :func:`run_cell` executes one and returns None or
its error record, never raising, so the same function runs in this process, in a worker process or in a Slurm
job, and the coordinator (:func:`ferlib.study.run_study`) records every outcome itself: it alone writes the
failure ledger and the log.

Launchers (``run(jobs, started)`` yields ``(index, error or None, seconds)`` as cells end):

- :class:`LocalLauncher` (``--launcher local``, the default): ``workers`` 1 runs the cells one after another in
  this process, as a study always did; ``workers`` N > 1 keeps N cells running at once, each in a worker process
  (``concurrent.futures.ProcessPoolExecutor``, spawned) whose environment :func:`worker_envs` sets before the
  kernel starts: ``OMP_NUM_THREADS`` = usable cores // N (at least 1), so the N kernels share the cores
  (torch takes its thread count from it), and on a machine with GPUs ``CUDA_VISIBLE_DEVICES`` = one GPU per
  worker (round-robin when there are more workers than GPUs).
- :class:`SlurmLauncher` (``--launcher slurm``): the cells as one Slurm job array through submitit
  (``executor.map_array``), each job with the resources of the profile's ``slurm:`` key (:class:`SlurmOptions`)
  and ``OMP_NUM_THREADS`` = its ``cpus_per_task``; the coordinator waits for the jobs and records a job's
  exception (time limit, node failure, out of memory) as the cell's failure, naming the job id. Job logs and
  pickles go to ``<reports_dir>/slurm/``. The executor is injectable: any ``submitit.AutoExecutor``
  (``AutoExecutor(folder, cluster="local")`` runs the same path on this machine; the tests do).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import multiprocessing
import os
import re
import shutil
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from ferlib import rundir
from ferlib.options import AT_LEAST_1, NON_NEGATIVE, check_ranges, check_types

__all__ = ["LAUNCHERS", "CellJob", "run_cell", "execute_notebook", "error_record", "worker_envs", "SlurmOptions",
           "LocalLauncher", "SlurmLauncher", "make_launcher"]

#: The values of ``--launcher``.
LAUNCHERS: tuple[str, ...] = ("local", "slurm")

#: ``run(jobs, started)``'s progress callback: ``started(index, note)`` when job ``index`` starts or is submitted.
Started = Callable[[int, str], None]
#: What a launcher yields per ended cell: ``(index in jobs, error record or None, seconds)``.
Outcome = tuple[int, "dict | None", float]


# ----------------------------------------------------------------------------------- one notebook
def execute_notebook(source: str | os.PathLike, output: str | os.PathLike, parameters: dict, *, kernel_name: str,
                     cwd: str | os.PathLike | None = None, start_timeout: int = 300,
                     time_limit: int | None = None) -> Path:
    """Execute ``source`` with papermill into ``output`` (written even when a cell raises; the error is
    re-raised as ``papermill.PapermillExecutionError``). ``cwd`` defaults to the notebook's folder, as in
    JupyterLab. ``time_limit``: seconds any one code cell may run (None: no limit); past it the kernel is
    stopped and the notebook fails with a timeout error."""
    import papermill as pm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel_name,
                        cwd=str(cwd or Path(source).parent), language="python", progress_bar=False, log_output=False,
                        start_timeout=start_timeout, execution_timeout=time_limit)
    return output


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_record(exc: BaseException) -> dict:
    """``error`` (one line) and ``traceback`` (text) of a notebook failure."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        error = f"{exc.ename}: {exc.evalue}"
        trace = _ANSI.sub("", "\n".join(exc.traceback or []))
    else:
        error = f"{type(exc).__name__}: {exc}"
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"error": error.strip().splitlines()[0] if error.strip() else type(exc).__name__,
            "traceback": trace[-8000:]}


# ----------------------------------------------------------------------------------- one cell
@dataclass(frozen=True)
class CellJob:
    """One training cell as plain (picklable) data.

    source, output, parameters, kernel_name, time_limit : the :func:`execute_notebook` call.
    run_dir : the cell's run folder, which must hold a finished run afterwards
        (:func:`ferlib.rundir.find_problem`).
    env : variables set in the executing process before the kernel starts, which inherits them
        (``OMP_NUM_THREADS``, ``CUDA_VISIBLE_DEVICES``); empty: the environment is left as it is.
    """

    source: str
    output: str
    parameters: dict
    kernel_name: str
    run_dir: str
    time_limit: int | None = None
    env: dict = field(default_factory=dict)


def run_cell(job: CellJob) -> dict | None:
    """Execute one cell; None when its run folder then holds a finished run, else its :func:`error_record`
    (a failing notebook, or one that ends without a finished run). Never raises on a cell's failure."""
    os.environ.update(job.env)
    try:
        execute_notebook(job.source, job.output, job.parameters, kernel_name=job.kernel_name,
                         time_limit=job.time_limit)
        problem = rundir.find_problem(job.run_dir)
        if problem is not None:
            raise RuntimeError(f"{Path(job.source).stem} finished but {job.run_dir} holds no finished run: {problem}")
    except Exception as exc:  # any failure of one cell is its record; the others go on
        return error_record(exc)
    return None


# ----------------------------------------------------------------------------------- this machine
def worker_envs(workers: int) -> list[dict[str, str]]:
    """The environment of each of ``workers`` local worker slots: ``OMP_NUM_THREADS`` = usable cores // workers
    (at least 1) and, where GPUs are visible, ``CUDA_VISIBLE_DEVICES`` = one GPU per slot (round-robin when
    there are more slots than GPUs)."""
    threads = str(max(1, _cores() // workers))
    gpus = _visible_gpus()
    return [{"OMP_NUM_THREADS": threads, **({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {})}
            for i in range(workers)]


def _cores() -> int:
    """CPU cores this process may use (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _visible_gpus() -> list[str]:
    """The GPU ids a child process may be given: ``CUDA_VISIBLE_DEVICES``' entries when it is set, else
    ``0 .. torch.cuda.device_count() - 1``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass(frozen=True)
class LocalLauncher:
    """Cells on this machine: one after another in this process (``workers`` 1), or ``workers`` at once in
    spawned worker processes, each cell given a free slot's :func:`worker_envs`."""

    workers: int = 1

    @property
    def parallel(self) -> int:
        """How many cells run at once."""
        return self.workers

    def run(self, jobs: list[CellJob], started: Started) -> Iterator[Outcome]:
        """Run ``jobs``; yield ``(index, error or None, seconds)`` as each ends."""
        if self.workers == 1:
            for i, job in enumerate(jobs):
                started(i, "running")
                t0 = time.perf_counter()
                error = run_cell(job)
                yield i, error, time.perf_counter() - t0
        else:
            yield from self._pooled(jobs, started)

    def _pooled(self, jobs: list[CellJob], started: Started) -> Iterator[Outcome]:
        queue, free, running = deque(enumerate(jobs)), deque(worker_envs(self.workers)), {}
        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            while queue or running:
                while queue and free:  # at most one cell per slot: never two cells on one slot's GPU
                    (i, job), env = queue.popleft(), free.popleft()
                    started(i, "running")
                    future = pool.submit(run_cell, dataclasses.replace(job, env=env))
                    running[future] = i, env, time.perf_counter()
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    i, env, t0 = running.pop(future)
                    free.append(env)
                    exc = future.exception()  # a worker process that died (the cell's own errors are returned)
                    yield i, error_record(exc) if exc else future.result(), time.perf_counter() - t0


# ----------------------------------------------------------------------------------- Slurm
@dataclass(frozen=True)
class SlurmOptions:
    """Resources of each training cell's Slurm job: the profile's optional ``slurm:`` mapping, every key
    optional (an unknown key raises listing these).

    partition : Slurm partition (None: the cluster's default).
    timeout_min : minutes a cell's job may run (default 240); past it Slurm stops it and the cell is recorded as
        failed. Keep it above the profile's ``cell_time_limit``.
    cpus_per_task : CPU cores per cell (default 4); also the cell's ``OMP_NUM_THREADS``.
    gpus_per_node : GPUs per cell (default 0: a CPU cell).
    mem_gb : memory per cell in GB (default 16).
    array_parallelism : the most cells of the job array running at once (default 32).
    """

    partition: str | None = None
    timeout_min: int = 240
    cpus_per_task: int = 4
    gpus_per_node: int = 0
    mem_gb: int = 16
    array_parallelism: int = 32

    def __post_init__(self) -> None:
        check_types(self, where="slurm")
        check_ranges(self, {"timeout_min": AT_LEAST_1, "cpus_per_task": AT_LEAST_1, "gpus_per_node": NON_NEGATIVE,
                            "mem_gb": AT_LEAST_1, "array_parallelism": AT_LEAST_1}, where="slurm")

    def executor_parameters(self, name: str) -> dict:
        """``submitit.AutoExecutor.update_parameters`` keywords (None = the cluster's default)."""
        return {"name": name, "timeout_min": self.timeout_min, "cpus_per_task": self.cpus_per_task,
                "gpus_per_node": self.gpus_per_node, "mem_gb": self.mem_gb, "slurm_partition": self.partition,
                "slurm_array_parallelism": self.array_parallelism}


@dataclass
class SlurmLauncher:
    """Cells as one Slurm job array through submitit.

    options : each job's resources.
    folder : submitit's folder (job scripts, pickles, logs) for the default executor.
    name : the jobs' name.
    executor : a ``submitit.AutoExecutor`` (None: ``AutoExecutor(folder, cluster="slurm")``).
    poll_s : seconds between checks for ended jobs.
    """

    options: SlurmOptions
    folder: Path
    name: str = "ferlib"
    executor: object | None = None
    poll_s: float = 5.0

    @property
    def parallel(self) -> int:
        """How many cells run at once, at most."""
        return self.options.array_parallelism

    def run(self, jobs: list[CellJob], started: Started) -> Iterator[Outcome]:
        """Submit ``jobs`` as one array; yield ``(index, error or None, seconds since submission)`` as each
        ends. Interrupted (Ctrl-C), the jobs not yet ended are cancelled."""
        import submitit

        executor = self.executor or submitit.AutoExecutor(folder=self.folder, cluster="slurm")
        executor.update_parameters(**self.options.executor_parameters(self.name))
        env = {"OMP_NUM_THREADS": str(self.options.cpus_per_task)}
        submitted = executor.map_array(run_cell, [dataclasses.replace(job, env=env) for job in jobs])
        t0 = time.perf_counter()
        for i, job in enumerate(submitted):
            started(i, f"submitted (job {job.job_id})")
        index = {id(job): i for i, job in enumerate(submitted)}
        try:
            for job in submitit.helpers.as_completed(submitted, poll_frequency=self.poll_s):
                yield index[id(job)], _job_outcome(job), time.perf_counter() - t0
        except BaseException:
            for job in submitted:
                job.cancel(check=False)
            raise


def _job_outcome(job) -> dict | None:
    """The error record of an ended submitit job, with its ``job`` id: the cell's own (:func:`run_cell`
    returned it) or the job's exception (time limit, node failure, out of memory); None when the cell finished."""
    exc = job.exception()
    error = error_record(exc) if exc is not None else job.result()
    return None if error is None else {**error, "job": job.job_id}


# ----------------------------------------------------------------------------------- choice
def make_launcher(launcher: str = "local", *, workers: int = 1, executor=None, slurm: dict | None = None,
                  folder: str | os.PathLike = "slurm", name: str = "ferlib") -> LocalLauncher | SlurmLauncher:
    """The launcher a study's settings name, checked before any notebook runs.

    Parameters
    ----------
    launcher : ``local`` or ``slurm`` (:data:`LAUNCHERS`).
    workers : cells at once on this machine (``local`` only), >= 1.
    executor : a ``submitit.AutoExecutor`` for ``slurm`` (None: a Slurm one in ``folder``).
    slurm : the profile's ``slurm`` mapping (:class:`SlurmOptions` fields).
    folder, name : the default executor's folder and the jobs' name.

    Raises
    ------
    ValueError naming the parameter (and its command-line flag): an unknown launcher, ``workers`` < 1 or given
    with ``slurm``, ``executor`` with ``local``, ``slurm`` without submitit installed or without Slurm.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; valid: {', '.join(LAUNCHERS)} (command line: --launcher)")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r} (command line: --workers N)")
    if launcher == "local":
        if executor is not None:
            raise ValueError("an executor is for launcher 'slurm'; launcher 'local' runs the cells itself")
        return LocalLauncher(workers)
    if workers != 1:
        raise ValueError(f"workers={workers} is for launcher 'local'; with --launcher slurm the profile's "
                         "slurm.array_parallelism sets how many cells run at once")
    if importlib.util.find_spec("submitit") is None:
        raise ValueError("--launcher slurm needs the submitit package: "
                         "pip install -c requirements/constraints.txt -e '.[slurm]'")
    if executor is None and shutil.which("srun") is None:
        raise ValueError("--launcher slurm needs a Slurm cluster: no srun on PATH here")
    return SlurmLauncher(SlurmOptions(**(slurm or {})), Path(folder), name, executor)
