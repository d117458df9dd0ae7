"""The bench's JSON report (``reports/bench/<tag>-<date>.json``), its markdown table and the bench block of a page
(:data:`~ferlib.bench.BENCH_PAGE`, docs/bench.md)."""
from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
from pathlib import Path

import torch

from ..engine import cpu_native_bf16
from ..results import atomic_write_text, read_json, write_json
from . import README_MARKERS

__all__ = ["machine_info", "report_path", "write_report", "markdown_table", "rewrite_block", "update_readme"]


def machine_info() -> dict:
    """What ran the bench: host, CPU model (``/proc/cpuinfo``), cores, torch threads and version, whether the CPU
    computes bfloat16 natively, and the CUDA device's name (None without one)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return {"host": platform.node(), "cpu": model.group(1).strip() if model else platform.processor() or None,
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "cpu_native_bf16": cpu_native_bf16(),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def report_path(report: dict, folder: str | os.PathLike = "reports/bench") -> Path:
    """``<folder>/<tag>-<date>.json``: the tag names the CUDA device when one was measured, else the CPU model
    and its core count (``cpu-amd-epyc-2c``)."""
    machine = report["machine"]
    cuda = any(r["device"].startswith("cuda") for r in report["measurements"])
    tag = machine["cuda_device"] if cuda else f"cpu {machine['cpu'] or 'unknown'} {machine['cores']}c"
    slug = re.sub(r"[^a-z0-9]+", "-", tag.lower()).strip("-")
    return Path(folder) / f"{slug}-{report['date'][:10]}.json"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _with_ratio(record: dict, key: str, fmt: str, scale: float = 1.0) -> str:
    value, ratio = record["metrics"][key], record["ratio_to_ce"][key]
    return f"{_num(None if value is None else value * scale, fmt)} ({_num(ratio, '.2f')})"


def markdown_table(report: dict, *, source: str | os.PathLike | None = None) -> str:
    """The report as markdown: a paragraph saying what was measured where (the command, its note's text shown once,
    after it; ``source``, the JSON file), then one table row per measurement (ratios to ``ce`` in brackets)."""
    m, s, note = report["machine"], report["settings"], report.get("note")
    command = report["command"].replace(shlex.quote(note), "<the note below>") if note else report["command"]
    cuda = f", {m['cuda_device']}" if m["cuda_device"] else ""
    lines = [
        f"`{command}`",
        f"on {m['cpu']} ({m['cores']} cores, {m['threads']} torch threads, native bf16: "
        f"{'yes' if m['cpu_native_bf16'] else 'no'}{cuda}), torch {m['torch']}, {report['date'][:10]}:",
        f"{s['backbone']['name']} {s['backbone']['model_kwargs'] or ''}, {s['image_size']} px, batch "
        f"{s['batch_size']}, {s['data']} data, {s['warmup']} warm-up + {s['steps']} measured steps"
        + (f"; JSON: `{Path(source).as_posix()}`." if source else "."),
        "In brackets: the figure over ce's on the same device under the same settings (throughput below 1: slower "
        "than ce).",
        *([note] if note else []),
        "",
        "| method | device | autocast | channels-last | compile | train img/s (x ce) | step ms: data / forward / "
        "backward / overhead | peak MiB (x ce) | inference img/s (x ce) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["measurements"]:
        p = r["precision"]
        head = (f"| {r['method']} | {r['device']} | {p['autocast']} | {'on' if p['channels_last'] else 'off'} | "
                f"{'on' if p['compile'] else 'off'} |")
        if "error" not in r:
            x = r["metrics"]
            split = " / ".join(_num(x[k] * 1e3, ".1f") for k in ("data_s", "forward_s", "backward_s", "overhead_s"))
            lines.append(f"{head} {_with_ratio(r, 'train_images_per_s', '.0f')} | {split} | "
                         f"{_with_ratio(r, 'peak_memory_bytes', '.1f', 2 ** -20)} | "
                         f"{_with_ratio(r, 'infer_images_per_s', '.0f')} |")
        else:
            lines.append(f"{head} failed: {r['error'].replace('|', '/')} | | | |")
    return "\n".join(lines) + "\n"


def rewrite_block(text: str, block: str) -> str:
    """``text`` with the lines between the :data:`README_MARKERS` replaced by ``block``; raises ValueError
    when a marker is missing."""
    start, end = README_MARKERS
    head, found_start, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if not (found_start and found_end):
        raise ValueError(f"no bench block: the text needs a line {start} and, after it, a line {end}")
    return f"{head}{start}\n{block.strip()}\n{end}{tail}"


def update_readme(readme: str | os.PathLike, report_file: str | os.PathLike) -> Path:
    """Rewrite the bench block of ``readme`` with the table of the JSON report ``report_file`` (atomically)."""
    text = rewrite_block(Path(readme).read_text(), markdown_table(read_json(report_file), source=report_file))
    return atomic_write_text(readme, text)


def write_report(report: dict, folder: str | os.PathLike = "reports/bench") -> Path:
    """Add the machine and the date to ``report`` and write it to :func:`report_path` (atomically)."""
    report.update(machine=machine_info(), date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    path = report_path(report, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
    return path
