"""What a study grid costs on a machine, from a bench report: per cell, its epochs x (train images / the method's
measured training throughput + evaluated images / the measured inference throughput), summed over the grid
(``python -m ferlib study --profile P --estimate reports/bench/<file>.json``). An extrapolation from measured
steady-state throughput: start-up, data loading and checkpoints are left out, so it is a lower bound on wall time.
"""
from __future__ import annotations

import torch

from ..engine import resolve_precision
from .measure import parse_methods

__all__ = ["cell_seconds", "grid_estimate", "format_estimate"]


def cell_seconds(epochs: int, n_train: int, n_eval: int, n_final: int, train_img_s: float,
                 infer_img_s: float) -> float:
    """Seconds of one cell: ``epochs`` x (``n_train`` / train_img_s + ``n_eval`` / infer_img_s) + ``n_final`` /
    infer_img_s (the read-out's predictions after the last epoch).

    n_train : train images per epoch; n_eval : images evaluated per epoch (valid + test); n_final : images
    predicted once at the end (train + test); throughputs in images per second."""
    return epochs * (n_train / train_img_s + n_eval / infer_img_s) + n_final / infer_img_s


def _record(report: dict, options_of: dict[str, dict], method: str, options: dict, cfg,
            device: str) -> tuple[dict | None, bool]:
    """The bench record of ``method`` measured on ``device`` under the precision ``cfg`` computes in there: the
    one measured with the cell's method options (a ``NAME:KEY=VALUE`` label), else the one with its defaults;
    and whether it is the former. ``options_of``: each record label's typed options."""
    want = resolve_precision(cfg, torch.device(device))  # a record also holds the CPU's bf16 probe: not compared
    found = [r for r in report["measurements"] if "metrics" in r and r["device"] == device
             and {k: r["precision"].get(k) for k in want} == want and r["method"].partition(":")[0] == method]
    exact = [r for r in found if options_of[r["method"]] == dict(options)]
    plain = [r for r in found if r["method"] == method]
    return (exact or plain or [None])[0], bool(exact)


def _check_settings(report: dict, run) -> None:
    """Refuse a report measured on another model, batch or input size than the cell ``run`` (a RunSpec) trains."""
    s = report["settings"]
    ours = {"backbone": run.backbone.name, "model_kwargs": run.backbone.model_kwargs or {},
            "batch_size": run.train.batch_size, "image_size": run.train.image_size}
    theirs = {"backbone": s["backbone"]["name"], "model_kwargs": s["backbone"].get("model_kwargs") or {},
              "batch_size": s["batch_size"], "image_size": s["image_size"]}
    if ours != theirs:
        raise ValueError(f"the bench report measured {theirs}, the study trains {ours}: run the bench with "
                         "--backbone/--backbone-opt/--batch-size/--image-size as the profile's")


def grid_estimate(cells: list, report: dict, *, sizes: dict[str, int], device: str | None = None) -> dict:
    """The cost of ``cells`` (:meth:`ferlib.study.StudySpec.cells`) on the machine of ``report``.

    Parameters
    ----------
    cells : ``[(kind, RunSpec), ...]``; each cell's backbone, batch and image size must be the report's.
    report : a ``python -m ferlib bench`` JSON (``reports/bench/``).
    sizes : ``{"train", "valid", "test"}`` image counts of the study's data (after ``train_subset``); a fold cell
        trains on (k - 1) / k of the train split and predicts the other k-th as its test.
    device : ``cpu`` | ``cuda``; default the report's first device (``cpu`` for an empty report).

    Returns
    -------
    ``{"device", "threads", "rows": [{kind, method, cells, epochs, train_img_s, infer_img_s, seconds}],
    "missing": [method, ...] (not measured under the cells' settings: left out), "seconds": total}``. A row's
    method says when the cells' method options were not measured and the defaults' figure stands in.
    """
    device = device or next((r["device"] for r in report["measurements"]), "cpu")
    options_of = {r["method"]: parse_methods([r["method"]])[-1][2] for r in report["measurements"]}
    rows: dict[tuple, dict] = {}
    missing = []
    for kind, run in cells:
        _check_settings(report, run)
        record, exact = _record(report, options_of, run.method, run.method_options, run.train, device)
        if record is None:
            missing.append(run.method)
            continue
        n_train, n_test = sizes["train"], sizes["test"]
        if run.fold is not None:
            n_test = n_train // run.fold[1]
            n_train -= n_test
        x = record["metrics"]
        seconds = cell_seconds(run.train.epochs, n_train, sizes["valid"] + n_test, n_train + n_test,
                               x["train_images_per_s"], x["infer_images_per_s"])
        label = record["method"] + ("" if exact else " (its options not measured: the defaults' figure)")
        row = rows.setdefault((kind, label, run.train.epochs), {
            "kind": kind, "method": label, "cells": 0, "epochs": run.train.epochs,
            "train_img_s": x["train_images_per_s"], "infer_img_s": x["infer_images_per_s"], "seconds": 0.0})
        row["cells"] += 1
        row["seconds"] += seconds
    out = list(rows.values())
    return {"device": device, "threads": report["settings"].get("threads"), "rows": out,
            "missing": sorted(set(missing)),
            "seconds": sum(r["seconds"] for r in out)}


def format_estimate(estimate: dict, sizes: dict[str, int]) -> str:
    """The estimate as lines of text, each row with its arithmetic."""
    lines = [f"on {estimate['device']} ({estimate['threads']} torch threads), train / valid / test images "
             f"{sizes['train']} / {sizes['valid']} / {sizes['test']} (steady-state throughput from the bench; "
             "start-up and I/O not counted):"]
    for r in estimate["rows"]:
        lines.append(f"  {r['kind']:8s} {r['method']:24s} {r['cells']:3d} cells x {r['epochs']} epochs at "
                     f"{r['train_img_s']:.0f} train / {r['infer_img_s']:.0f} inference img/s = "
                     f"{r['seconds'] / 3600:.2f} h")
    if estimate["missing"]:
        lines.append(f"  not measured under these settings (left out): {', '.join(estimate['missing'])}")
    lines.append(f"total: {estimate['seconds'] / 3600:.2f} h")
    return "\n".join(lines)
