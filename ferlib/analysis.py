"""Analysis of finished runs: the plain functions behind the study notebooks (``notebooks/*.ipynb``).

Every number and figure a notebook shows is computed here, on arrays or run directories
(:mod:`ferlib.engine` describes a run directory), so the notebooks stay thin and the logic is tested.

=======================  ===============================================================================
runs                     :func:`list_runs`, :func:`load_run`, :func:`load_runs`, :func:`one_per_method`,
                         :func:`build_spec`, :func:`spec_from_run`, :func:`run_dataset`, :func:`images_by_id`,
                         :func:`run_features`, :func:`class_names_for`
label distributions      :func:`softmax`, :func:`kl_divergence`, :func:`js_divergence`,
                         :func:`recovered_distribution`, :func:`label_distribution_metrics`,
                         :func:`label_distribution_table`, :func:`choose_faces`,
                         :func:`distribution_examples`
mislabel detection       :func:`detection_metrics`, :func:`flag_metrics`, :func:`uncertainty_table`,
                         :func:`extreme_samples`, :func:`plot_extremes`, :func:`kfold_ce_probs`,
                         :func:`cleanlab_issues`, :func:`cleanlab_scores`, :func:`cleanlab_table`
tables                   :func:`parse_noise`, :func:`summary_table`, :func:`format_summary`,
                         :func:`timing_table`, :func:`per_class_table`, :func:`per_class_summary`,
                         :func:`run_ablations`
data and noise           :func:`sample_faces`, :func:`noise_table`, :func:`noise_examples`,
                         :func:`try_landmarks`, :func:`va_values`, :func:`va_summary`
embeddings               :func:`embed_umap`, :func:`run_embeddings`, :func:`silhouette`
plots (Figure objects)   :func:`plot_confusion`, :func:`plot_learning_curves`, :func:`plot_transition`,
                         :func:`plot_bars`, :func:`face_grid`, :func:`plot_distributions`,
                         :func:`plot_noise_curve`, :func:`plot_embedding`, :func:`plot_va`
notebook plumbing        :func:`chdir_repo_root`, :func:`save_figure`, :func:`record_metrics`
=======================  ===============================================================================

Heavy dependencies (scikit-learn, cleanlab, umap-learn, matplotlib) are imported inside the functions that
need them, so ``import ferlib.analysis`` is cheap. Plot helpers build ``matplotlib.figure.Figure`` objects
directly (no pyplot state, Agg canvas); a notebook displays one by making it the cell's last expression.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .results import read_json, write_json

__all__ = [
    "RunRecord", "list_runs", "load_run", "load_runs", "one_per_method", "build_spec", "spec_from_run",
    "run_dataset", "images_by_id", "run_features", "class_names_for",
    "softmax", "kl_divergence", "js_divergence", "recovered_distribution", "label_distribution_metrics",
    "label_distribution_table", "choose_faces", "distribution_examples",
    "detection_metrics", "flag_metrics", "uncertainty_table", "extreme_samples", "plot_extremes", "kfold_ce_probs",
    "cleanlab_issues", "cleanlab_scores", "cleanlab_table",
    "parse_noise", "summary_table", "format_summary", "timing_table", "per_class_table", "per_class_summary",
    "run_ablations", "sample_faces", "noise_table", "noise_examples", "try_landmarks", "va_values", "va_summary",
    "embed_umap", "run_embeddings", "silhouette",
    "plot_confusion", "plot_learning_curves", "plot_transition", "plot_bars", "face_grid", "plot_distributions",
    "plot_noise_curve", "plot_embedding", "plot_va",
    "chdir_repo_root", "save_figure", "record_metrics",
]

RANKINGS: Mapping[str, str] = {
    "score": "the method's own ranking (readout ``method_score``)",
    "loss": "latest per-sample cross-entropy on the given label (``method_loss``)",
    "neg_margin": "minus the latest margin of the given label (``-method_margin``)",
}


# ============================================================================ runs
@dataclass
class RunRecord:
    """Everything one finished run directory holds, loaded.

    Attributes
    ----------
    path : Path
        The run directory.
    result : dict
        ``result.json``: the run's summary (run_id, method, oracle, noise, seed, last/best metrics ...).
    epochs : pandas.DataFrame
        ``epochs.csv``: one row per epoch (epoch, lr, train_<term>, valid_acc, test_acc, ...).
    readout : dict of str to np.ndarray
        ``readout.npz``: per-sample arrays of the train split (``ids``, ``given``, ``clean`` (N,),
        ``train_logits`` (N, K), ``method_score`` (N,), ...) and ``test_logits`` (M, K), ``test_ids``,
        ``test_labels`` (M,).
    history : list of dict
        ``epochs.jsonl``: every epoch with the per-class accuracy and confusion of valid and test.
    config : dict
        ``config.json``: the resolved configuration (train, method_config, backbone, dataset ...).
    noise : dict or None
        ``noise.json``: :func:`ferlib.noise.apply_noise`'s report.
    """

    path: Path
    result: dict
    epochs: "object"
    readout: dict
    history: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    noise: dict | None = None

    def __iter__(self):
        """``result, epochs, readout = load_run(path)`` also works."""
        return iter((self.result, self.epochs, self.readout))

    @property
    def run_id(self) -> str:
        return str(self.result.get("run_id", self.path.name))

    @property
    def label(self) -> str:
        """``method`` plus ``(oracle)`` when the method sees what noisy-label methods must not."""
        return f"{self.result['method']}{' (oracle)' if self.result.get('oracle') else ''}"

    @property
    def flipped(self) -> np.ndarray:
        """(N,) bool: the train samples whose given label differs from the clean one."""
        return np.asarray(self.readout["given"]) != np.asarray(self.readout["clean"])


def list_runs(runs_dir: str | os.PathLike) -> list[Path]:
    """Finished run directories directly under ``runs_dir`` (those holding ``result.json``), sorted.

    A missing ``runs_dir`` gives an empty list; sub-folders of run directories (k-fold helpers,
    ablations) are not descended into.
    """
    return sorted(p.parent for p in Path(runs_dir).glob("*/result.json"))


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """Load a finished run directory.

    Parameters
    ----------
    run_dir : folder written by :func:`ferlib.engine.fit`.

    Returns
    -------
    RunRecord
        ``result``, ``epochs`` (DataFrame), ``readout`` (dict of arrays), plus ``history``, ``config``, ``noise``.

    Raises
    ------
    FileNotFoundError
        ``result.json`` or ``readout.npz`` is missing (the run has not finished).
    """
    import pandas as pd

    run_dir = Path(run_dir)
    for name in ("result.json", "readout.npz"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}: no {name}; the run has not finished (or this is not a run folder)")
    with np.load(run_dir / "readout.npz", allow_pickle=False) as z:
        readout = {k: z[k] for k in z.files}
    epochs = pd.read_csv(run_dir / "epochs.csv") if (run_dir / "epochs.csv").is_file() else pd.DataFrame()
    history = []
    if (run_dir / "epochs.jsonl").is_file():
        history = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines() if line.strip()]
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    noise = read_json(run_dir / "noise.json") if (run_dir / "noise.json").is_file() else None
    return RunRecord(path=run_dir, result=read_json(run_dir / "result.json"), epochs=epochs, readout=readout,
                     history=history, config=config, noise=noise)


def load_runs(runs) -> list[RunRecord]:
    """Every finished run of a runs folder (or one run folder, or a list of RunRecords / run folders), loaded.

    Returns
    -------
    list of RunRecord, in :func:`list_runs` order for a folder.
    """
    if isinstance(runs, RunRecord):
        return [runs]
    if isinstance(runs, (str, os.PathLike)):
        path = Path(runs)
        if (path / "result.json").is_file():
            return [load_run(path)]
        return [load_run(p) for p in list_runs(path)]
    return [r if isinstance(r, RunRecord) else load_run(r) for r in runs]


def one_per_method(runs) -> list[RunRecord]:
    """One run per method label for figures that show one run each: its first run trained on flipped labels
    (in the given order), else its first run."""
    runs = load_runs(runs)
    seen: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: not r.flipped.any()):  # stable: noisy runs first, order kept
        seen.setdefault(run.label, run)
    return sorted(seen.values(), key=runs.index)


def build_spec(spec: Mapping | None = None, *, data: str, dataset: str, dataset_options: Mapping,
               out: str | os.PathLike):
    """A :class:`ferlib.experiment.RunSpec` from a notebook's ``spec`` parameter and its common parameters.

    ``spec`` is ``dataclasses.asdict(RunSpec)`` or any part of it (missing fields take RunSpec's defaults;
    nested ``backbone`` / ``train`` dicts may be partial too). ``data``, ``dataset`` and ``dataset_options``
    fill the spec where it does not give them; ``out`` always replaces the spec's (a notebook writes its runs
    under its ``runs_dir``).
    """
    from .experiment import RunSpec

    spec = dict(spec or {})
    unknown = set(spec) - {f.name for f in dataclasses.fields(RunSpec)}
    if unknown:
        raise ValueError(f"unknown RunSpec field(s) {sorted(unknown)}; valid: "
                         f"{', '.join(f.name for f in dataclasses.fields(RunSpec))}")
    spec.setdefault("data", data)
    spec.setdefault("dataset", dataset)
    spec.setdefault("dataset_options", dict(dataset_options))
    spec["out"] = str(out)
    return RunSpec(**spec)


def spec_from_run(run, *, out: str | os.PathLike | None = None):
    """The :class:`ferlib.experiment.RunSpec` that reproduces a finished run (data, noise, subset, seed, ...).

    Parameters
    ----------
    run : RunRecord or run directory.
    out : parent folder for the rebuilt spec (default: the run's parent folder).
    """
    from .experiment import RunSpec

    run = load_runs(run)[0]
    cfg = run.config
    missing = [k for k in ("train", "method", "data", "dataset", "noise", "backbone") if k not in cfg]
    if missing:
        raise ValueError(f"{run.path}/config.json lacks {missing}; it was not written by ferlib.experiment.run")
    return RunSpec(data=cfg["data"], dataset=cfg["dataset"], dataset_options=dict(cfg.get("dataset_options") or {}),
                   noise=cfg["noise"], train_subset=cfg.get("train_subset"), method=cfg["method"],
                   method_options=dict(cfg.get("method_options") or {}), backbone=dict(cfg["backbone"]),
                   train=dict(cfg["train"]), out=str(out if out is not None else run.path.parent))


@functools.lru_cache(maxsize=4)
def _load_dataset_cached(dataset: str, data: str, options_json: str):
    from .data import load_dataset

    return load_dataset(dataset, data, **json.loads(options_json))


def run_dataset(run):
    """The full dataset (all splits, clean labels, votes) a run was trained on, read through the cache.

    ``run`` is a RunRecord, a run directory or a ``result.json`` dict. Paths are relative to the current
    directory, as when the run was made (see :func:`chdir_repo_root`). Loaded datasets are memoised.
    """
    result = run if isinstance(run, dict) else load_runs(run)[0].result
    return _load_dataset_cached(result["dataset"], str(result["data"]),
                                json.dumps(result.get("dataset_options") or {}, sort_keys=True))


def images_by_id(data, ids: Sequence[str]) -> np.ndarray:
    """Rows of ``data`` for sample ``ids``, in the order given.

    Parameters
    ----------
    data : FERData
    ids : (n,) sample ids (``FERData.ids`` spelling, e.g. a readout's ``ids``).

    Returns
    -------
    (n,) int64 row indices into ``data``.

    Raises
    ------
    KeyError
        Some ids are not in ``data`` (count and first few named).
    """
    pos = {str(i): k for k, i in enumerate(np.asarray(data.ids).astype(str))}
    ids = np.asarray(ids).astype(str)
    missing = [i for i in ids if i not in pos]
    if missing:
        raise KeyError(f"{len(missing)} of {len(ids)} id(s) not in dataset {data.name or '?'!r}, e.g. {missing[:3]}")
    return np.array([pos[i] for i in ids], dtype=np.int64)


def class_names_for(run_or_k) -> tuple[str, ...]:
    """Class names of a run (or of a class count): canonical names for 7/8 classes, else ``"0".."K-1"``."""
    from .classes import class_names

    k = run_or_k if isinstance(run_or_k, (int, np.integer)) else None
    if k is None:
        run = load_runs(run_or_k)[0]
        k = int(run.result.get("classes") or run.readout["train_logits"].shape[1])
    try:
        return class_names(int(k))
    except ValueError:
        return tuple(str(i) for i in range(int(k)))


def run_features(run, *, splits: Sequence[str] = ("train", "test"), device: str | None = None) -> dict[str, np.ndarray]:
    """Penultimate features of a run's model: the saved ones, or recomputed from ``model.pt``.

    Parameters
    ----------
    run : RunRecord or run directory.
    splits : which of ``"train"`` (rows = readout ``ids``) and ``"test"`` (rows = readout ``test_ids``).
    device : torch device for recomputing; default the run's ``train.device`` setting.

    Returns
    -------
    dict split -> (N, D) float32 features (the ``model.embed`` output the classifier sees).
    """
    run = load_runs(run)[0]
    bad = set(splits) - {"train", "test"}
    if bad:
        raise ValueError(f"splits must be among ('train', 'test'), got {sorted(bad)}")
    saved = {s: run.readout[f"{s}_features"].astype(np.float32) for s in splits if f"{s}_features" in run.readout}
    todo = [s for s in splits if s not in saved]
    if not todo:
        return saved
    import torch

    from .backbones import BackboneConfig, create_model
    from .engine import TrainConfig, predict, resolve_device

    cfg = TrainConfig(**{**run.config["train"], "progress": False})
    dev = resolve_device(device or cfg.device)
    backbone = dataclasses.replace(BackboneConfig(**run.config["backbone"]), weights=None)  # model.pt has them all
    model = create_model(backbone, int(run.readout["train_logits"].shape[1]))
    model.load_state_dict(torch.load(run.path / "model.pt", map_location="cpu", weights_only=True))
    model.to(dev)
    data = run_dataset(run)
    for s in todo:
        ids = run.readout["ids" if s == "train" else "test_ids"]
        _, feats = predict(model, data.images[images_by_id(data, ids)], cfg, dev, features=True)
        saved[s] = feats.astype(np.float32)
    return saved


# ============================================================================ label distributions
def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of (N, K) logits; rows sum to 1."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _as_distribution(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, K), got {arr.shape}")
    if not np.all(np.isfinite(arr)) or (arr.size and arr.min() < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    total = arr.sum(1, keepdims=True)
    return np.divide(arr, total, out=np.zeros_like(arr), where=total > 0)


def kl_divergence(p, q, *, eps: float = 1e-12) -> np.ndarray:
    """Row-wise Kullback-Leibler divergence ``KL(p || q) = sum_k p_k log(p_k / q_k)`` in nats.

    Parameters
    ----------
    p, q : (N, K) non-negative; each row is normalised to sum to 1 (counts are fine).
    eps : floor of ``q`` (a class with p_k > 0 and q_k = 0 gives a large finite value, not inf).

    Returns
    -------
    (N,) float64, >= 0; 0 iff the rows are equal. Terms with p_k = 0 contribute 0.
    """
    p, q = _as_distribution(p, "p"), _as_distribution(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    ratio = np.log(np.maximum(p, eps)) - np.log(np.maximum(q, eps))
    return np.maximum(np.where(p > 0, p * ratio, 0.0).sum(1), 0.0)


def js_divergence(p, q) -> np.ndarray:
    """Row-wise Jensen-Shannon divergence ``(KL(p || m) + KL(q || m)) / 2``, ``m = (p + q) / 2``, in nats.

    Symmetric, finite and bounded by ``log 2``; 0 iff the rows are equal.

    Parameters
    ----------
    p, q : (N, K) non-negative; rows normalised to sum to 1.

    Returns
    -------
    (N,) float64 in [0, log 2].
    """
    p, q = _as_distribution(p, "p"), _as_distribution(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    m = (p + q) / 2
    return np.clip((kl_divergence(p, m) + kl_divergence(q, m)) / 2, 0.0, math.log(2))


def recovered_distribution(readout: Mapping[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """A run's label distribution over its train samples.

    The method's own estimate where it keeps one (``method_target`` (N, K): LA-Net's and LDLVA's
    distributions), else the softmax of the final model's train logits.

    Returns
    -------
    dist : (N, K) float64, rows summing to 1.
    source : ``"method_target"`` or ``"softmax(train_logits)"``.
    """
    target = readout.get("method_target")
    k = np.asarray(readout["train_logits"]).shape
    if target is not None and np.ndim(target) == 2 and np.shape(target) == k and np.isfinite(target).all():
        return _as_distribution(target, "method_target"), "method_target"
    return softmax(readout["train_logits"]), "softmax(train_logits)"


def label_distribution_metrics(pred_dist, votes, majority) -> dict[str, float]:
    """How close predicted label distributions are to human vote distributions.

    Parameters
    ----------
    pred_dist : (N, K) predicted distributions (rows normalised here).
    votes : (N, K) human vote counts or distributions (rows normalised here). Rows without any vote are left out.
    majority : (N,) int, the reference label (the dataset's majority / plurality label).

    Returns
    -------
    dict
        ``kl`` : mean KL(votes || pred) in nats (>= 0; the human distribution is the reference),
        ``js`` : mean Jensen-Shannon divergence in nats (in [0, log 2]),
        ``top1`` : fraction of samples whose argmax of ``pred_dist`` equals ``majority``,
        ``n`` : number of samples used.
    """
    pred, hum = _as_distribution(pred_dist, "pred_dist"), _as_distribution(votes, "votes")
    majority = np.asarray(majority)
    if pred.shape != hum.shape or majority.shape != (len(pred),):
        raise ValueError(f"shapes disagree: pred_dist {pred.shape}, votes {hum.shape}, majority {majority.shape}")
    keep = hum.sum(1) > 0
    if not keep.any():
        return {"kl": float("nan"), "js": float("nan"), "top1": float("nan"), "n": 0}
    pred, hum, majority = pred[keep], hum[keep], majority[keep]
    return {"kl": float(kl_divergence(hum, pred).mean()), "js": float(js_divergence(hum, pred).mean()),
            "top1": float((pred.argmax(1) == majority).mean()), "n": int(keep.sum())}


def _run_votes(run: RunRecord) -> np.ndarray | None:
    data = run_dataset(run)
    if data.votes is None:
        return None
    return np.asarray(data.votes[images_by_id(data, run.readout["ids"])], dtype=np.float64)


def label_distribution_table(runs) -> "object":
    """Recovered label distributions of each run measured against the human votes, over its train split.

    Parameters
    ----------
    runs : runs folder, or RunRecords / run directories.

    Returns
    -------
    pandas.DataFrame, one row per run: ``run_id, method, oracle, noise, seed, source`` (see
    :func:`recovered_distribution`), ``kl, js, top1, n`` (:func:`label_distribution_metrics`, reference label =
    the clean label, i.e. the dataset's majority / plurality of the votes), and the same for the one-hot GIVEN
    labels as a floor: ``js_given``, ``top1_given`` (= 1 - realised noise rate). Runs on data without votes
    get NaN.
    """
    import pandas as pd

    rows = []
    for run in load_runs(runs):
        dist, source = recovered_distribution(run.readout)
        votes = _run_votes(run)
        row = {"run_id": run.run_id, "method": run.label, "oracle": bool(run.result.get("oracle")),
               "noise": run.result.get("noise"), "seed": run.result.get("seed"), "source": source}
        if votes is None:
            row.update(kl=np.nan, js=np.nan, top1=np.nan, n=0, js_given=np.nan, top1_given=np.nan)
        else:
            clean = run.readout["clean"]
            row.update(label_distribution_metrics(dist, votes, clean))
            given = np.eye(dist.shape[1])[run.readout["given"]]
            ref = label_distribution_metrics(given, votes, clean)
            row.update(js_given=ref["js"], top1_given=ref["top1"])
        rows.append(row)
    return pd.DataFrame(rows)


def choose_faces(readout: Mapping[str, np.ndarray], n: int, *, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` train samples to show: mislabelled ones (given != clean) first, then others, each at random.

    Returns
    -------
    (min(n, N),) int64 indices into the readout's train arrays.
    """
    flipped = np.asarray(readout["given"]) != np.asarray(readout["clean"])
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(flipped)), rng.permutation(np.flatnonzero(~flipped))])
    return order[:max(int(n), 0)].astype(np.int64)


def distribution_examples(runs, n: int = 6, *, seed: int = 0):
    """Faces and their label distributions side by side: the human votes and every run trained on the same labels.

    The reference is the first run trained on flipped labels (else the first run); runs with the same train
    ids and given labels join it (one setting of noise and seed, different methods). Faces come from
    :func:`choose_faces` (mislabelled first).

    Returns
    -------
    images : (n, H, W, C) uint8.
    distributions : dict name -> (n, K): ``"human votes"`` (when the data has votes), then one per run
        (:func:`recovered_distribution`).
    titles : n strings ``"given X\\nclean Y"`` (a third line ``FLIPPED`` where they differ).
    """
    runs = load_runs(runs)
    if not runs:
        raise ValueError("no finished run to take label distributions from")
    first = next((r for r in runs if r.flipped.any()), runs[0])
    ref = first.readout
    same = [r for r in runs if np.array_equal(r.readout["ids"], ref["ids"])
            and np.array_equal(r.readout["given"], ref["given"])]
    idx = choose_faces(ref, n, seed=seed)
    data = run_dataset(first)
    rows = images_by_id(data, ref["ids"][idx])
    names = class_names_for(first)
    dists: dict[str, np.ndarray] = {}
    if data.votes is not None:
        dists["human votes"] = _as_distribution(data.votes[rows], "votes")
    for r in same:
        key = r.label if r.label not in dists else f"{r.label} [{r.run_id}]"
        dists[key] = recovered_distribution(r.readout)[0][idx]
    titles = [f"given {names[g]}\nclean {names[c]}{chr(10) + 'FLIPPED' if g != c else ''}"
              for g, c in zip(ref["given"][idx], ref["clean"][idx])]
    return data.images[rows], dists, titles


# ============================================================================ mislabel detection
def _check_score(score, is_flipped) -> tuple[np.ndarray, np.ndarray]:
    score = np.asarray(score, dtype=np.float64)
    flipped = np.asarray(is_flipped)
    if score.ndim != 1 or flipped.shape != score.shape:
        raise ValueError(f"score and is_flipped must be 1-D of the same length, got {score.shape} and {flipped.shape}")
    if flipped.dtype != bool:
        if not np.isin(flipped, (0, 1)).all():
            raise ValueError("is_flipped must be boolean (or 0/1)")
        flipped = flipped.astype(bool)
    return score, flipped


def detection_metrics(score, is_flipped) -> dict[str, float]:
    """How well a per-sample score finds the flipped labels (higher score = more likely mislabelled).

    Parameters
    ----------
    score : (N,) float; NaN (a sample the method never scored) is replaced by the median of the others.
    is_flipped : (N,) bool, True where the given label differs from the clean one.

    Returns
    -------
    dict
        ``auroc`` : area under the ROC curve (1 = perfect ranking, 0.5 = random; NaN when all or no sample
        is flipped), ``ap`` : average precision (its chance level is ``rate``), ``p_at_n`` : precision among
        the ``n_flipped`` highest scores, ``rate`` : fraction flipped, ``n``, ``n_flipped``, ``n_missing``
        (NaN scores filled).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    score, flipped = _check_score(score, is_flipped)
    missing = ~np.isfinite(score)
    if missing.all():
        score = np.zeros_like(score)
    elif missing.any():
        score = np.where(missing, np.median(score[~missing]), score)
    n, n_flip = len(score), int(flipped.sum())
    out = {"auroc": float("nan"), "ap": float("nan"), "p_at_n": float("nan"),
           "rate": n_flip / n if n else float("nan"), "n": n, "n_flipped": n_flip, "n_missing": int(missing.sum())}
    if 0 < n_flip < n:
        top = np.argsort(-score, kind="stable")[:n_flip]
        out.update(auroc=float(roc_auc_score(flipped, score)), ap=float(average_precision_score(flipped, score)),
                   p_at_n=float(flipped[top].mean()))
    return out


def flag_metrics(flagged, is_flipped) -> dict[str, float]:
    """Precision / recall / F1 of a flagged set against the truly flipped labels.

    Parameters
    ----------
    flagged, is_flipped : (N,) bool.

    Returns
    -------
    dict with ``precision`` (NaN when nothing is flagged), ``recall`` (NaN when nothing is flipped), ``f1``,
    ``n_flagged``.
    """
    flagged = np.asarray(flagged, dtype=bool)
    _, flipped = _check_score(flagged.astype(float), is_flipped)
    tp = int((flagged & flipped).sum())
    precision = tp / flagged.sum() if flagged.any() else float("nan")
    recall = tp / flipped.sum() if flipped.any() else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if (precision + recall) > 0 else float("nan")
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "n_flagged": int(flagged.sum())}


def _ranking(readout: Mapping[str, np.ndarray], name: str) -> np.ndarray | None:
    if name not in RANKINGS:
        raise ValueError(f"unknown ranking {name!r}; valid: {', '.join(RANKINGS)}")
    key = "method_margin" if name == "neg_margin" else f"method_{name}"
    if key not in readout:
        return None
    values = np.asarray(readout[key], dtype=np.float64)
    return -values if name == "neg_margin" else values


def uncertainty_table(runs, *, rankings: Sequence[str] = ("score", "loss", "neg_margin")) -> "object":
    """Mislabel-detection quality of each run's per-sample rankings.

    Parameters
    ----------
    runs : runs folder (e.g. ``runs/smoke``), or RunRecords / run directories.
    rankings : which rankings to measure, among :data:`RANKINGS` (``score`` = the method's own).

    Returns
    -------
    pandas.DataFrame, one row per run and ranking: ``run_id, method, oracle, noise, noise_rate, seed, ranking``
    and :func:`detection_metrics` (``auroc, ap, p_at_n, rate, n, n_flipped, n_missing``).
    """
    import pandas as pd

    rows = []
    for run in load_runs(runs):
        for name in rankings:
            score = _ranking(run.readout, name)
            if score is None:
                continue
            rows.append({"run_id": run.run_id, "method": run.label, "oracle": bool(run.result.get("oracle")),
                         "noise": run.result.get("noise"), "noise_rate": run.result.get("noise_rate"),
                         "seed": run.result.get("seed"), "ranking": name,
                         **detection_metrics(score, run.flipped)})
    return pd.DataFrame(rows)


def extreme_samples(readout: Mapping[str, np.ndarray], k: int = 8, *, key: str = "method_score") -> "object":
    """The ``k`` most and ``k`` least uncertain train samples of one run.

    Returns
    -------
    pandas.DataFrame with ``end`` (``"most"`` / ``"least"`` uncertain), ``rank`` (0 = most extreme), ``index``
    (row in the readout), ``id``, ``given``, ``clean``, ``flipped``, ``score``. Unscored samples (NaN) are skipped.
    """
    import pandas as pd

    score = np.asarray(readout[key], dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(score))
    order = valid[np.argsort(-score[valid], kind="stable")]
    rows = []
    for end, idx in (("most", order[:k]), ("least", order[::-1][:k])):
        for rank, i in enumerate(idx):
            rows.append({"end": end, "rank": rank, "index": int(i), "id": str(readout["ids"][i]),
                         "given": int(readout["given"][i]), "clean": int(readout["clean"][i]),
                         "flipped": bool(readout["given"][i] != readout["clean"][i]), "score": float(score[i])})
    return pd.DataFrame(rows)


def plot_extremes(run, k: int = 8, *, key: str = "method_score"):
    """Face grids of a run's ``k`` most and ``k`` least uncertain train samples (:func:`extreme_samples`).

    Titles give ``given/clean`` class names and the score; flipped labels are drawn in red.
    """
    run = load_runs(run)[0]
    table = extreme_samples(run.readout, k, key=key)
    data = run_dataset(run)
    names = class_names_for(run)
    images = data.images[images_by_id(data, table["id"])] if len(table) else np.zeros((0, 1, 1, 1), np.uint8)
    titles = [f"{t.end[0].upper()}{t.rank} {names[t.given][:4]}/{names[t.clean][:4]} {t.score:.2f}"
              for t in table.itertuples()]
    colours = ["crimson" if f else "black" for f in table["flipped"]] if len(table) else None
    return face_grid(images, titles, ncols=k, title_colors=colours,
                     title=f"{run.label} ({run.run_id}): top row most, bottom row least uncertain; "
                           "red = flipped (given/clean)")


def kfold_ce_probs(data, *, k: int = 5, backbone=None, train=None, out_dir: str | os.PathLike | None = None,
                   seed: int = 0, resume: bool = True) -> np.ndarray:
    """Out-of-sample class probabilities of every train sample from K-fold cross-entropy training.

    The train split is cut into ``k`` folds stratified by the GIVEN labels; for each fold a fresh model is
    trained with the CE method by :func:`ferlib.engine.fit` on the other folds, and predicts the held-out
    fold (passed to ``fit`` as its ``test`` split; its logged accuracy is not used, and the LAST epoch's model
    predicts). This is what cleanlab's confident learning expects as ``pred_probs``.

    Parameters
    ----------
    data : FERData with a train split (given, possibly noisy labels); other splits are ignored.
    k : number of folds, >= 2.
    backbone : :class:`ferlib.backbones.BackboneConfig` (default: resnet18); ``in_chans`` follows the data.
    train : :class:`ferlib.engine.TrainConfig` of each fold's training (``select_on`` is set to ``test``).
    out_dir : folder for the fold runs (``fold0``, ``fold1``, ...), resumed when found; None = a temporary
        folder, deleted afterwards.
    seed : seed of the fold assignment.

    Returns
    -------
    (N, K) float64 probabilities, rows in the order of ``data.subset("train")``.
    """
    import tempfile

    from sklearn.model_selection import StratifiedKFold

    from .backbones import BackboneConfig, create_model
    from .engine import TrainConfig, fit
    from .methods import create_method

    if int(k) < 2:
        raise ValueError(f"k must be >= 2, got {k!r}")
    backbone = BackboneConfig() if backbone is None else backbone
    backbone = BackboneConfig(**backbone) if isinstance(backbone, dict) else backbone
    train = TrainConfig() if train is None else train
    train = TrainConfig(**train) if isinstance(train, dict) else train
    cfg = dataclasses.replace(train, select_on="test", save_features=False)
    backbone = dataclasses.replace(backbone, in_chans=data.image_shape[2])
    tr = data.subset("train")
    probs = np.full((len(tr), tr.num_classes), np.nan)
    folds = StratifiedKFold(n_splits=int(k), shuffle=True, random_state=seed)
    tmp = tempfile.TemporaryDirectory(prefix="ferlib-kfold-") if out_dir is None else None
    root = Path(tmp.name if tmp else out_dir)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            splits = list(folds.split(np.zeros(len(tr)), tr.labels))
        for i, (fit_idx, held_idx) in enumerate(splits):
            split = np.array(["train"] * len(tr), dtype=object)
            split[held_idx] = "test"
            fold = dataclasses.replace(tr, split=split.astype(str))
            model = create_model(backbone, tr.num_classes)
            method = create_method("ce", num_classes=tr.num_classes, num_train=len(fit_idx),
                                   feature_dim=model.feature_dim)
            fit(model, method, fold, cfg, root / f"fold{i}", resume=resume,
                meta={"kfold": {"fold": i, "k": int(k), "seed": seed}})
            with np.load(root / f"fold{i}" / "readout.npz", allow_pickle=False) as z:
                logits, ids = z["test_logits"], z["test_ids"]
            if not np.array_equal(ids.astype(str), tr.ids[held_idx].astype(str)):
                raise RuntimeError(f"{root / f'fold{i}'}: held-out ids differ from this data's fold; "
                                   "remove the folder (it was made with other data)")
            probs[held_idx] = softmax(logits)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return probs


def cleanlab_issues(given, pred_probs, *, filter_by: str = "prune_by_noise_rate") -> np.ndarray:
    """Confident learning (Northcutt et al., JAIR 2021): which given labels cleanlab flags as issues.

    A thin call of ``cleanlab.filter.find_label_issues``.

    Parameters
    ----------
    given : (N,) int given labels in [0, K).
    pred_probs : (N, K) out-of-sample probabilities (:func:`kfold_ce_probs`).
    filter_by : cleanlab's method (``prune_by_noise_rate``, ``prune_by_class``, ``both``, ``confident_learning``,
        ``predicted_neq_given``, ...).

    Returns
    -------
    (N,) bool, True = flagged as a label issue.
    """
    from cleanlab.filter import find_label_issues

    given, probs = _check_probs(given, pred_probs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(find_label_issues(given, probs, filter_by=filter_by), dtype=bool)


def cleanlab_scores(given, pred_probs, *, method: str = "self_confidence") -> np.ndarray:
    """cleanlab's per-sample ranking as an uncertainty score: ``1 - get_label_quality_scores`` (higher = worse).

    Parameters
    ----------
    given : (N,) int; pred_probs : (N, K); method : ``self_confidence`` | ``normalized_margin`` |
        ``confidence_weighted_entropy`` (``cleanlab.rank.get_label_quality_scores``).

    Returns
    -------
    (N,) float in [0, 1].
    """
    from cleanlab.rank import get_label_quality_scores

    given, probs = _check_probs(given, pred_probs)
    return 1.0 - np.asarray(get_label_quality_scores(given, probs, method=method), dtype=np.float64)


def _check_probs(given, pred_probs) -> tuple[np.ndarray, np.ndarray]:
    given = np.asarray(given).astype(np.int64)
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2 or given.shape != (len(probs),):
        raise ValueError(f"pred_probs must be (N, K) and given (N,), got {probs.shape} and {given.shape}")
    if not np.isfinite(probs).all():
        raise ValueError("pred_probs has non-finite rows (a fold that did not run?)")
    if given.size and (given.min() < 0 or given.max() >= probs.shape[1]):
        raise ValueError(f"given labels must lie in [0, {probs.shape[1]})")
    return given, probs


def cleanlab_table(runs, *, folds: int = 5, epochs: int | None = None, out_dir: str | os.PathLike | None = None,
                   filter_by: str = "prune_by_noise_rate") -> "object":
    """cleanlab's confident learning beside the methods: one row per distinct data setting of ``runs``.

    For each distinct (dataset, options, noise, train subset, seed) among the runs trained on flipped labels
    (settings without a flipped label are skipped), the training data are rebuilt exactly
    (:func:`ferlib.experiment.prepare_data` of :func:`spec_from_run`), K-fold CE probabilities are computed
    (:func:`kfold_ce_probs`, with the backbone and train settings of a CE run of that setting if there is one,
    else of the first run, and ``epochs`` if given), and cleanlab flags and ranks the given labels.

    Parameters
    ----------
    runs : runs folder, or RunRecords / run directories.
    folds : K (>= 2).
    epochs : epochs per fold (None = the run's).
    out_dir : parent of the fold runs, one sub-folder per setting (resumed); None = temporary folders.

    Returns
    -------
    pandas.DataFrame with the columns of :func:`uncertainty_table` (``method = "cleanlab"``, ``ranking =
    "1 - self_confidence"``) plus :func:`flag_metrics` of the flagged set (``precision, recall, f1,
    n_flagged``) and ``folds``, ``epochs``.
    """
    import pandas as pd

    from .experiment import prepare_data, run_id

    groups: dict[str, list[RunRecord]] = {}
    for run in load_runs(runs):
        if not run.flipped.any():
            continue  # nothing to find: detection metrics are undefined, and K trainings would be wasted
        r = run.result
        key = json.dumps([r.get("dataset"), str(r.get("data")), r.get("dataset_options"), r.get("noise"),
                          r.get("train_subset"), r.get("seed")], sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
    rows = []
    for members in groups.values():
        ref = next((m for m in members if m.result.get("method") == "ce"), members[0])
        spec = spec_from_run(ref)
        spec.method, spec.method_options = "ce", {}
        if epochs is not None:
            spec.train = dataclasses.replace(spec.train, epochs=int(epochs))
        data, _ = prepare_data(spec)
        tr = data.subset("train")
        if not np.array_equal(tr.ids.astype(str), ref.readout["ids"].astype(str)):
            raise RuntimeError(f"rebuilt train split of {ref.path} differs from its readout ids")
        where = None if out_dir is None else Path(out_dir) / f"{run_id(spec)}-k{int(folds)}"
        probs = kfold_ce_probs(data, k=folds, backbone=spec.backbone, train=spec.train, out_dir=where,
                               seed=spec.train.seed)
        flagged = cleanlab_issues(tr.labels, probs, filter_by=filter_by)
        score = cleanlab_scores(tr.labels, probs)
        flipped = tr.labels != tr.true_labels
        if where is not None:
            from .results import atomic_savez

            atomic_savez(where / "cleanlab.npz", ids=tr.ids.astype(str), probs=probs, flagged=flagged, score=score,
                         given=tr.labels, clean=tr.true_labels)
        rows.append({"run_id": f"cleanlab-{run_id(spec)}", "method": "cleanlab", "oracle": False,
                     "noise": ref.result.get("noise"), "noise_rate": ref.result.get("noise_rate"),
                     "seed": ref.result.get("seed"), "ranking": "1 - self_confidence",
                     **detection_metrics(score, flipped), **flag_metrics(flagged, flipped),
                     "folds": int(folds), "epochs": spec.train.epochs})
    return pd.DataFrame(rows)


# ============================================================================ tables
def parse_noise(spec: str) -> tuple[str, float]:
    """Split a noise spec into a protocol and its level, for grouping and plotting.

    ``"symmetric:0.3"`` -> ``("symmetric", 0.3)``; ``"imbalance:20+symmetric:0.3"`` ->
    ``("imbalance:20+symmetric", 0.3)`` (the level is the LAST step's parameter); ``"none"`` ->
    ``("none", 0.0)``; ``"annotator"`` -> ``("annotator", nan)``.
    """
    from .noise import NoiseSpec

    parsed = NoiseSpec.parse(spec)
    last = parsed.steps[-1]
    text = str(parsed)
    if last.rate is None:
        return text, (0.0 if last.protocol == "none" else float("nan"))
    return text.rsplit(":", 1)[0], float(last.rate)


_SUMMARY_KEYS = ("dataset", "method", "variant", "oracle", "protocol", "rate", "noise")
#: Run settings (``result.json`` fields) that also separate summary rows: runs differing in one are not averaged.
_SETTING_KEYS = ("train_subset", "epochs", "backbone.name", "image_size", "optimizer", "lr", "batch_size",
                 "selection")
_STAGES = ("last", "best")


def _variant(row) -> str:
    items = sorted((k.split(".", 1)[1], v) for k, v in row.items()
                   if k.startswith("method_options.") and not (isinstance(v, float) and math.isnan(v)))
    return ",".join(f"{k}={v}" for k, v in items)


def summary_table(results, *, metrics: Sequence[str] = ("acc", "mean_acc", "macro_f1"),
                  keys: Sequence[str] | None = None) -> "object":
    """Mean and standard deviation over seeds of each run setting's test metrics.

    Parameters
    ----------
    results : pandas.DataFrame, one row per run, as :func:`ferlib.results.collect_results` returns: columns
        ``method``, ``noise``, ``seed`` and ``last.<metric>`` (``best.<metric>`` too where present);
        ``oracle``, ``dataset``, ``best_epoch``, ``noise_rate`` (realised), ``time_per_epoch_s`` and
        ``method_options.<name>`` are used when present.
    metrics : metric names (``acc`` overall accuracy, ``mean_acc`` class-balanced accuracy, ``macro_f1``).
    keys : grouping columns; default those of ``dataset, method, variant, oracle, protocol, rate, noise`` and
        of the run settings ``train_subset, epochs, backbone.name, image_size, optimizer, lr, batch_size,
        selection`` that exist (runs that differ in a setting are not averaged together). ``variant`` is
        ``"k=v,..."`` of the method options ("" = the method's defaults); ``protocol`` and ``rate`` come from
        :func:`parse_noise`.

    Returns
    -------
    pandas.DataFrame, one row per setting, oracle rows last: the keys, ``n_seeds``, ``seeds`` (comma-joined),
    ``n_runs``, and for each ``<stage>.<metric>`` (stage ``last`` first: the primary number; then ``best``, the
    epoch picked on the validation split) plus ``best_epoch``, ``noise_rate`` and ``time_per_epoch_s``:
    ``<column>_mean`` and ``<column>_std`` (sample standard deviation over seeds, ddof = 1; NaN for a single
    seed). This is the table of ``summary.csv`` in a study's report (:mod:`ferlib.study.report`).
    """
    import pandas as pd

    need = ["method", "noise", "seed"] + [f"last.{m}" for m in metrics]
    missing = [c for c in need if c not in results.columns]
    if missing:
        raise ValueError(f"results lacks column(s) {missing}; expected collect_results() output")
    df = results.copy()
    parsed = [parse_noise(s) for s in df["noise"]]
    df["protocol"] = [p for p, _ in parsed]
    df["rate"] = [r for _, r in parsed]
    df["variant"] = [_variant(r) for r in df.to_dict("records")]
    if "oracle" in df:
        df["oracle"] = [bool(v) and v == v for v in df["oracle"]]  # NaN (missing) -> False
    keys = [k for k in (keys or _SUMMARY_KEYS + _SETTING_KEYS) if k in df.columns]
    values = [f"{s}.{m}" for s in _STAGES for m in metrics if f"{s}.{m}" in df.columns]
    values += [c for c in ("best_epoch", "noise_rate", "time_per_epoch_s") if c in df.columns]
    grouped = df.groupby(keys, dropna=False, sort=True)
    stats = grouped[values].agg(["mean", "std"])
    stats.columns = [f"{col}_{stat}" for col, stat in stats.columns]
    out = pd.concat([grouped["seed"].nunique().rename("n_seeds"),
                     grouped["seed"].agg(_seeds_text).rename("seeds"),
                     grouped.size().rename("n_runs"), stats], axis=1).reset_index()
    if "oracle" in out:  # oracle rows (upper bounds, not competitors) after the others, order kept
        out = out.sort_values("oracle", kind="stable").reset_index(drop=True)
    return out


def _seeds_text(seeds) -> str:
    """``"0,1,2"``: the distinct seeds of a group, sorted (integral floats written as integers)."""
    values = sorted({float(x) for x in seeds if x == x})
    return ",".join(str(int(x)) if x.is_integer() else str(x) for x in values)


def format_summary(table, *, metrics: Sequence[str] = ("acc", "mean_acc"), stages: Sequence[str] = _STAGES,
                   scale: float = 100.0, digits: int = 1) -> "object":
    """A readable copy of :func:`summary_table`: ``"mean ± std"`` strings (in %), oracle rows marked.

    Returns
    -------
    pandas.DataFrame with ``method`` (``" (oracle)"`` appended where ``oracle``), ``variant``, ``noise``,
    ``n_seeds`` and one column per ``<stage>.<metric>`` that ``table`` has.
    """
    import pandas as pd

    out = pd.DataFrame(index=table.index)
    for k in ("dataset", "method", "variant", "noise"):
        if k in table:
            out[k] = table[k]
    if "oracle" in table:
        out["method"] = [f"{m} (oracle)" if o else m for m, o in zip(table["method"], table["oracle"])]
    out["n_seeds"] = table["n_seeds"]
    for stage in stages:
        for m in metrics:
            col = f"{stage}.{m}"
            if f"{col}_mean" not in table:
                continue
            out[col] = [_mean_std(mu, sd, scale, digits) for mu, sd in zip(table[f"{col}_mean"], table[f"{col}_std"])]
    return out


def _mean_std(mu: float, sd: float, scale: float, digits: int) -> str:
    if mu is None or not np.isfinite(mu):
        return "–"
    text = f"{mu * scale:.{digits}f}"
    return text if sd is None or not np.isfinite(sd) else f"{text} ± {sd * scale:.{digits}f}"


def timing_table(results, *, baseline: str = "ce") -> "object":
    """Mean time per epoch of each method, and its ratio to the baseline's on the same device.

    Parameters
    ----------
    results : DataFrame of :func:`ferlib.results.collect_results` (``method``, ``time_per_epoch_s``,
        ``device`` and ``dataset`` used when present).
    baseline : method whose time is 1.0 (NaN ratios when it has no run on that device / dataset).

    Returns
    -------
    pandas.DataFrame: ``[dataset, device,] method, n_runs, time_per_epoch_s, ratio_to_<baseline>``.
    """
    keys = [k for k in ("dataset", "device") if k in results.columns]
    grouped = results.groupby(keys + ["method"], dropna=False)["time_per_epoch_s"]
    out = grouped.agg(["count", "mean"]).rename(columns={"count": "n_runs", "mean": "time_per_epoch_s"}).reset_index()
    base = out.loc[out["method"] == baseline, keys + ["time_per_epoch_s"]].rename(columns={"time_per_epoch_s": "_base"})
    if keys:
        out = out.merge(base, on=keys, how="left")
    else:
        out["_base"] = base["_base"].iloc[0] if len(base) else np.nan
    out[f"ratio_to_{baseline}"] = out["time_per_epoch_s"] / out.pop("_base")
    return out


def per_class_table(runs, *, stage: str = "last", split: str = "test") -> "object":
    """Per-class accuracy of each run (tidy), at the last or the best epoch.

    Returns
    -------
    pandas.DataFrame, one row per run and class: ``run_id, method, oracle, noise, seed, class, acc``
    (NaN for a class absent from the split).
    """
    import pandas as pd

    if stage not in _STAGES:
        raise ValueError(f"stage must be one of {_STAGES}, got {stage!r}")
    rows = []
    for run in load_runs(runs):
        if not run.history:
            continue
        if stage == "last":
            epoch = run.history[-1]
        else:
            epoch = next(h for h in run.history if h["epoch"] == run.result.get("best_epoch"))
        names = class_names_for(run)
        for name, acc in zip(names, epoch[split]["per_class_acc"]):
            rows.append({"run_id": run.run_id, "method": run.label, "oracle": bool(run.result.get("oracle")),
                         "noise": run.result.get("noise"), "seed": run.result.get("seed"), "class": name,
                         "acc": float("nan") if acc is None else float(acc)})
    return pd.DataFrame(rows)


def per_class_summary(runs, *, stage: str = "last", split: str = "test") -> "object":
    """:func:`per_class_table` averaged over seeds: one row per (method, noise, class) with ``acc_mean``,
    ``acc_std`` (ddof = 1) and ``n_seeds``; classes keep their canonical order."""
    table = per_class_table(runs, stage=stage, split=split)
    if table.empty:
        return table
    order = list(dict.fromkeys(table["class"]))
    out = (table.groupby(["method", "noise", "class"], sort=False)["acc"]
           .agg(acc_mean="mean", acc_std="std", n_seeds="count").reset_index())
    out["_order"] = out["class"].map(order.index)
    return out.sort_values(["noise", "method", "_order"]).drop(columns="_order").reset_index(drop=True)


def run_ablations(spec, methods: Iterable[str] | None = None, *, out: str | os.PathLike,
                  max_variants: int | None = None, resume: bool = True) -> "object":
    """Train every method's full configuration and each of its ablation variants on the same setting.

    Parameters
    ----------
    spec : base :class:`ferlib.experiment.RunSpec` or its ``asdict`` dict (data, noise, subset, training);
        its ``method`` and ``method_options`` are replaced per run, its ``out`` by ``out``.
    methods : method names; None = every registered method with a non-empty ``ablations`` dict.
    out : parent folder of the run directories.
    max_variants : run only the first n variants of each method (None = all); for smoke tests.

    Returns
    -------
    pandas.DataFrame, one row per run: ``method, variant`` (``"full"`` or the variant name), ``overrides``,
    ``run_id``, ``last.acc``, ``last.mean_acc``, ``last.macro_f1``, ``best.acc``, ``best.mean_acc``,
    ``time_per_epoch_s``, and ``delta_acc`` / ``delta_mean_acc`` (last epoch, variant minus full).
    """
    import pandas as pd

    from .experiment import RunSpec, run
    from .methods import list_methods, method_class

    base = spec if isinstance(spec, dict) else dataclasses.asdict(spec)
    if methods is None:
        methods = [m for m in list_methods() if method_class(m).ablations]
    rows = []
    for name in methods:
        variants = list(method_class(name).ablations.items())
        if max_variants is not None:
            variants = variants[:int(max_variants)]
        for variant, overrides in [("full", {})] + variants:
            own = (base.get("method_options") or {}) if name == base.get("method") else {}
            options = {**own, **overrides}
            s = RunSpec(**{**base, "method": name, "method_options": options, "out": str(out)})
            res = run(s, resume=resume)
            rows.append({"method": name, "variant": variant, "overrides": json.dumps(overrides, sort_keys=True),
                         "run_id": res["run_id"], "oracle": bool(res.get("oracle")),
                         **{f"{st}.{m}": res[st][m] for st in _STAGES for m in ("acc", "mean_acc", "macro_f1")},
                         "time_per_epoch_s": res["time_per_epoch_s"]})
    table = pd.DataFrame(rows, columns=["method", "variant", "overrides", "run_id", "oracle", "last.acc",
                                        "last.mean_acc", "last.macro_f1", "best.acc", "best.mean_acc",
                                        "best.macro_f1", "time_per_epoch_s"])
    for m in ("acc", "mean_acc"):
        full = table[table["variant"] == "full"].set_index("method")[f"last.{m}"]
        table[f"delta_{m}"] = table[f"last.{m}"] - table["method"].map(full)
    return table


# ============================================================================ data preparation
def sample_faces(data, per_class: int = 6, *, split: str = "train", seed: int = 0):
    """Up to ``per_class`` random faces of each class of one split, class by class.

    Returns
    -------
    images : (n, H, W, C) uint8; titles : n class names; rows : (n,) row indices into ``data``.
    """
    rng = np.random.default_rng(seed)
    in_split = np.flatnonzero(data.split == split)
    rows = np.concatenate([rng.permutation(in_split[data.labels[in_split] == k])[:per_class]
                           for k in range(data.num_classes)] or [np.zeros(0, np.int64)]).astype(np.int64)
    return data.images[rows], [data.classes[k] for k in data.labels[rows]], rows


def noise_table(report: Mapping) -> "object":
    """Per-class view of :func:`ferlib.noise.apply_noise`'s report: clean and noisy counts and the flip rate.

    Returns
    -------
    pandas.DataFrame indexed by class name: ``clean_count``, ``noisy_count``, ``flip_rate`` (fraction of the
    class's clean samples whose given label differs).
    """
    import pandas as pd

    train = report["train"]
    return pd.DataFrame({"clean_count": train["counts"]["clean"], "noisy_count": train["counts"]["noisy"],
                         "flip_rate": train["per_class_rate"]}).rename_axis("class")


def noise_examples(data, n: int = 16, *, seed: int = 0):
    """Up to ``n`` random train faces whose given label differs from the clean one.

    Returns
    -------
    images : (m, H, W, C) uint8; titles : m strings ``"clean->given"``.
    """
    train = data.subset("train")
    flipped = np.flatnonzero(train.labels != train.true_labels)
    rows = np.sort(np.random.default_rng(seed).permutation(flipped)[:n])
    names = data.classes
    return train.images[rows], [f"{names[c][:5]}->{names[g][:5]}" for c, g in
                                zip(train.true_labels[rows], train.labels[rows])]


def try_landmarks(data, *, backend: str = "dlib", limit: int | None = 64,
                  cache_dir: str | os.PathLike | None = None):
    """Landmarks of the first ``limit`` train faces through :func:`ferlib.landmarks.extract_landmarks` (cached).

    Returns
    -------
    (landmarks, images, message)
        ``landmarks`` : a ``ferlib.landmarks.Landmarks`` (``points`` (n, 68, 2), ``ok`` (n,)) or None when
        skipped (``backend="none"``) or unavailable (module, dependency or model file missing);
        ``images`` : the (n, H, W, C) faces they belong to; ``message`` : what happened.
    """
    train = data.subset("train")
    images = train.images if limit is None else train.images[:int(limit)]
    if backend in (None, "", "none"):
        return None, images, "landmarks skipped (landmarks_backend='none')"
    try:
        from .landmarks import extract_landmarks
    except ImportError as exc:
        return None, images, f"ferlib.landmarks unavailable: {exc}"
    subset = train if limit is None else train.select(np.arange(min(int(limit), len(train))))
    try:
        lm = extract_landmarks(subset, backend=backend, cache_dir=cache_dir, progress=False)
    except (ImportError, OSError, RuntimeError) as exc:  # dependency or model file missing
        return None, images, f"landmarks backend {backend!r} unavailable: {type(exc).__name__}: {exc}"
    return lm, images, f"{backend}: {int(np.sum(lm.ok))}/{len(lm.ok)} faces with a plausible shape"


def va_values(data, source: str = "auto", *, root: str | os.PathLike | None = None,
              model_limit: int | None = None):
    """Valence-arousal (or other auxiliary) values of the TRAIN split from a source of :mod:`ferlib.va`.

    Parameters
    ----------
    data : FERData.
    source : ``"auto"`` (AffectNet: its annotations; data with votes: the ORACLE vote projection; else none),
        ``"none"``, ``"affectnet"`` (the dataset's own VA, needs ``root``), ``"oracle_votes"`` (ORACLE: circumplex
        projection of the human votes), ``"csv:<path>"`` (keyed by id), ``"onnx:<path>"`` (a VA regressor).
    root : dataset root (for ``affectnet``).
    model_limit : for a model source (``onnx``), the first n train faces only (None = all): slow on CPU.

    Returns
    -------
    (values, labels, message) : (n, 2) float32 or None, the (n,) given labels, and a description (``ORACLE``
    flagged).
    """
    train = data.subset("train")
    if source == "auto":
        source = "affectnet" if data.name == "affectnet" else ("oracle_votes" if data.votes is not None else "none")
    if source == "none":
        return None, train.labels, "no auxiliary source"
    try:
        from . import va
    except ImportError as exc:
        return None, train.labels, f"ferlib.va unavailable: {exc}"
    kind, _, arg = source.partition(":")
    try:
        if kind == "oracle_votes":
            if train.votes is None:
                return None, train.labels, "oracle_votes needs human votes; this dataset has none"
            return va.oracle_va_from_votes(train.votes), train.labels, "ORACLE: circumplex projection of human votes"
        if kind == "affectnet":
            from .data import affectnet_va

            table = affectnet_va(root).drop_duplicates("id").set_index("id")
            values = table.loc[train.ids.astype(str), ["valence", "arousal"]].to_numpy(np.float32)
            return values, train.labels, "AffectNet valence-arousal annotations"
        if kind == "csv":
            return va.va_from_csv(arg, train.ids), train.labels, f"VA from {arg}"
        if kind == "onnx":
            if model_limit is not None:
                train = train.select(np.arange(min(int(model_limit), len(train))))
            return va.va_from_onnx(arg, train.images), train.labels, f"pseudo-VA from ONNX model {arg}"
    except (ImportError, FileNotFoundError, KeyError, OSError) as exc:
        return None, train.labels, f"auxiliary source {source!r} unavailable: {type(exc).__name__}: {exc}"
    raise ValueError(f"unknown va source {source!r}; valid: auto, none, affectnet, oracle_votes, csv:<path>, "
                     "onnx:<path>")


def va_summary(values: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> "object":
    """Per-class count, mean and std of (n, 2) valence-arousal values, as a DataFrame."""
    import pandas as pd

    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels)
    rows = []
    for k, name in enumerate(class_names):
        v = values[labels == k]
        rows.append({"class": name, "n": len(v),
                     "valence_mean": v[:, 0].mean() if len(v) else np.nan,
                     "valence_std": v[:, 0].std() if len(v) else np.nan,
                     "arousal_mean": v[:, 1].mean() if len(v) else np.nan,
                     "arousal_std": v[:, 1].std() if len(v) else np.nan})
    return pd.DataFrame(rows)


# ============================================================================ embeddings
def embed_umap(features, *, random_state: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
               metric: str = "euclidean") -> np.ndarray:
    """2-D UMAP embedding (umap-learn, imported on first call) of (N, D) features, reproducible for a seed.

    ``n_neighbors`` is capped at N - 1 for small N. Returns (N, 2) float32.
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"features must be (N, D) with N >= 3, got {x.shape}")
    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state; spectral init on tiny data
        reducer = umap.UMAP(n_neighbors=min(int(n_neighbors), len(x) - 1), min_dist=min_dist, metric=metric,
                            random_state=random_state)
        return reducer.fit_transform(x).astype(np.float32)


def run_embeddings(run, *, max_points: int | None = 2000, random_state: int = 0) -> dict:
    """UMAP embeddings of one run's test and train features with the labels to colour them by.

    Features are the saved ones or recomputed from ``model.pt`` (:func:`run_features`). At most ``max_points``
    samples per split (a fixed random subset) are embedded.

    Returns
    -------
    dict
        ``test`` : ((n, 2) embedding, {"clean label": (n,)}); ``train`` : ((m, 2) embedding, {"clean label",
        "noisy (given) label", "flipped"}); ``silhouette_test`` / ``silhouette_train_clean`` /
        ``silhouette_train_given`` : :func:`silhouette` of the raw features by those labels.
    """
    run = load_runs(run)[0]
    feats = run_features(run)
    rng = np.random.default_rng(random_state)

    def pick(n: int) -> np.ndarray:
        return np.sort(rng.choice(n, size=max_points, replace=False)) if max_points and n > max_points else np.arange(n)

    te = pick(len(feats["test"]))
    tr = pick(len(feats["train"]))
    test_y = np.asarray(run.readout["test_labels"])[te]
    clean, given = np.asarray(run.readout["clean"])[tr], np.asarray(run.readout["given"])[tr]
    return {
        "test": (embed_umap(feats["test"][te], random_state=random_state), {"test: clean label": test_y}),
        "train": (embed_umap(feats["train"][tr], random_state=random_state),
                  {"train: clean label": clean, "train: given (noisy) label": given, "train: flipped": given != clean}),
        "silhouette_test": silhouette(feats["test"][te], test_y),
        "silhouette_train_clean": silhouette(feats["train"][tr], clean),
        "silhouette_train_given": silhouette(feats["train"][tr], given),
    }


def silhouette(features, labels) -> float:
    """Silhouette score of (N, D) features grouped by (N,) labels (sklearn; NaN with < 2 labels present)."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(labels):
        return float("nan")
    return float(silhouette_score(np.asarray(features, dtype=np.float32), labels))


# ============================================================================ plots
def _figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (4.0, 3.2), **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _heatmap(ax, matrix: np.ndarray, labels: Sequence[str], *, fmt: str, vmax: float | None = None,
             xlabel: str, ylabel: str) -> None:
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    top = np.nanmax(matrix) if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        if np.isfinite(v):
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7,
                    color="white" if top and v > 0.6 * top else "black")
    ax.figure.colorbar(im, ax=ax, shrink=0.8)


def plot_confusion(confusion, class_names: Sequence[str], *, normalize: bool = True, title: str = ""):
    """Heatmap of a (K, K) confusion matrix (row = true class); rows normalised to recall when ``normalize``."""
    cm = np.asarray(confusion, dtype=np.float64)
    if normalize:
        rows = cm.sum(1, keepdims=True)
        cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, axes = _figure(size=(5.5, 4.5))
    _heatmap(axes[0, 0], cm, class_names, fmt=".2f" if normalize else ".0f", vmax=1.0 if normalize else None,
             xlabel="predicted", ylabel="true")
    axes[0, 0].set_title(title or ("confusion (row-normalised)" if normalize else "confusion"))
    return fig


def plot_learning_curves(epochs, *, title: str = ""):
    """Training loss terms and valid/test accuracy per epoch of one run's ``epochs.csv`` (a DataFrame)."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(1, 2, size=(4.5, 3.2))
    loss_ax, acc_ax = axes[0]
    for col in [c for c in epochs.columns if c.startswith("train_")]:
        loss_ax.plot(epochs["epoch"], epochs[col], marker="o", label=col.removeprefix("train_"))
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss")
    loss_ax.legend(fontsize=7)
    for col, style in (("valid_acc", "-"), ("test_acc", "-"), ("valid_mean_acc", "--"), ("test_mean_acc", "--")):
        if col in epochs:
            acc_ax.plot(epochs["epoch"], epochs[col], style, marker="o", label=col)
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy (true labels)", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_transition(transition, class_names: Sequence[str], *, title: str = "realised transition P(given | clean)"):
    """Heatmap of a (C, C) noise transition matrix (row = clean class, column = given class)."""
    fig, axes = _figure(size=(5.5, 4.5))
    _heatmap(axes[0, 0], np.asarray(transition, dtype=np.float64), class_names, fmt=".2f", vmax=1.0,
             xlabel="given (noisy) label", ylabel="clean label")
    axes[0, 0].set_title(title)
    return fig


def plot_bars(frame, *, x: str, y: str, hue: str | None = None, yerr: str | None = None, title: str = "",
              ylabel: str | None = None, ylim: tuple[float, float] | None = None):
    """Grouped bar chart of a tidy DataFrame: groups along ``x``, one bar per ``hue`` value, height ``y``.

    Several rows for one (x, hue) pair (e.g. seeds) are averaged, with their standard deviation (ddof = 1) as
    the error bar unless ``yerr`` names a column of error values.
    """
    groups = list(dict.fromkeys(frame[x]))
    hues = list(dict.fromkeys(frame[hue])) if hue else [None]
    fig, axes = _figure(size=(min(max(4.0, 0.3 * len(groups) * len(hues)), 12.0), 3.4))
    ax = axes[0, 0]
    width = 0.8 / len(hues)
    for j, h in enumerate(hues):
        sub = frame if h is None else frame[frame[hue] == h]
        grouped = sub.groupby(x, sort=False)
        height = grouped[y].mean().reindex(groups)
        err = (grouped[yerr].mean() if yerr else grouped[y].std()).reindex(groups).fillna(0)
        pos = np.arange(len(groups)) - 0.4 + width * (j + 0.5)
        ax.bar(pos, height.to_numpy(dtype=float), width, yerr=err.to_numpy(dtype=float),
               error_kw={"elinewidth": 0.8, "capsize": 2}, label=None if h is None else str(h))
    ax.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=30, ha="right")
    ax.set(ylabel=ylabel or y, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    if hue:
        ax.legend(fontsize=7)
    return fig


def face_grid(images, titles: Sequence[str] | None = None, *, ncols: int = 8, size: float = 1.3,
              title: str = "", title_colors: Sequence[str] | None = None):
    """A grid of (N, H, W[, C]) uint8 faces with optional per-face titles (grayscale for one channel)."""
    images = np.asarray(images)
    n = len(images)
    ncols = max(1, min(ncols, n or 1))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = _figure(nrows, ncols, size=(size, size + (0.35 if titles is not None else 0)))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7, color=(title_colors[i] if title_colors else "black"))
    if title:
        fig.suptitle(title)
    return fig


def plot_distributions(images, distributions: Mapping[str, np.ndarray], class_names: Sequence[str],
                       titles: Sequence[str] | None = None):
    """For each face: the image and grouped bars of several (n, K) label distributions (e.g. votes vs methods)."""
    images = np.asarray(images)
    n = len(images)
    fig, axes = _figure(max(n, 1), 2, size=(3.2, 2.0), gridspec_kw={"width_ratios": [1, 3]})
    names = list(distributions)
    width = 0.8 / max(len(names), 1)
    for i in range(n):
        img = images[i][..., 0] if images[i].shape[-1] == 1 else images[i]
        axes[i, 0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        axes[i, 0].axis("off")
        if titles is not None:
            axes[i, 0].set_title(str(titles[i]), fontsize=7)
        for j, name in enumerate(names):
            pos = np.arange(len(class_names)) - 0.4 + width * (j + 0.5)
            axes[i, 1].bar(pos, np.asarray(distributions[name])[i], width, label=name)
        axes[i, 1].set_ylim(0, 1)
        axes[i, 1].set_xticks(range(len(class_names)), class_names if i == n - 1 else [], rotation=30, ha="right",
                              fontsize=7)
    if n:
        axes[0, 1].legend(fontsize=6, ncols=2)
    return fig


def plot_noise_curve(summary, *, metric: str = "last.acc", title: str = ""):
    """Accuracy vs noise level per method, one panel per protocol, error bars = std over seeds.

    ``summary`` is :func:`summary_table`'s output. Rows with ``noise == "none"`` are drawn at level 0 of every
    single-step flip protocol (``symmetric``, ``class_dependent``); only default-configuration rows
    (``variant == ""``) are drawn.
    """
    import pandas as pd

    df = summary[summary["variant"] == ""] if "variant" in summary else summary
    clean = df[df["protocol"] == "none"]
    protocols = [p for p in dict.fromkeys(df["protocol"]) if p != "none"] or ["none"]
    fig, axes = _figure(1, len(protocols), size=(4.5, 3.4))
    for ax, proto in zip(axes[0], protocols):
        sub = df[df["protocol"] == proto]
        if proto in ("symmetric", "class_dependent"):
            sub = pd.concat([sub, clean])
        for method, rows in sub.groupby("method", sort=True):
            rows = rows.sort_values("rate")
            oracle = bool(rows["oracle"].iloc[0]) if "oracle" in rows else False
            ax.errorbar(rows["rate"], rows[f"{metric}_mean"], yerr=rows[f"{metric}_std"].fillna(0),
                        marker="o", capsize=3, linestyle="--" if oracle else "-",
                        label=f"{method}{' (oracle)' if oracle else ''}")
        ax.set(xlabel="noise level", ylabel=metric, title=proto)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_embedding(xy, colourings: Mapping[str, np.ndarray], *, class_names: Sequence[str] | None = None,
                   title: str = "", size: float = 4.0):
    """Scatter of an (N, 2) embedding, one panel per colouring (``{panel title: (N,) int or bool labels}``)."""
    xy = np.asarray(xy)
    fig, axes = _figure(1, len(colourings), size=(size, size))
    for ax, (name, labels) in zip(axes[0], colourings.items()):
        labels = np.asarray(labels)
        if labels.dtype == bool:
            groups = [(False, "clean label", "lightgrey"), (True, "flipped", "crimson")]
            for value, text, colour in groups:
                m = labels == value
                ax.scatter(xy[m, 0], xy[m, 1], s=6, c=colour, label=f"{text} ({m.sum()})")
        else:
            cmap = _cmap(10 if labels.size == 0 else max(int(labels.max()) + 1, 1))
            for k in np.unique(labels):
                m = labels == k
                text = class_names[k] if class_names is not None and k < len(class_names) else str(k)
                ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(int(k)), label=text)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, markerscale=2)
    if title:
        fig.suptitle(title)
    return fig


def _cmap(n: int):
    import matplotlib

    return matplotlib.colormaps["tab10" if n <= 10 else "tab20"]


def plot_va(values, labels, class_names: Sequence[str], *, title: str = "auxiliary space"):
    """Scatter of (n, 2) valence-arousal values coloured by class, on [-1, 1] axes."""
    fig = plot_embedding(values, {title: np.asarray(labels)}, class_names=class_names, size=4.5)
    ax = fig.axes[0]
    ticks = [-1, -0.5, 0, 0.5, 1]
    ax.set(xlabel="valence", ylabel="arousal", xticks=ticks, yticks=ticks)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    return fig


# ============================================================================ notebook plumbing
def chdir_repo_root(start: str | os.PathLike | None = None) -> Path:
    """Change to the nearest folder at or above ``start`` (default: cwd) holding ``ferlib/`` and ``pyproject.toml``.

    Notebooks use paths relative to the repository root (``data/...``, ``runs/...``); this makes them work
    whether started from the root (papermill, ``make study``) or from ``notebooks/`` (Jupyter).
    Stays put, returning the cwd, when no such folder exists.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "ferlib" / "__init__.py").is_file():
            os.chdir(folder)
            return folder
    return Path.cwd()


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110):
    """Save a figure (PNG by suffix) creating folders; a pyplot-managed figure is closed so it displays once.

    Returns the figure, so ``save_figure(fig, ...)`` as a cell's last expression shows it.
    """
    import sys

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        if getattr(fig, "number", None) is not None and plt.fignum_exists(fig.number):
            plt.close(fig)
    return fig


def record_metrics(study_dir: str | os.PathLike, name: str, metrics: Mapping) -> Path:
    """Write a notebook's key metrics to ``<study_dir>/<name>.json`` (atomically) and print them.

    The notebooks' last cell calls this; the test suite and the study runner read the file back.
    """
    path = write_json(Path(study_dir) / f"{name}.json", dict(metrics))
    print(json.dumps(dict(metrics), indent=2, default=_jsonable))
    print(f"metrics written to {path}")
    return path


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
