"""Mislabel detection: per-sample uncertainty rankings, AUROC / AP, K-fold CE probabilities and cleanlab."""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .distributions import softmax
from .plots import face_grid
from .runs import RunRecord, class_names_for, images_by_id, load_runs, run_dataset, spec_from_run

__all__ = [
    "RANKINGS", "detection_metrics", "flag_metrics", "uncertainty_table", "extreme_samples", "plot_extremes",
    "kfold_ce_probs", "cleanlab_issues", "cleanlab_scores", "cleanlab_table",
]


RANKINGS: Mapping[str, str] = {
    "score": "the method's own ranking (readout ``method_score``)",
    "loss": "latest per-sample cross-entropy on the given label (``method_loss``)",
    "neg_margin": "minus the latest margin of the given label (``-method_margin``)",
}


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

    from ..backbones import BackboneConfig, create_model
    from ..engine import TrainConfig, fit
    from ..methods import create_method

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

    from ..experiment import prepare_data, run_id

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
            from ..results import atomic_savez

            atomic_savez(where / "cleanlab.npz", ids=tr.ids.astype(str), probs=probs, flagged=flagged, score=score,
                         given=tr.labels, clean=tr.true_labels)
        rows.append({"run_id": f"cleanlab-{run_id(spec)}", "method": "cleanlab", "oracle": False,
                     "noise": ref.result.get("noise"), "noise_rate": ref.result.get("noise_rate"),
                     "seed": ref.result.get("seed"), "ranking": "1 - self_confidence",
                     **detection_metrics(score, flipped), **flag_metrics(flagged, flipped),
                     "folds": int(folds), "epochs": spec.train.epochs})
    return pd.DataFrame(rows)
