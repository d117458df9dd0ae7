"""Cross-dataset evaluation: a finished run scored on other datasets, over the classes both share.

A target is written ``READER:PATH[:KEY=VALUE,...]`` (:meth:`EvalTarget.parse`): a reader of
:func:`ferlib.data.list_datasets`, the dataset's root, and the reader's options typed from its signature as
``--dataset-opt`` types them, plus ``split``, the split scored (default ``test``: FERPlus ``FER2013Test``,
``fer2013.csv``'s ``PrivateTest``, RAF-DB's test images, AffectNet's validation set, a folder tree's ``test/``)::

    ferplus:../shared/data/ferplus:mode=majority        FERPlus test relabelled by the majority rule
    folder:exports/ferplus_test_no_neutral              a class-per-folder tree (root/test/<class>/<image>)
    rafdb:../shared/data/rafdb                          RAF-DB basic test (7 classes)
    ferplus:../shared/data/ferplus:split=valid          another split

The reader's ``channels`` option defaults to the run's input channels (a grayscale FERPlus model reads RAF-DB
in grayscale); the images are resized to the run's input size as in training.

**The class mapping** is made from the canonical class names (:mod:`ferlib.classes`), never by position:

* the run's classes are those it was trained on, in its logit order; the target's are the classes present in
  the scored split (a folder export without a ``neutral`` folder has no neutral, whatever its class space);
* a run class the target lacks is **masked**: its logit is set to -inf before the argmax, so the model can
  never predict it (never merged into another class);
* a target sample whose class the run lacks (contempt for a 7-class run) is **excluded** and counted;
* no shared class at all is an error naming both sides.

Metrics are those of the test split (:func:`ferlib.metrics.classification_metrics`: accuracy, mean accuracy,
macro-F1, per-class accuracy, confusion) over the shared classes, in the run's class order.

**Where scores go.** :func:`evaluate_run` writes ``cross_eval.json`` (:data:`ferlib.rundir.CROSS_EVAL`) into
the run folder, atomically and under the run's lock: ``{key: entry}``, one entry per target, keyed by
:meth:`EvalTarget.key` (reader, the data's fingerprint, split and every reader option), so the same data at
another path is the same target. A target already scored is not scored again: a second call leaves the file
as it was, and nothing else in the run folder is ever written. Retraining the run (a new generation,
:meth:`ferlib.rundir.RunDir.retire`) removes the file with the old weights.

Command line: ``python -m ferlib evaluate RUN_DIR... --eval-data TARGET ...``; ``python -m ferlib train ...
--eval-data TARGET`` scores the run when it has trained; a study profile's ``eval_data:`` list scores every
finished grid run as a step after training (:mod:`ferlib.study.runner`).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import rundir
from ._registry import full_options
from .classes import CLASSES_8, class_index, class_names
from .data import SPLITS, data_fingerprint, dataset_reader, load_dataset
from .metrics import classification_metrics
from .options import option_hints, parse_options, split_options

__all__ = ["EvalTarget", "parse_targets", "ClassMapping", "class_mapping", "canonical_classes", "masked_argmax",
           "cross_metrics", "evaluate_run", "describe_entry", "TARGET_SYNTAX"]

TARGET_SYNTAX = "READER:PATH[:KEY=VALUE,...] (reader options, and split=train|valid|test, default test)"


@dataclass(frozen=True)
class EvalTarget:
    """One dataset to score runs on.

    reader : a name of :func:`ferlib.data.list_datasets`.
    data : the dataset's root, as given (relative to the current directory).
    options : reader options as given (typed); the reader's defaults fill in the rest.
    split : the split scored (``train``, ``valid`` or ``test``).
    """

    reader: str
    data: str
    options: dict = field(default_factory=dict)
    split: str = "test"

    @classmethod
    def parse(cls, text: str) -> "EvalTarget":
        """``READER:PATH[:KEY=VALUE,...]`` -> EvalTarget (:data:`TARGET_SYNTAX`); the part after the last ``:``
        holds options when it contains ``=``. Raises ValueError naming the text and what is wrong (an unknown
        reader, option or split, a value of the wrong type)."""
        where = f"eval data {text!r}"
        reader, _, rest = str(text).partition(":")
        path, sep, tail = rest.rpartition(":")
        if not (sep and path and "=" in tail):
            path, tail = rest, ""
        if not reader or not path:
            raise ValueError(f"{where}: expected {TARGET_SYNTAX}")
        try:
            read = dataset_reader(reader)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        pairs = split_options(tail)
        splits = [p.partition("=")[2] for p in pairs if p.startswith("split=")]
        bad = [s for s in splits if s not in SPLITS]
        if bad:
            raise ValueError(f"{where}: split must be one of {', '.join(SPLITS)}, got {bad[0]!r}")
        options = parse_options(read, [p for p in pairs if not p.startswith("split=")], where=where)
        return cls(reader=reader, data=path, options=options, split=splits[-1] if splits else "test")

    def __str__(self) -> str:
        opts = [f"{k}={v}" for k, v in self.options.items()] + ([f"split={self.split}"] * (self.split != "test"))
        return f"{self.reader}:{self.data}" + (f":{','.join(opts)}" if opts else "")

    @property
    def label(self) -> str:
        """A short name for tables: ``reader:<root's folder name>`` and the options given (``split`` when not
        test)."""
        return str(EvalTarget(self.reader, Path(self.data).name, self.options, self.split))

    def reader_options(self, channels: int) -> dict:
        """Every reader option (defaults filled in), ``channels`` defaulting to the run's ``channels``."""
        read = dataset_reader(self.reader)
        given = {"channels": channels, **self.options} if "channels" in option_hints(read) else self.options
        return full_options(read, given, what=f"dataset {self.reader!r}")

    def key(self, channels: int) -> str:
        """``reader:fingerprint:split:k=v,...``: what the data holds (:func:`ferlib.data.data_fingerprint`, not
        its path), the split and every option that changes the data (``progress`` left out). Raises
        FileNotFoundError naming the root when it does not exist."""
        options = {k: v for k, v in self.reader_options(channels).items() if k != "progress"}
        return (f"{self.reader}:{data_fingerprint(self.data)}:{self.split}:"
                + ",".join(f"{k}={v}" for k, v in sorted(options.items())))

    def load(self, channels: int):
        """The scored split of the target as a :class:`~ferlib.data.FERData` (read through the cache); a
        ValueError names the target when the split is empty or its images do not have ``channels`` channels."""
        data = load_dataset(self.reader, self.data, **self.reader_options(channels))
        part = data.subset(self.split)
        if not len(part):
            counts = ", ".join(f"{s} {n}" for s, n in data.split_counts().items())
            raise ValueError(f"eval data {self}: its {self.split!r} split is empty ({counts}); choose another "
                             "with :split=NAME")
        if part.image_shape[2] != channels:
            raise ValueError(f"eval data {self}: images have {part.image_shape[2]} channel(s), the run's model takes "
                             f"{channels}; drop the channels option")
        return part


def parse_targets(texts: Iterable[str | EvalTarget]) -> list[EvalTarget]:
    """The targets of ``texts`` (:meth:`EvalTarget.parse`), each root checked to exist: a bad target fails here,
    before a run trains or a model loads (ValueError naming it, FileNotFoundError naming a missing root)."""
    targets = [t if isinstance(t, EvalTarget) else EvalTarget.parse(t) for t in texts]
    for target in targets:
        if not Path(target.data).expanduser().exists():
            raise FileNotFoundError(f"eval data {target}: dataset root {target.data} does not exist")
    return targets


def canonical_classes(names: Iterable[str], *, what: str) -> tuple[str, ...]:
    """Canonical names (:data:`ferlib.classes.CLASSES_8`) of ``names`` (any spelling in
    :data:`ferlib.classes.SYNONYMS`); ValueError naming ``what`` and the class otherwise."""
    out = []
    for name in names:
        try:
            out.append(CLASSES_8[class_index(name, 8)])
        except KeyError:
            raise ValueError(f"{what}: class {name!r} is not an expression class; valid: {', '.join(CLASSES_8)} "
                             "or a synonym in ferlib.classes.SYNONYMS") from None
    return tuple(out)


@dataclass(frozen=True)
class ClassMapping:
    """The run's classes against a target's, by canonical name.

    run : the run's classes in its logit order (K names).
    target : the classes present in the target's scored split.
    """

    run: tuple[str, ...]
    target: tuple[str, ...]

    @property
    def shared(self) -> tuple[str, ...]:
        """The classes both have, in the run's order: the rows and columns of the confusion matrix."""
        return tuple(c for c in self.run if c in self.target)

    @property
    def masked(self) -> tuple[str, ...]:
        """Run classes the target lacks: masked out of the argmax."""
        return tuple(c for c in self.run if c not in self.target)

    @property
    def excluded(self) -> tuple[str, ...]:
        """Target classes the run lacks: their samples are not scored."""
        return tuple(c for c in self.target if c not in self.run)

    def keep(self) -> np.ndarray:
        """(K,) bool over the run's classes: True where the class is shared."""
        return np.array([c in self.target for c in self.run])

    def to_dict(self) -> dict:
        return {"run": list(self.run), "target": list(self.target), "shared": list(self.shared),
                "masked": list(self.masked), "excluded": list(self.excluded)}


def class_mapping(run_classes: Iterable[str], target_classes: Iterable[str], *, run: str = "the run",
                  target: str = "the target") -> ClassMapping:
    """The :class:`ClassMapping` of a run's classes (logit order) and a target's present classes, by canonical
    name. Raises ValueError naming ``run`` and ``target`` with both class lists when they share no class, or
    naming a class that is not an expression class."""
    mapping = ClassMapping(canonical_classes(run_classes, what=run), canonical_classes(target_classes, what=target))
    if not mapping.shared:
        raise ValueError(f"{run} ({', '.join(mapping.run)}) and {target} ({', '.join(mapping.target) or 'no sample'}) "
                         "share no class: nothing to score")
    return mapping


def masked_argmax(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Index of the highest logit among the kept classes.

    Parameters
    ----------
    logits : np.ndarray, shape (N, K)
    keep : np.ndarray, shape (K,), bool, at least one True
        Classes the prediction may take; the others' logits are set to -inf.

    Returns
    -------
    np.ndarray, shape (N,), int64: a column of ``logits`` with ``keep`` True.
    """
    logits, keep = np.asarray(logits, dtype=np.float64), np.asarray(keep, dtype=bool)
    return np.where(keep, logits, -np.inf).argmax(axis=1).astype(np.int64)


def cross_metrics(logits: np.ndarray, labels: np.ndarray, label_names: Iterable[str], mapping: ClassMapping
                  ) -> dict:
    """Score a run's logits on a target's labels over the shared classes.

    Parameters
    ----------
    logits : np.ndarray, shape (N, K)
        The run's logits, columns in ``mapping.run`` order.
    labels : np.ndarray, shape (N,), int
        The target's labels, indices into ``label_names``.
    label_names : sequence of str
        The target's class names (its ``FERData.classes``).
    mapping : ClassMapping

    Returns
    -------
    dict
        ``n`` (samples scored), ``n_excluded`` and ``excluded`` (``{class: count}`` of the samples whose class
        the run lacks, left out), and :func:`~ferlib.metrics.classification_metrics` over ``mapping.shared``
        (``acc``, ``mean_acc``, ``macro_f1``, ``per_class_acc`` (S,), ``confusion`` (S, S)), with the
        prediction restricted to the shared classes (:func:`masked_argmax`).
    """
    names = canonical_classes(label_names, what="the target")
    y = _positions(names, mapping.shared)[np.asarray(labels, dtype=np.int64)]
    scored = y >= 0
    predicted = _positions(mapping.run, mapping.shared)[masked_argmax(np.asarray(logits)[scored], mapping.keep())]
    left_out = Counter(names[i] for i in np.asarray(labels)[~scored])
    return {"n": int(scored.sum()), "n_excluded": int((~scored).sum()),
            "excluded": {c: left_out[c] for c in names if left_out[c]},
            **classification_metrics(y[scored], predicted, num_classes=len(mapping.shared))}


def _positions(names: tuple[str, ...], shared: tuple[str, ...]) -> np.ndarray:
    """(len(names),) int64: the position of each name in ``shared``, -1 where it is not shared."""
    return np.array([shared.index(c) if c in shared else -1 for c in names], dtype=np.int64)


def describe_entry(entry: dict) -> str:
    """One line saying how a target was scored: the mapping, what was masked and excluded, the numbers."""
    m = entry["mapping"]
    excluded = ", ".join(f"{c} {n}" for c, n in entry["excluded"].items()) or "none"
    return (f"{entry['target']} [{entry['split']}]: {len(m['run'])} run classes -> {len(m['shared'])} shared "
            f"({', '.join(m['shared'])}); masked out of the argmax: {', '.join(m['masked']) or 'none'}; excluded "
            f"samples (class not in the run): {excluded}; {entry['n']} scored: acc {entry['acc']:.4f}, mean acc "
            f"{entry['mean_acc']:.4f}, macro-F1 {entry['macro_f1']:.4f}")


def evaluate_run(run_dir: str | os.PathLike, targets: Iterable[EvalTarget | str], *, device: str | None = None,
                 log: Callable[[str], object] = print) -> dict[str, dict]:
    """Score the finished run in ``run_dir`` on each target, without training; record it in ``cross_eval.json``.

    Parameters
    ----------
    run_dir : a finished run folder (:func:`ferlib.rundir.find_problem` finds nothing wrong).
    targets : :class:`EvalTarget` or their text (:data:`TARGET_SYNTAX`).
    device : torch device for inference; default the run's ``train.device`` setting.
    log : called with one line per target (:func:`describe_entry`: the class mapping and the scores).

    Returns
    -------
    dict
        ``{key: entry}`` of the targets (:meth:`EvalTarget.key`), each entry: ``target`` (label), ``reader``,
        ``data``, ``split``, ``options`` (all reader options), ``mapping`` (:meth:`ClassMapping.to_dict`) and
        the scores of :func:`cross_metrics`. Targets already in ``cross_eval.json`` are returned from it.

    Raises
    ------
    FileNotFoundError
        No finished run in ``run_dir``, or a target root is missing (named).
    ValueError
        A bad target, a run that is not intact (:class:`~ferlib.rundir.CorruptRunError`), a target sharing no
        class with the run (:func:`class_mapping`); a dataset error names the file.
    ferlib.rundir.RunLockedError
        Another process is writing the run folder.
    """
    from .inference import load_model

    folder = rundir.RunDir(run_dir)
    targets = parse_targets(targets)
    rundir.read_result(folder)  # a finished, intact run, or an error naming the folder
    cfg = rundir.read_config(folder)
    channels, run_classes = int(cfg["backbone"]["in_chans"]), class_names(int(cfg["classes"]))
    keyed = {t.key(channels): t for t in targets}
    with folder.lock():
        scores = rundir.read_cross_eval(folder)
        todo = {k: t for k, t in keyed.items() if k not in scores}
        loaded = load_model(folder, device=device) if todo else ()
        for key, target in todo.items():  # each written as it is scored: a later target's error keeps it
            scores[key] = _score(target, channels, f"run {folder.path.name}", run_classes, *loaded)
            folder.write_cross_eval(scores)
    for key in keyed:
        log(describe_entry(scores[key]))
    return {k: scores[k] for k in keyed}


def _score(target: EvalTarget, channels: int, run: str, run_classes: tuple[str, ...], model, train, device) -> dict:
    """The entry of one target (see :func:`evaluate_run`) for the model of ``run`` (its name, for errors)."""
    from .engine import predict

    data = target.load(channels)
    present = tuple(data.classes[i] for i in np.unique(data.labels))
    mapping = class_mapping(run_classes, present, run=run, target=f"eval data {target}")
    logits, _ = predict(model, data.images, train, device)
    return {"target": target.label, "reader": target.reader, "data": target.data, "split": target.split,
            "options": target.reader_options(channels), "mapping": mapping.to_dict(),
            **cross_metrics(logits, data.labels, data.classes, mapping)}
