"""Command line: ``python -m ferlib {train,pretrain,evaluate,study,results,methods,datasets,bench} ...``
(``--help`` on each).

Bad input (a setting, a path, a file's content) is reported in one line naming it, with exit status 2; the
traceback only with ``--debug``. Ctrl-C is one line too, with exit status 130. Any other exception is a bug and
keeps its traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .backbones import BackboneConfig, WeightsError, backbone_options
from .engine import TrainConfig
from .metrics import NonFiniteLossError
from .noise import protocol_help

__all__ = ["main", "build_parser", "spec_from_args", "train_argv", "USER_ERRORS"]

#: Exceptions that mean bad input: ValueError and TypeError (settings; also a file's undecodable content),
#: OSError (missing, unreadable or unwritable paths, a full disk), WeightsError (a weights file that does not fit),
#: NonFiniteLossError (a diverged training: the settings' learning rate or precision).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, WeightsError, NonFiniteLossError)


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` flag per scalar field of a config dataclass, typed and defaulted from it."""
    for f in dataclasses.fields(cls):
        if f.name in skip or not isinstance(f.default, (int, float, str, bool, type(None))):
            continue
        flag, doc = "--" + f.name.replace("_", "-"), f"{cls.__name__}.{f.name}"  # the formatter adds the default
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=doc)
        else:
            typ = type(f.default) if f.default is not None else str
            parser.add_argument(flag, type=typ, default=f.default, metavar=typ.__name__.upper(), help=doc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ferlib", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train one method on one dataset / noise setting", parents=[common],
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_arguments(tr)
    tr.add_argument("--noise", default="none", help=f"noise spec, steps joined with '+': {protocol_help()}")
    tr.add_argument("--train-subset", type=int, default=None, help="stratified number of train images")
    tr.add_argument("--method", default="ce", help="method name (python -m ferlib methods)")
    tr.add_argument("--method-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="method config override (repeatable), e.g. label_smoothing=0.1")
    tr.add_argument("--recipe", default="shared", choices=("shared", "paper"),
                    help="shared: the train settings below, one budget for every method; paper: the method's "
                         "official recipe (ferlib.recipes) replaces the settings it names (optimiser, lr, "
                         "schedule, batch size, epochs, weight decay, augmentation)")
    tr.add_argument("--noise-seed", type=int, default=None,
                    help="seed of the noise draw (default: --seed), to vary training with the labels held fixed")
    tr.add_argument("--fold", type=_fold, default=None, metavar="I/K",
                    help="a cross-fitting cell: train on the other folds of K (stratified by given label, seeded by "
                         "--seed) and predict fold I as the test split (cleanlab's out-of-sample input)")
    _add_backbone_arguments(tr)
    tr.add_argument("--augment-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="augmentation option of ferlib.augment.AugmentConfig (repeatable), e.g. erase=0")
    tr.add_argument("--weights", default=None,
                    help="local pretrained weights file (state dict), or 'ssl': the self-supervised checkpoint "
                         "of this dataset's train images and this backbone (python -m ferlib pretrain)")
    tr.add_argument("--pretrain-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="with --weights ssl: the pretraining config whose checkpoint to use, as the overrides "
                         "given to pretrain (repeatable; ferlib.pretrain.PretrainConfig), e.g. method=byol")
    tr.add_argument("--out", default="runs", help="parent folder of run directories (its results.csv is rebuilt "
                                                  "after the run)")
    tr.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint of this run")
    _add_dataclass_flags(tr, TrainConfig, skip=("augment", "milestones"))
    tr.add_argument("--milestones", type=int, nargs="*", default=[], metavar="EPOCH",
                    help="epochs at which the multistep schedule multiplies the lr by --gamma")
    _add_eval_data(tr, required=False, then=" once the run has finished")
    _add_pretrain_parser(sub, common)
    ev = sub.add_parser("evaluate", parents=[common], help="score finished runs on other datasets over the classes "
                                                           "they share, without training (cross_eval.json)")
    ev.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run folder(s)")
    ev.add_argument("--device", default=None, help="torch device (default: the run's train.device setting)")
    _add_eval_data(ev, required=True)
    from .study.runner import add_study_arguments

    add_study_arguments(sub.add_parser("study", parents=[common], help="run a study: a grid of runs through the "
                                                                      "notebooks, rendered to an HTML report"))
    sub.add_parser("methods", parents=[common], help="list the registered methods and their default options")
    sub.add_parser("datasets", parents=[common], help="list the dataset readers")
    res = sub.add_parser("results", parents=[common],
                         help="collect the result.json of every run under a folder into one table")
    res.add_argument("runs", help="folder holding run directories")
    res.add_argument("--out", default=None, help="write the table to this CSV (atomically)")
    from .bench import add_bench_arguments

    add_bench_arguments(sub.add_parser("bench", parents=[common], help="training and inference speed and memory of "
                                                                      "each method next to ce, per device and "
                                                                      "precision/layout/compile setting"))
    return parser


def _add_eval_data(parser: argparse.ArgumentParser, *, required: bool, then: str = "") -> None:
    from .cross_eval import TARGET_SYNTAX

    parser.add_argument("--eval-data", action="append", default=[], required=required,
                        metavar="READER:PATH[:K=V,...]",
                        help=f"score the run{then} on this dataset (repeatable): {TARGET_SYNTAX}, e.g. "
                             "ferplus:../shared/data/ferplus:mode=majority or folder:exports/no_neutral; "
                             "predictions are restricted to the classes both share (ferlib.cross_eval)")


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset root folder (e.g. ../shared/data/ferplus)")
    parser.add_argument("--dataset", default="ferplus", help="reader name (python -m ferlib datasets)")
    parser.add_argument("--mode", default=None, help="FERPlus label mode: plurality (default) or majority")
    parser.add_argument("--classes", type=int, default=None, help="7 or 8 (default: the reader's)")
    parser.add_argument("--dataset-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="reader option (repeatable), typed from the reader's signature, e.g. image_size=64")


def _add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default=BackboneConfig.name, help="timm model name")
    parser.add_argument("--backbone-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="backbone option (repeatable): a BackboneConfig field (drop_rate, typed), else a "
                             "timm.create_model keyword (JSON values), e.g. channels=[32,64,128,256] stem_width=32 "
                             "(half-width ResNet-18)")
    parser.add_argument("--small-input", action=argparse.BooleanOptionalAction, default=False,
                        help="drop the ResNet stem max-pool (better for 48 px faces, ~4x compute)")


def _add_pretrain_parser(sub, common: argparse.ArgumentParser) -> None:
    from .pretrain import PretrainConfig

    pre = sub.add_parser("pretrain", parents=[common], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         help="self-supervised pretraining of a backbone on the train split's images (labels "
                              "never read), cached; the checkpoint of train --weights ssl")
    _add_data_arguments(pre)
    _add_backbone_arguments(pre)
    _add_dataclass_flags(pre, PretrainConfig, skip=("temperature",))
    pre.add_argument("--temperature", type=float, default=None,
                     help="NT-Xent / InfoNCE temperature (default: the method's, SimCLR 0.5, MoCo v2 0.2)")
    pre.add_argument("--view-opt", action="append", default=[], metavar="KEY=VALUE",
                     help="view option of ferlib.pretrain.ViewConfig (repeatable), e.g. scale=[0.3,1] blur=0")
    pre.add_argument("--no-resume", action="store_true",
                     help="pretrain from the start, replacing a cached or partial checkpoint of these settings")
    pre.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                     help="report linear-probe and k-NN accuracy on the clean labels of valid and test")


def spec_from_args(args: argparse.Namespace):
    """Turn parsed ``train`` arguments into a :class:`ferlib.experiment.RunSpec`."""
    from .augment import AugmentConfig
    from .experiment import RunSpec
    from .methods import parse_overrides
    from .options import parse_options
    from .pretrain import PretrainConfig

    train = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                           if f.name != "augment"}, augment=parse_options(AugmentConfig, args.augment_opt,
                                                                  where="--augment-opt"))
    return RunSpec(data=args.data, dataset=args.dataset, dataset_options=_dataset_options(args), noise=args.noise,
                   train_subset=args.train_subset, method=args.method,
                   method_options=parse_overrides(args.method, args.method_opt),
                   recipe=args.recipe, noise_seed=args.noise_seed, backbone=_backbone_config(args, args.weights),
                   train=train, pretrain=parse_options(PretrainConfig, args.pretrain_opt, where="--pretrain-opt"),
                   fold=args.fold, out=args.out)


def train_argv(spec) -> list[str]:
    """The ``python -m ferlib train`` arguments of a :class:`ferlib.experiment.RunSpec` (the inverse of
    :func:`spec_from_args`), so a cell of a study can be run as a command; no data are read.

    Raises
    ------
    ValueError naming the fields the command line cannot set (``variant``, ``valid_fraction``), checked by parsing
    the arguments back."""
    from .augment import AugmentConfig

    backbone, train = spec.backbone, spec.train
    argv = ["--data", str(spec.data), "--dataset", spec.dataset, "--noise", spec.noise, "--method", spec.method,
            "--recipe", spec.recipe, "--backbone", backbone.name, "--out", str(spec.out),
            "--small-input" if backbone.small_input else "--no-small-input"]
    for flag, value in (("--train-subset", spec.train_subset), ("--noise-seed", spec.noise_seed),
                        ("--weights", backbone.weights), ("--fold", spec.fold and "/".join(map(str, spec.fold)))):
        argv += [flag, str(value)] if value is not None else []
    for flag, options in (("--dataset-opt", spec.dataset_options), ("--method-opt", spec.method_options),
                          ("--pretrain-opt", spec.pretrain), ("--backbone-opt", backbone.model_kwargs),
                          ("--backbone-opt", {"drop_rate": backbone.drop_rate}),
                          ("--augment-opt", dataclasses.asdict(train.augment))):
        argv += [a for k, v in options.items() for a in (flag, f"{k}={_option_text(v)}")]
    for f in dataclasses.fields(TrainConfig):
        value, flag = getattr(train, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif f.name == "milestones":
            argv += [flag, *map(str, value)]
        elif not isinstance(value, AugmentConfig):
            argv += [flag, str(value)]
    back = spec_from_args(build_parser().parse_args(["train", *argv]))
    differ = [k for k, v in dataclasses.asdict(spec).items() if dataclasses.asdict(back)[k] != v]
    if differ:
        raise ValueError(f"python -m ferlib train cannot set {', '.join(differ)} of this run spec "
                         f"({', '.join(f'{k}={getattr(spec, k)!r}' for k in differ)})")
    return argv


def _option_text(value) -> str:
    """A ``KEY=VALUE`` option's value as :func:`ferlib.options.parse_value` reads it back."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "none"
    return json.dumps(list(value) if isinstance(value, tuple) else value) if isinstance(value, (list, tuple, dict)) \
        else str(value)


def _fold(text: str) -> list[int]:
    """``--fold I/K`` as RunSpec's ``[i, k]``."""
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fold takes I/K (e.g. 0/2), got {text!r}") from None
    return [i, k]


def _dataset_options(args: argparse.Namespace) -> dict:
    """The reader options of ``--mode``, ``--classes`` and ``--dataset-opt`` (the reader's defaults otherwise)."""
    from .data import dataset_reader
    from .options import parse_options

    options = {}
    if args.mode is not None:
        options["mode"] = args.mode
    if args.classes is not None:
        options["num_classes"] = args.classes
    options.update(parse_options(dataset_reader(args.dataset), args.dataset_opt,
                                 where=f"--dataset-opt (dataset {args.dataset!r})"))
    return options


def _backbone_config(args: argparse.Namespace, weights: str | None = None) -> BackboneConfig:
    fields, model_kwargs = backbone_options(args.backbone_opt)
    return BackboneConfig(name=args.backbone, weights=weights, small_input=args.small_input,
                          model_kwargs=model_kwargs, **fields)


def _pretrain(args: argparse.Namespace) -> int:
    """``python -m ferlib pretrain``: pretrain (or find cached) and print the checkpoint and its scores."""
    from .options import parse_options
    from .pretrain import PretrainConfig, ViewConfig, pretrain

    config = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)
                               if f.name != "views"},
                            views=parse_options(ViewConfig, args.view_opt, where="--view-opt"))
    result = pretrain(args.data, dataset=args.dataset, dataset_options=_dataset_options(args),
                      backbone=_backbone_config(args), config=config, resume=not args.no_resume, evaluate=args.eval)
    print(json.dumps({k: result.get(k) for k in ("key", "weights", "epochs", "train_time_s", "loss_first",
                                                 "loss_last", "evaluation")}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        text = str(exc).strip() or type(exc).__name__
        print(f"error: {text.splitlines()[0]} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: runs, pretraining and studies resume from what they saved
        if args.debug:
            raise
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "methods":
        from .methods import list_methods, method_class

        for name in list_methods():
            cls = method_class(name)
            tag = "  [ORACLE]" if cls.oracle else ""
            print(f"{name:12s} {dataclasses.asdict(cls.Config())}{tag}")
        return 0
    if args.command == "datasets":
        from .data import list_datasets

        print("\n".join(list_datasets()))
        return 0
    if args.command == "study":
        from .study.runner import study_main

        return study_main(args)
    if args.command == "results":
        return _results(args.runs, args.out)
    if args.command == "pretrain":
        return _pretrain(args)
    if args.command == "bench":
        from .bench import bench_main

        return bench_main(args)
    from .cross_eval import evaluate_run, parse_targets

    targets = parse_targets(args.eval_data)  # a bad target fails before any data loads
    if args.command == "evaluate":
        for run_dir in args.runs:
            print(f"{run_dir}:")
            evaluate_run(run_dir, targets, device=args.device)
        return 0
    from .distributed import on_main
    from .experiment import run
    from .rundir import write_results

    spec = spec_from_args(args)
    result = run(spec, resume=not args.no_resume)
    print(json.dumps({k: result[k] for k in ("run_id", "method", "noise", "noise_rate", "best_epoch",
                                             "time_per_epoch_s", "last", "best")}, indent=2))
    on_main(write_results, spec.out)  # under torchrun, rank 0 writes (ferlib.distributed)
    if targets:
        on_main(evaluate_run, Path(spec.out) / result["run_id"], targets)
    return 0


#: The console table's columns; ``flags`` says why a run is not an ordinary result (diverged, collapsed).
RESULT_COLUMNS = ["run_id", "method", "oracle", "noise", "noise_rate", "seed", "epochs", "best_epoch",
                  "last.acc", "last.mean_acc", "last.macro_f1", "best.acc", "best.mean_acc", "time_per_epoch_s",
                  "flags"]


def _results(runs: str, out: str | None) -> int:
    from .results import write_table
    from .rundir import collect_results

    table = collect_results(runs)
    if table.empty:
        print(f"error: no finished run (result.json) under {runs}", file=sys.stderr)
        return 1
    if out:
        write_table(out, table)
    cols = [c for c in RESULT_COLUMNS if c in table.columns]
    shown = table[cols].fillna({"flags": ""})  # runs that predate the flags count as healthy
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0
