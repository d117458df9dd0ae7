"""``python -m ferlib bench``: what each registered method costs through the one engine, next to ``ce``.
The measuring is in :mod:`ferlib.bench.measure`, the report in :mod:`ferlib.bench.report`, the data in
:mod:`ferlib.bench.synthetic`, a grid's cost from a report in :mod:`ferlib.bench.estimate`; importing this
package (the command line's parser does) loads none of them.

    python -m ferlib bench                                  # every method, every available device
    python -m ferlib bench --methods nla ldlva:neighbours=bank --devices cpu --warmup 3 --steps 15
    python -m ferlib bench --readme reports/bench/<file>.json   # rewrite docs/bench.md's table from a report
    python -m ferlib study --profile full --estimate reports/bench/<file>.json   # the grid's hours there

For each method (``ce`` always, as the baseline), device and option setting ({amp} x {channels-last} x
{compile}, :func:`~ferlib.bench.measure.option_grid`), after ``--warmup`` steps, on batches of synthetic uint8
images with human votes (:func:`~ferlib.bench.synthetic.synthetic_data`) or of a FERPlus train split (``--data``):

- **training throughput** (images/s) and **step time**: the median of ``--steps`` engine steps, each
  :func:`ferlib.engine.train_one_epoch` over one batch timed whole (the engine's own loop, its per-step loss
  check and logging included; steady state: the warm-up ran first);
- the **step split**, medians over as many steps timed phase by phase (the device synchronised at each boundary),
  alternating with the engine steps so that both see the same load on the machine: *data*
  (:func:`ferlib.engine.make_batch`: indexing, augmentation, device copy), *forward* (the method's
  ``training_step`` under the run's autocast: the model forward(s) and the method's loss), *backward* (backward,
  optimiser step and the method's ``after_step``), and the *method overhead*: forward minus a plain ``model(x)``
  forward of the same batch under the same autocast, with gradients on, in train mode (what the method adds to
  the model's own forward; ~0 for ``ce``). data + forward + backward is about the step time, less the engine's
  per-step bookkeeping (the loss check, the schedule, the logged terms). Medians, not means, so that the stalls
  of a busy machine do not decide the figures;
- **peak memory** over the measured steps: CUDA ``torch.cuda.max_memory_allocated`` after a
  reset (everything allocated: model, optimiser state, activations); CPU (Linux) the process's RSS high-water
  mark ``VmHWM`` above the RSS at the start (what the steps add: activations and gradients), after returning
  the C heap's freed pages to the system (glibc ``malloc_trim``) and resetting the mark (writing ``5`` to
  ``/proc/self/clear_refs``); None where ``/proc`` does not allow it;
- **inference throughput**: ``eval_batch_size`` (512) images over the median time of ``steps // 5`` (at least
  one) :func:`ferlib.engine.predict` calls on them after a warm-up call (the same plain model for every method,
  so its ratio to ce is ~1 by the method contract);
- each as a **ratio to ce** on the same device under the same options, in the same process with the same
  backbone, batch and input size (``ratio_to_ce``; ce's own is 1.0). The training throughput and step-time
  ratios are **paired**: after its measurement, each method takes ``--steps`` more engine steps in turn with a
  ``ce`` model built alike, on the same batches (``paired_step_s``, ``paired_ce_step_s``), so that both see the
  same load even on a machine whose load drifts between one measurement and the next.

Each measurement records :func:`ferlib.engine.resolve_precision` (what was used: bf16 autocast only where the
device computes it natively). ``bind`` (kNN graphs, banks) runs once per run and is not timed; a source file a
method reads (LA-Net's landmarks, LDLVA's aux) is a stub unless given in its options, so no detector runs.
The JSON goes to ``reports/bench/<tag>-<date>.json`` (:func:`~ferlib.bench.report.report_path`, the machine
described) and the table is printed. Absolute figures depend on what else runs on the machine (``--note``
records it); the ratios to ce, measured side by side, much less.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["add_bench_arguments", "bench_main", "BASELINE", "GRIDS", "README_MARKERS", "BENCH_PAGE",
           "BACKBONE_PROFILE"]

#: The method every other is compared with, measured in the same process.
BASELINE = "ce"
#: Which option combinations :func:`~ferlib.bench.measure.option_grid` gives (``--options``).
GRIDS = ("auto", "all", "default")
#: The lines around the bench block of :data:`BENCH_PAGE`, which :func:`~ferlib.bench.report.update_readme` replaces.
README_MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")
#: The page whose bench block ``--readme`` rewrites by default (``--readme-file``), relative to the repository root.
BENCH_PAGE = "docs/bench.md"
#: The study profile whose backbone the bench uses by default (a half-width ResNet-18).
BACKBONE_PROFILE = "cpu_full"


def add_bench_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``bench`` options to ``parser`` (a subparser of ``python -m ferlib``)."""
    parser.add_argument("--methods", nargs="+", default=None, metavar="NAME[:KEY=VALUE,...]",
                        help="methods to measure, each with options typed from its config, e.g. ldlva:neighbours=bank "
                             f"(default: every registered method; {BASELINE} is always measured, as the baseline)")
    parser.add_argument("--devices", nargs="+", default=None, choices=("cpu", "cuda"),
                        help="default: cpu, and cuda when available")
    parser.add_argument("--options", default="auto", choices=GRIDS,
                        help="the amp x channels-last x compile settings: all = every combination for every "
                             "method; default = TrainConfig's defaults only; auto = all on CUDA, and on CPU all for "
                             f"{BASELINE}, the defaults and the defaults with amp off for the others")
    parser.add_argument("--data", default=None, help="a FERPlus root whose train images to use (default: "
                                                     "synthetic images)")
    parser.add_argument("--backbone", default=None, help=f"timm model name (default: the {BACKBONE_PROFILE} "
                                                         "profile's half-width ResNet-18)")
    parser.add_argument("--backbone-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="backbone option (repeatable), as for train; with --backbone, these replace the "
                             "profile's backbone together")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=48, help="side in pixels the network sees")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured steps first (>= 1)")
    parser.add_argument("--steps", type=int, default=30, help="measured steps (>= 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="reports/bench", help="folder of the JSON report")
    parser.add_argument("--note", default=None, help="a sentence stored with the report and shown under its table, "
                                                     "e.g. what else ran on the machine")
    parser.add_argument("--readme", default=None, metavar="REPORT_JSON",
                        help="measure nothing: rewrite the bench block of --readme-file from this JSON report")
    parser.add_argument("--readme-file", default=BENCH_PAGE,
                        help=f"file whose lines between {README_MARKERS[0]} and {README_MARKERS[1]} --readme "
                             "replaces")
    return parser


def bench_main(args: argparse.Namespace) -> int:
    """Run the bench the parsed ``args`` describe: write the JSON report, print its table."""
    import shlex

    import torch

    from ..backbones import BackboneConfig
    from ..backbones import backbone_options
    from ..engine import resolve_device
    from ..methods import list_methods
    from .measure import run_bench
    from .report import markdown_table, update_readme, write_report

    if args.readme:
        print(f"rewrote the bench block of {update_readme(args.readme_file, args.readme)} from {args.readme}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [resolve_device(d) for d in args.devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]]
    if args.backbone is None and not args.backbone_opt:
        from ..study.spec import load_profile

        backbone = BackboneConfig(**load_profile(BACKBONE_PROFILE).backbone)
    else:
        fields, kwargs = backbone_options(args.backbone_opt)
        backbone = BackboneConfig(name=args.backbone or BackboneConfig.name, model_kwargs=kwargs, **fields)
    report = {"command": shlex.join(["python", "-m", "ferlib", *sys.argv[1:]]), "note": args.note,
              **run_bench(args.methods or list_methods(), devices, grid=args.options, data=args.data,
                          backbone=backbone, batch_size=args.batch_size, image_size=args.image_size,
                          warmup=args.warmup, steps=args.steps)}
    path = write_report(report, args.out)
    print(markdown_table(report, source=path))
    return 0
