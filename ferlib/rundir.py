"""One run directory: the names of its files, its one writer (:class:`RunDir`), its checkpoints, when it counts
as finished, reading and listing runs, and the table of a runs folder.

Every module that writes or reads a run directory goes through these names and functions::

    config.json    CONFIG        resolved configuration (the spec's fields, train, method config)
    noise.json     NOISE         the realised noise (:func:`ferlib.noise.apply_noise`'s report)
    checkpoint.pt  CHECKPOINT    last finished epoch, for resume; dropped when the run finishes unless
                                 ``TrainConfig.keep_checkpoint``
    epochs.csv     EPOCHS_CSV    one row per epoch (all scalar metrics)
    epochs.jsonl   EPOCHS_JSONL  every epoch with per-class accuracy and confusion of valid and test
    model.pt       MODEL         final weights (backbone + head)
    readout.npz    READOUT       per-sample read-outs (train: ids, given, clean, logits, method_*; test: ...)
    result.json    RESULT        the run's summary (:class:`Result`), written last
    cross_eval.json CROSS_EVAL   scores on other datasets, written after the run finished
                                 (:func:`ferlib.cross_eval.evaluate_run`; optional)
    .lock          LOCK          present while a process writes the folder (:func:`lock`)

A runs folder, the parent of run folders, holds ``results.csv`` (:data:`RESULTS_CSV`, :func:`write_results`).

Decisions, so that a study of many hours is never silently wrong:

* **One writer.** :class:`RunDir` writes every file of a run folder, each atomically, holding its lock
  (:meth:`RunDir.lock`, :func:`lock`): a second process gets a :class:`RunLockedError` naming the holder (pid,
  host, start time, command). A lock whose process is gone is stale and is taken over with a :class:`RunWarning`.
  :func:`ferlib.experiment.run` holds the lock, asks :meth:`RunDir.finished` and starts a generation
  (:meth:`RunDir.begin`); :func:`ferlib.engine.fit` writes each epoch and the end of the run through it.
* **One generation.** A run that starts from epoch 0 (fresh, or with no checkpoint to resume) first removes
  every file of an earlier generation (:meth:`RunDir.retire`), ``result.json`` first, so the folder stops
  counting as finished at once and old weights or read-outs never sit beside new partial files.
* **Finished = checked.** :func:`find_problem` reads ``result.json``: it must parse to an object with the keys
  of :data:`REQUIRED`, and every file its ``files`` record names (the read-out) must be there with the size it
  had. A folder that fails is reported by path and reason (:func:`problems`) and skipped by the readers, re-run
  by the study, and trained again by :func:`ferlib.experiment.run`; it is never fatal for other runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
import uuid
import warnings
from datetime import datetime
from pathlib import Path
from typing import Iterator, TypedDict

from .results import atomic_savez, atomic_write, atomic_write_text, flatten, nbytes_of, write_json, write_table

__all__ = ["CONFIG", "NOISE", "CHECKPOINT", "EPOCHS_CSV", "EPOCHS_JSONL", "MODEL", "READOUT", "RESULT", "LOCK",
           "CROSS_EVAL", "RESULTS_CSV", "GENERATION", "REQUIRED", "Result", "RunDir", "RunWarning", "RunLockedError",
           "CorruptRunError", "lock", "save_checkpoint", "load_checkpoint", "find_problem", "is_finished",
           "run_folders", "finished_runs", "problems", "collect_results", "write_results", "read_result",
           "read_config", "read_cross_eval", "read_readout"]

CONFIG, NOISE, CHECKPOINT = "config.json", "noise.json", "checkpoint.pt"
EPOCHS_CSV, EPOCHS_JSONL, MODEL = "epochs.csv", "epochs.jsonl", "model.pt"
READOUT, RESULT, LOCK = "readout.npz", "result.json", ".lock"
CROSS_EVAL = "cross_eval.json"
#: The table of a runs folder (:func:`write_results`): one row per finished run directly under it.
RESULTS_CSV = "results.csv"

#: The files of one generation of a run, in the order :func:`retire` removes them: ``result.json`` first (the
#: folder is no longer finished), then the scores of its weights on other datasets, the resume checkpoint
#: (nothing resumes the old generation).
GENERATION = (RESULT, CROSS_EVAL, CHECKPOINT, MODEL, READOUT, EPOCHS_CSV, EPOCHS_JSONL, CONFIG, NOISE)

#: Keys every ``result.json`` must hold to count as a finished run (``last`` a dict of test metrics).
REQUIRED = ("method", "last")


class Result(TypedDict, total=False):
    """What ``result.json`` holds (:meth:`RunDir.write_result` writes what :func:`ferlib.engine.fit` summarises,
    with the spec's fields :func:`ferlib.experiment.run` passes it). Metrics are fractions in [0, 1]; ``last``
    (the primary number) and ``best`` (the epoch chosen on ``select_on``, validation by default) are test
    metrics: ``acc``, ``mean_acc``, ``macro_f1``, ... ``files`` is the integrity record :func:`find_problem`
    verifies: ``{file name: size in bytes}`` of the read-out written with this result (absent in results written
    before it existed; those are checked without it).
    """

    run_id: str
    method: str
    oracle: bool
    variant: str                # ablation variant ("full" or a key of the method's ablations); "" otherwise
    fold: list[int] | None      # [i, k] of a cross-fitting cell; None otherwise
    dataset: str
    data: str
    dataset_options: dict
    noise: str
    noise_rate: float           # realised share of flipped train labels
    noise_seed: int
    train_subset: int | None
    recipe: str
    method_options: dict
    seed: int
    epochs: int
    best_epoch: int
    selection: str
    last: dict
    best: dict
    last_valid: dict
    time_per_epoch_s: float
    train_loss_first: float
    train_loss_last: float
    files: dict


class RunWarning(UserWarning):
    """A run folder was skipped (corrupted or partial), or a stale lock was taken over."""


class RunLockedError(BlockingIOError):
    """Another process (or another thread of this one) is writing the run folder.

    ``path`` is the lock file, ``holder`` what it records (``pid``, ``host``, ``started``, ``command``). A
    ``BlockingIOError`` (an ``OSError``), as ``fcntl.flock`` raises for a lock held elsewhere, so the command
    line reports it in one line like other path problems. ``what`` names the folder in the message (a study
    locks its runs and reports folders the same way)."""

    def __init__(self, path: Path, holder: dict | None, *, note: str = "", what: str = "run folder") -> None:
        self.path, self.holder = Path(path), holder or {}
        who = (f"pid {self.holder.get('pid', '?')} on host {self.holder.get('host', '?')}, started "
               f"{self.holder.get('started', '?')}" + (f" ({self.holder['command']})" if self.holder.get("command")
                                                       else ""))
        super().__init__(f"{what} {self.path.parent} is being written by another process: {who}{note}; wait "
                         f"for it to finish, or, if that process is no longer running, delete {self.path}")


class CorruptRunError(ValueError):
    """A run file exists but cannot be used (not JSON, missing keys, a read-out of the wrong size, ...).

    ``path`` is the run folder and ``reason`` one line saying what is wrong."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{self.path}: {reason}")


# ----------------------------------------------------------------------------------- the lock
_GUARD = threading.Lock()
_HELD: dict[str, list] = {}  # lock file (real path) -> [thread ident, depth], for this process


@contextlib.contextmanager
def lock(run_dir: str | os.PathLike, *, what: str = "run folder") -> Iterator[Path]:
    """Hold ``run_dir``'s lock (``<run_dir>/.lock``) for the ``with`` block; the folder is created if missing.
    ``what`` names the folder in the error (a study holds its runs folder's and reports folder's this way).

    The lock file is created atomically and exclusively (a complete temporary file hard-linked to ``.lock``;
    ``O_CREAT | O_EXCL`` where hard links are not supported) and records ``pid``, ``host``, ``started``,
    ``command``, the boot id and the process's start time. It is re-entrant within one thread and removed on
    exit.

    Raises :class:`RunLockedError` naming the holder when another live process holds it, when it was taken on
    another host (whose processes cannot be checked), or when another thread of this process holds it.

    A lock on this host is stale when its process no longer runs (``os.kill(pid, 0)``), when its pid now belongs
    to another process (another start time), when the machine has restarted since (another boot id) or when its
    pid is this process's own without this process holding it (a leftover of an earlier process with the same
    pid, as in containers); a stale lock is taken over with a :class:`RunWarning` naming the old holder.
    """
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    key, me = os.path.realpath(path), threading.get_ident()
    with _GUARD:  # acquisition under the guard: two threads of this process never race on the file
        held = _HELD.get(key)
        if held is not None and held[0] != me:
            raise RunLockedError(path, _read_lock(path)[0], note=" (another thread of this process)", what=what)
        if held is not None:
            held[1] += 1
            token = None
        else:
            token = _acquire(path, what)
            _HELD[key] = [me, 1]
    try:
        yield path
    finally:
        with _GUARD:
            _HELD[key][1] -= 1
            if _HELD[key][1] == 0:
                del _HELD[key]
                if token is not None:
                    _release(path, token)


def _acquire(path: Path, what: str) -> str:
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": _command()[:500],
              "boot_id": _boot_id(), "proc_start": _proc_start(os.getpid()), "token": uuid.uuid4().hex}
    text = json.dumps(record)
    holder = None
    for _ in range(5):
        if _create(path, text):
            return record["token"]
        holder, raw = _read_lock(path)
        if raw is None:  # released between our attempt and the read: try again
            continue
        reason = _stale(path, holder)
        if reason is None:
            raise RunLockedError(path, holder, what=what)
        warnings.warn(f"{path.parent}: taking over the lock of pid {(holder or {}).get('pid', '?')} on host "
                      f"{(holder or {}).get('host', '?')} (started {(holder or {}).get('started', '?')}): {reason}",
                      RunWarning, stacklevel=4)
        _remove_if_unchanged(path, raw)
    raise RunLockedError(path, holder, note=" (the lock changed hands while this process tried to take it)",
                         what=what)


def _command() -> str:
    """This process's command line as typed: ``python -m ferlib train ...`` rather than ``.../__main__.py``."""
    argv = list(sys.argv) or [""]
    if argv[0].endswith("__main__.py"):
        argv[:1] = ["-m", Path(argv[0]).parent.name]
    return shlex.join([Path(sys.executable).name, *argv])


def _create(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text``, atomically and only if it does not exist; False if it exists."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}-", suffix=".new")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: exclusive create (a reader may see it empty)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _read_lock(path: Path) -> tuple[dict | None, str | None]:
    """(parsed record or None when unreadable, raw text or None when the file is gone)."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError):
        return None, ""
    try:
        record = json.loads(raw)
    except ValueError:
        return None, raw
    return (record if isinstance(record, dict) else None), raw


def _stale(path: Path, holder: dict | None) -> str | None:
    """Why the lock ``holder`` is stale, or None when its process may still be running."""
    if holder is None or not isinstance(holder.get("pid"), int) or holder["pid"] <= 0:
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        return f"its lock file is unreadable and {age:.0f} s old" if age > 10 else None
    if holder.get("host") != socket.gethostname():
        return None  # another machine's processes cannot be checked
    pid = holder["pid"]
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return "this machine has restarted since"
    if pid == os.getpid():
        return f"pid {pid} is this process, which does not hold the lock (left by an earlier process)"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"no process {pid} is running"
    except PermissionError:
        pass  # it runs, under another user
    except OSError:
        return None
    start = _proc_start(pid)
    if holder.get("proc_start") is not None and start is not None and start != holder["proc_start"]:
        return f"pid {pid} is now another process"
    return None


def _remove_if_unchanged(path: Path, raw: str) -> None:
    """Remove the lock file if it still holds ``raw`` (a stale lock); a fresh lock that another process took
    meanwhile is put back."""
    grave = path.with_name(f"{path.name}-stale-{uuid.uuid4().hex}")
    try:
        os.replace(path, grave)
    except FileNotFoundError:
        return
    try:
        if grave.read_text() != raw:  # not the stale lock we judged: restore it (unless yet another exists)
            with contextlib.suppress(FileExistsError):
                os.link(grave, path)
    finally:
        grave.unlink(missing_ok=True)


def _release(path: Path, token: str) -> None:
    holder, _ = _read_lock(path)
    if holder is not None and holder.get("token") == token:
        path.unlink(missing_ok=True)
    else:
        warnings.warn(f"{path}: the lock this process held was taken over by another process", RunWarning,
                      stacklevel=4)


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _proc_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux ``/proc/<pid>/stat``), None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------------- the writer
class RunDir:
    """One run folder and its one writer: the lock, whether it holds a finished run, the start of a new
    generation, and every file written into it, each atomically (large ones after a free-space check).

    The caller holds :meth:`lock` around the whole run (:func:`ferlib.experiment.run`): it asks
    :meth:`finished`, and when there is nothing finished to return loads the data, calls :meth:`begin` and
    :meth:`write_noise`, then :func:`ferlib.engine.fit` writes through :meth:`write_config`,
    :meth:`end_epoch` (history and checkpoint) and, at the end, :meth:`write_model`, :meth:`write_readout` and
    :meth:`write_result`. Under ``torchrun`` only rank 0 writes. Readers use the module's functions
    (:func:`read_result`, :func:`read_config`, ...), which take a RunDir as they take a path.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def lock(self) -> contextlib.AbstractContextManager[Path]:
        """This folder's :func:`lock` (created if missing): hold it while writing."""
        return lock(self.path)

    # ------------------------------------------------------------------- generations
    def finished(self, *, keep_checkpoint: bool = False) -> Result | None:
        """The result of the finished, intact run here, or None when it has not finished.

        A corrupted result (:func:`find_problem` names it) is removed with a :class:`RunWarning` naming the
        folder and the reason, and None is returned: the caller trains the run again (from its checkpoint if one
        is left). A resume checkpoint left beside a finished result (a crash between the two, or an earlier
        ``keep_checkpoint``) is dropped unless ``keep_checkpoint``. Call it holding :meth:`lock`."""
        try:
            result = read_result(self.path)
        except FileNotFoundError:
            return None
        except CorruptRunError as exc:
            warnings.warn(f"{exc}; the run is trained again", RunWarning, stacklevel=2)
            (self.path / RESULT).unlink(missing_ok=True)
            return None
        if not keep_checkpoint:
            (self.path / CHECKPOINT).unlink(missing_ok=True)
        return result

    def begin(self, *, resume: bool) -> bool:
        """Start writing an unfinished run: remove the temporary files interrupted writers left and, unless
        ``resume`` and a checkpoint is here, the earlier generation (:meth:`retire`). Call it holding
        :meth:`lock`, once the data have loaded (a data error leaves the old generation as it was). Returns
        whether the run resumes from the checkpoint."""
        self._remove_temp_files()
        resuming = resume and (self.path / CHECKPOINT).is_file()
        if not resuming:
            self.retire()
        return resuming

    def retire(self) -> list[str]:
        """Remove the files of the run's current generation (:data:`GENERATION`, in that order: ``result.json``
        first, so the folder stops counting as finished at once, then the checkpoint, the weights and read-outs,
        the history, the config and the noise report) and the temporary files of interrupted writers. Call it
        holding :meth:`lock`. The old generation is deleted, not kept aside: a fresh run means it is not wanted,
        and runs are large. Returns the names removed."""
        removed = []
        for name in GENERATION:
            if (self.path / name).exists():
                (self.path / name).unlink()
                removed.append(name)
        return removed + self._remove_temp_files()

    def _remove_temp_files(self) -> list[str]:
        """Remove ``.<name>.<random>.tmp`` files (:func:`ferlib.results.atomic_write`) that interrupted writers
        left (a killed checkpoint save leaves one as large as the checkpoint); only the lock holder may, when no
        other writer can be mid-write. Returns the names removed."""
        removed = []
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
        return removed

    # ------------------------------------------------------------------- writes
    def write_noise(self, report: dict) -> None:
        """``noise.json``: the realised noise (:func:`ferlib.noise.apply_noise`'s report)."""
        write_json(self.path / NOISE, report)

    def write_config(self, config: dict) -> None:
        """``config.json``: the resolved configuration."""
        write_json(self.path / CONFIG, config)

    def end_epoch(self, history: list[dict], parts: dict, gen) -> None:
        """Close an epoch: the history (:meth:`write_history`), then the checkpoint to resume from
        (:func:`save_checkpoint` of ``parts`` and ``gen`` after ``history[-1]["epoch"]``)."""
        self.write_history(history)
        save_checkpoint(self.path / CHECKPOINT, epoch=history[-1]["epoch"], history=history, parts=parts, gen=gen)

    def load_checkpoint(self, parts: dict, gen, *, device) -> tuple[int, list[dict]]:
        """Restore ``parts`` and ``gen`` from the checkpoint here (:func:`load_checkpoint`): (the epochs done,
        the history); ``(0, [])`` when there is none. Every process of a ``torchrun`` run reads it."""
        return load_checkpoint(self.path / CHECKPOINT, parts, gen, device=device)

    def write_history(self, history: list[dict]) -> None:
        """``epochs.csv`` (scalar columns only) and ``epochs.jsonl`` (everything: per-class accuracy,
        confusion), one row per epoch."""
        import pandas as pd

        flat = [{k: v for k, v in flatten(r, sep="_").items() if not isinstance(v, list)} for r in history]
        atomic_write_text(self.path / EPOCHS_CSV, pd.DataFrame(flat).to_csv(index=False))
        atomic_write_text(self.path / EPOCHS_JSONL, "".join(json.dumps(r) + "\n" for r in history))

    def write_model(self, weights: dict) -> None:
        """``model.pt``: the final weights (a state dict)."""
        import torch

        atomic_write(self.path / MODEL, lambda f: torch.save(weights, f), nbytes=nbytes_of(weights))

    def write_readout(self, arrays: dict) -> None:
        """``readout.npz``: the per-sample read-outs, deflated (committed with the evidence)."""
        atomic_savez(self.path / READOUT, compress=True, **arrays)

    def write_result(self, summary: dict, *, keep_checkpoint: bool = False) -> Result:
        """``result.json``, written last: ``summary`` with the integrity record ``files`` (the read-out's size,
        which :func:`find_problem` verifies); then the resume checkpoint is dropped unless ``keep_checkpoint``.
        Returns what was written."""
        result = {**summary, "files": {READOUT: (self.path / READOUT).stat().st_size}}
        write_json(self.path / RESULT, result)
        if not keep_checkpoint:
            (self.path / CHECKPOINT).unlink(missing_ok=True)
        return result

    def write_cross_eval(self, scores: dict) -> None:
        """``cross_eval.json``: ``{target key: scores}`` (:func:`ferlib.cross_eval.evaluate_run`)."""
        write_json(self.path / CROSS_EVAL, dict(sorted(scores.items())))


# ----------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, *, epoch: int, history: list[dict], parts: dict, gen) -> None:
    """Write the training state after ``epoch`` (the epochs done) to ``path``, atomically after a free-space
    check: the history so far, the state of each of ``parts`` (``{name: object with state_dict()}``: model,
    method, optimizer, scheduler ...) under its name, the generator ``gen`` of data order and augmentation, and
    torch's CPU and CUDA random states, so that resuming gives the uninterrupted run (torchvision's reference
    checkpoint holds no random state). The engine's and pretraining's checkpoints both go through this pair."""
    import torch

    state = {"epoch": epoch, "history": history, **{name: part.state_dict() for name, part in parts.items()},
             "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    atomic_write(path, lambda f: torch.save(state, f), nbytes=nbytes_of(state))


def load_checkpoint(path: str | os.PathLike, parts: dict, gen, *, device="cpu") -> tuple[int, list[dict]]:
    """Restore ``parts``, ``gen`` and the random states from the checkpoint at ``path`` (:func:`save_checkpoint`);
    returns (the epochs done, the history), ``(0, [])`` when there is no checkpoint at ``path``.

    Raises :class:`CorruptRunError` naming the file and the way out (``--no-resume``) when it cannot be read
    (truncated, or not a checkpoint).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        return 0, []
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated or not a checkpoint: name the file and the way out
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise CorruptRunError(path.parent, f"{path.name} cannot be read to resume ({type(exc).__name__}: {detail}); "
                                           "start this run afresh with --no-resume (resume=False), which replaces "
                                           "it") from exc
    for name, part in parts.items():
        part.load_state_dict(state[name])
    gen.set_state(state["gen"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    return state["epoch"], state["history"]


# ----------------------------------------------------------------------------------- finished runs
def find_problem(run_dir: str | os.PathLike) -> str | None:
    """None when ``run_dir`` holds a finished, intact run; otherwise one line saying why not (no
    ``result.json``: unfinished; or what is wrong with it: see :func:`read_result`)."""
    try:
        read_result(run_dir)
    except FileNotFoundError:
        return f"no {RESULT} (unfinished, or not a run folder)"
    except CorruptRunError as exc:
        return exc.reason
    return None


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` holds a finished, intact run (:func:`find_problem` finds nothing)."""
    return find_problem(run_dir) is None


def run_folders(root: str | os.PathLike) -> list[Path]:
    """Folders directly under ``root`` holding a ``result.json``, checked or not, sorted (hidden ones left
    out); [] for a missing folder."""
    return sorted(p.parent for p in Path(root).glob(f"*/{RESULT}") if not p.parent.name.startswith("."))


def finished_runs(root: str | os.PathLike) -> list[Path]:
    """Finished, intact run directories directly under ``root`` (:func:`find_problem`), sorted; [] for a missing
    folder (sub-folders such as ``ablations/`` and ``cleanlab/`` are runs folders of their own, not descended
    into). Corrupted ones are left out silently here: :func:`problems` lists them."""
    return [p for p in run_folders(root) if is_finished(p)]


def problems(root: str | os.PathLike, *, recursive: bool = False) -> dict[Path, str]:
    """``{run folder: reason}`` of the folders under ``root`` that hold a ``result.json`` failing
    :func:`find_problem` (unfinished folders without one are not problems). ``recursive`` also looks into runs
    folders nested under ``root`` (a study's ``ablations/`` and ``cleanlab/``)."""
    root = Path(root)
    folders = (sorted(p.parent for p in root.glob(f"**/{RESULT}") if not p.parent.name.startswith("."))
               if recursive else run_folders(root))
    found = {}
    for folder in folders:
        reason = find_problem(folder)
        if reason is not None:
            found[folder] = reason
    return found


def collect_results(runs_dir: str | os.PathLike):
    """One row per finished run directly under ``runs_dir``, as a pandas DataFrame.

    A folder whose ``result.json`` fails :func:`find_problem` (truncated, not JSON, missing keys, a read-out of
    another size than recorded) is skipped with a :class:`RunWarning` naming the folder and the reason: one
    corrupted run never hides the others (:func:`problems` lists them). The result's ``files`` (its integrity
    record) is not a column. Runs are collected from their own files, so an interrupted run can never corrupt
    another run's numbers.
    """
    import pandas as pd

    rows = []
    for path in run_folders(runs_dir):
        try:
            result = read_result(path)
        except (CorruptRunError, OSError) as exc:
            warnings.warn(f"skipped run {path}: {getattr(exc, 'reason', exc)}", RunWarning, stacklevel=2)
            continue
        rows.append({k: v for k, v in result.items() if k != "files"})
    return pd.DataFrame([{k: v for k, v in flatten(r).items() if not isinstance(v, list)} for r in rows])


def write_results(runs_dir: str | os.PathLike) -> Path:
    """Rebuild ``<runs_dir>/results.csv`` from the runs' own ``result.json`` files (:func:`collect_results`: one
    row per finished run directly under ``runs_dir``, all parameters), replaced atomically. The command or study
    that ran the experiments calls it once at its end, not each run."""
    return write_table(Path(runs_dir) / RESULTS_CSV, collect_results(runs_dir))


def read_result(run_dir: str | os.PathLike) -> Result:
    """``result.json`` of a finished run, checked.

    Raises
    ------
    FileNotFoundError
        No ``result.json``: the run has not finished (or this is not a run folder); the message names the folder.
    CorruptRunError
        It is not UTF-8 JSON holding an object, lacks a key of :data:`REQUIRED`, or a file its ``files`` record
        names is missing or has another size (a read-out of another generation, or truncated). The read-out of an
        ablation variant (``variant`` set) may be missing: no view reads it, and the results policy commits those
        cells' small files only (docs/results-policy.md); one that is present must have its recorded size.
    """
    run_dir = Path(run_dir)
    path = run_dir / RESULT
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {RESULT}; the run has not finished (or this is not a run folder)")
    try:
        result = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CorruptRunError(run_dir, f"{RESULT} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise CorruptRunError(run_dir, f"{RESULT} is not valid JSON ({exc}); truncated or overwritten") from None
    if not isinstance(result, dict):
        raise CorruptRunError(run_dir, f"{RESULT} holds a {type(result).__name__}, not an object")
    missing = [k for k in REQUIRED if k not in result]
    if missing:
        raise CorruptRunError(run_dir, f"{RESULT} lacks {', '.join(missing)}")
    if not isinstance(result["last"], dict):
        raise CorruptRunError(run_dir, f"{RESULT}: 'last' is a {type(result['last']).__name__}, not metrics")
    for name, size in (result.get("files") or {}).items():
        file = run_dir / name
        if not file.exists() and name == READOUT and result.get("variant"):
            continue
        if not file.is_file():
            raise CorruptRunError(run_dir, f"{name} is missing ({RESULT} records {size} bytes)")
        if file.stat().st_size != size:
            raise CorruptRunError(run_dir, f"{name} has {file.stat().st_size} bytes, {RESULT} records {size}: "
                                           "truncated, or not this result's file")
    return result


def read_config(run_dir: str | os.PathLike) -> dict:
    """``config.json`` of a run; ``{}`` when it has none (CorruptRunError naming it when it is not JSON)."""
    return _read_optional_json(run_dir, CONFIG)


def read_cross_eval(run_dir: str | os.PathLike) -> dict:
    """``cross_eval.json`` of a run: ``{target key: scores}`` (:func:`ferlib.cross_eval.evaluate_run`); ``{}``
    when it has none (CorruptRunError naming it when it is not JSON)."""
    return _read_optional_json(run_dir, CROSS_EVAL)


def _read_optional_json(run_dir: str | os.PathLike, name: str) -> dict:
    path = Path(run_dir) / name
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CorruptRunError(run_dir, f"{name} is not valid JSON ({exc})") from None


def read_readout(run_dir: str | os.PathLike) -> dict:
    """``readout.npz`` of a finished run as ``{name: array}``.

    Raises FileNotFoundError naming the folder when it is absent, CorruptRunError when it cannot be read (not
    a zip archive, a truncated member, a bad CRC)."""
    import zipfile

    import numpy as np

    path = Path(run_dir) / READOUT
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {READOUT}; the run has not finished (or this is not a run folder)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError, AttributeError, TypeError) as exc:
        raise CorruptRunError(run_dir, f"{READOUT} cannot be read ({type(exc).__name__}: {exc})") from None
