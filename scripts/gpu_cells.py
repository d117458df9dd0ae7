"""Train a study profile's cells as ``python -m ferlib train`` processes, several at once on one machine, until a
time budget is spent; every run resumable. What scripts/gpu_check.sh trains on a lent GPU, where the study
runner's notebooks (papermill) are not installed.

    python scripts/gpu_cells.py --profile cpu_memorise_full --data /tmp/ferlib-gpu/ferplus --runs runs/gpu \
        --set seeds=[0,1,2] --set train.image_size=96 --set train.device=cuda --at-once 8 --budget-s 480

``--set KEY=VALUE`` overrides the profile as ``load_profile`` does (``train.image_size=96`` merges into its
``train``; ``seeds``, ``methods`` and ``noise`` set the grid's; values are JSON, else text). The cells are the
profile's (:meth:`ferlib.study.StudySpec.cells`: grid first, seed-major, then the clean control and the others),
each turned into its train command by :func:`ferlib.cli.train_argv` (a cell the command cannot express, such as
an ablation variant, is refused before anything starts); finished ones are skipped. At most ``--at-once`` run
at a time, each with ``OMP_NUM_THREADS`` = cores // at-once and its output in ``<runs>/logs/<run_id>.log``.
When the budget is spent no cell starts, and the running ones get SIGINT: the train command stops in one line,
keeping its last epoch's checkpoint (rerunning this command resumes them), and SIGKILL after ``--grace-s``.
One line per cell as it ends, a summary, and ``<runs>/gpu_cells.json`` (each cell's status and seconds);
exit status 0 unless a cell failed (a cell stopped by the budget is no failure).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferlib import rundir  # noqa: E402
from ferlib.results import write_json  # noqa: E402

RECORD = "gpu_cells.json"


def overrides(pairs: list[str]) -> dict:
    """``["train.image_size=96", "seeds=[0,1,2]"]`` -> ``{"train": {"image_size": 96}, "seeds": [0, 1, 2]}``."""
    from ferlib.options import parse_literal

    out: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE or KEY.FIELD=VALUE, got {pair!r}")
        head, _, field = key.partition(".")
        if field:
            out.setdefault(head, {})[field] = parse_literal(text)
        else:
            out[head] = parse_literal(text)
    return out


def cell_commands(spec, runs: Path) -> list[tuple[str, str, list[str]]]:
    """``(kind, run_id, train command)`` of every cell of ``spec`` written under ``runs``."""
    from ferlib.cli import train_argv
    from ferlib.experiment import run_id

    return [(kind, run_id(s), [sys.executable, "-m", "ferlib", "train", *train_argv(s)])
            for kind, s in spec.cells(runs)]


def run_cells(cells: list, runs: Path, *, at_once: int, deadline: float, grace_s: float, log=print) -> list[dict]:
    """Run the unfinished ``cells`` (:func:`cell_commands`), at most ``at_once`` at a time, none started after
    ``deadline`` (``time.monotonic()``), the running ones interrupted then; one status dict per cell."""
    threads = max(1, (os.cpu_count() or 1) // at_once)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    (runs / "logs").mkdir(parents=True, exist_ok=True)
    status = {rid: {"kind": kind, "run_id": rid, "status": "finished before", "seconds": 0.0}
              for kind, rid, _ in cells}
    todo = [(rid, cmd) for _, rid, cmd in cells if not rundir.is_finished(runs / rid)]
    for rid, _ in todo:
        status[rid]["status"] = "not started"
    log(f"cells: {len(cells)}, {len(cells) - len(todo)} finished before, {len(todo)} to run, {at_once} at once, "
        f"{threads} thread(s) each")
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    while todo or running:
        while todo and len(running) < at_once and time.monotonic() < deadline:
            rid, cmd = todo.pop(0)
            with open(runs / "logs" / f"{rid}.log", "w") as out:
                running[rid] = (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT),
                                time.monotonic())
        for rid, (proc, start) in list(running.items()):
            if proc.poll() is not None:
                del running[rid]
                _ended(status[rid], proc.returncode, time.monotonic() - start, runs, log)
        if time.monotonic() >= deadline and running:
            _interrupt(running, status, grace_s, runs, log)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return [status[rid] for _, rid, _ in cells]


def _ended(record: dict, returncode: int, seconds: float, runs: Path, log) -> None:
    record["seconds"] = round(seconds, 1)
    finished = returncode == 0 and rundir.is_finished(runs / record["run_id"])
    record["status"] = "done" if finished else "failed"
    line = "" if finished else f" (exit {returncode}; {_last_line(runs / 'logs' / (record['run_id'] + '.log'))})"
    log(f"{record['run_id']} ... {record['status']} in {seconds:.0f}s{line}")


def _interrupt(running: dict, status: dict, grace_s: float, runs: Path, log) -> None:
    """SIGINT to every running cell, SIGKILL to those still running after ``grace_s``; all marked interrupted."""
    log(f"budget spent: interrupting {len(running)} running cell(s) (resumable from their last checkpoint)")
    for proc, _ in running.values():
        proc.send_signal(signal.SIGINT)
    end = time.monotonic() + grace_s
    for rid, (proc, start) in running.items():
        try:
            proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        status[rid].update(status="interrupted", seconds=round(time.monotonic() - start, 1))
        if rundir.is_finished(runs / rid):  # it finished as the signal came
            status[rid]["status"] = "done"
    running.clear()


def _last_line(path: Path) -> str:
    lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()] if path.is_file() else []
    return lines[-1][-200:] if lines else "no output"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True, help="study profile (python -m ferlib study --help lists them)")
    parser.add_argument("--data", required=True, help="dataset root of the cells")
    parser.add_argument("--runs", required=True, help="folder of the run folders")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="profile override")
    parser.add_argument("--at-once", type=int, default=4, help="cells running at a time (default: 4)")
    parser.add_argument("--budget-s", type=float, required=True, help="seconds after which no cell starts and the "
                                                                      "running ones are interrupted")
    parser.add_argument("--grace-s", type=float, default=20.0, help="seconds an interrupted cell has to stop")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    runs = Path(args.runs).absolute()
    try:
        from ferlib.study import load_profile

        if args.at_once < 1:
            raise ValueError(f"--at-once must be >= 1, got {args.at_once}")
        spec = load_profile(args.profile, data=args.data, **overrides(args.set))
        cells = cell_commands(spec, runs)
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(spec.describe(), flush=True)
    t0 = time.monotonic()
    status = run_cells(cells, runs, at_once=args.at_once, deadline=deadline, grace_s=args.grace_s,
                       log=lambda line: print(line, flush=True))
    counts = {s: sum(r["status"] == s for r in status) for s in dict.fromkeys(r["status"] for r in status)}
    write_json(runs / RECORD, {"profile": args.profile, "set": args.set, "at_once": args.at_once,
                               "budget_s": args.budget_s, "wall_s": round(time.monotonic() - t0, 1),
                               "counts": counts, "cells": status})
    print(f"summary after {time.monotonic() - t0:.0f}s: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if any(r["status"] == "done" for r in status):
        rundir.write_results(runs)
    return 1 if counts.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
