"""Mislabel detection: per-sample uncertainty rankings, AUROC / AP / FNR at the noise rate, cross-fitted CE
probabilities and cleanlab, and their mean ± std over seeds."""
from __future__ import annotations

import json
import warnings
from typing import Mapping, Sequence

import numpy as np

from .distributions import softmax
from .plots import face_grid
from .runs import RunRecord, class_names_for, images_by_id, load_runs, run_dataset, run_start
from .seeds import seed_summary
from .style import FLIP_COLOURS, NOT_DETECTORS, method_of

__all__ = [
    "RANKINGS", "detection_metrics", "flag_metrics", "ranking_score", "uncertainty_table", "extreme_samples",
    "plot_extremes", "fold_groups", "out_of_sample_probs", "cleanlab_issues", "cleanlab_scores", "cleanlab_table",
    "detection_summary", "best_rankings", "best_ranking_words",
    "relabel_summary", "relabel_table",
]


RANKINGS: Mapping[str, str] = {
    "score": "the method's own ranking (readout ``method_score``)",
    "loss": "latest per-sample cross-entropy on the given label (``method_loss``)",
    "neg_margin": "minus the latest margin of the given label (``-method_margin``)",
    "neg_aum": "minus the training-averaged margin (AUM, Pleiss et al. 2020; ``-method_aum``): every method's "
               "method-independent detector",
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
        the ``n_flipped`` highest scores, ``fnr_at_n`` : false-negative rate when those ``n_flipped`` samples are
        flagged (flagging as many as the noise rate flips): the share of flipped labels not among them (0 =
        all found, 1 = none; flagging exactly ``n_flipped``, precision equals recall, so this is
        ``1 - p_at_n``), ``rate`` : fraction flipped, ``n``, ``n_flipped``, ``n_missing`` (NaN scores filled).
        The ranking metrics are NaN when all or no sample is flipped.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    score, flipped = _check_score(score, is_flipped)
    missing = ~np.isfinite(score)
    if missing.all():
        score = np.zeros_like(score)
    elif missing.any():
        score = np.where(missing, np.median(score[~missing]), score)
    n, n_flip = len(score), int(flipped.sum())
    out = {"auroc": float("nan"), "ap": float("nan"), "p_at_n": float("nan"), "fnr_at_n": float("nan"),
           "rate": n_flip / n if n else float("nan"), "n": n, "n_flipped": n_flip, "n_missing": int(missing.sum())}
    if 0 < n_flip < n:
        found = int(flipped[np.argsort(-score, kind="stable")[:n_flip]].sum())
        out.update(auroc=float(roc_auc_score(flipped, score)), ap=float(average_precision_score(flipped, score)),
                   p_at_n=found / n_flip, fnr_at_n=(n_flip - found) / n_flip)
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


def ranking_score(readout: Mapping[str, np.ndarray], name: str) -> np.ndarray | None:
    """One of a read-out's per-sample rankings (:data:`RANKINGS`) as a score, higher = more likely mislabelled.

    Returns (N,) float64, or None when the read-out lacks it (an older run). Raises ValueError for an unknown
    name, listing the valid ones.
    """
    if name not in RANKINGS:
        raise ValueError(f"unknown ranking {name!r}; valid: {', '.join(RANKINGS)}")
    negated = name.startswith("neg_")
    key = f"method_{name[4:] if negated else name}"
    if key not in readout:
        return None
    values = np.asarray(readout[key], dtype=np.float64)
    return -values if negated else values


def uncertainty_table(runs, *, rankings: Sequence[str] = ("score", "loss", "neg_margin", "neg_aum")) -> "object":
    """Mislabel-detection quality of each run's per-sample rankings.

    Parameters
    ----------
    runs : runs folder (e.g. ``runs/smoke``), or RunRecords / run directories.
    rankings : which rankings to measure, among :data:`RANKINGS` (``score`` = the method's own).

    Returns
    -------
    pandas.DataFrame, one row per run and ranking: ``run_id, method, oracle, noise, noise_rate, seed,
    start`` (:func:`~ferlib.analysis.runs.run_start`: ``"random"``, ``"ssl"`` or a weights file), ``ranking``
    and :func:`detection_metrics` (``auroc, ap, p_at_n, fnr_at_n, rate, n, n_flipped, n_missing``).
    """
    import pandas as pd

    rows = []
    for run in load_runs(runs):
        for name in rankings:
            score = ranking_score(run.readout, name)
            if score is None:
                continue
            rows.append({"run_id": run.run_id, "method": run.label, "oracle": bool(run.result.get("oracle")),
                         "noise": run.result.get("noise"), "noise_rate": run.result.get("noise_rate"),
                         "seed": run.result.get("seed"), "start": run_start(run), "ranking": name,
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
    colours = [FLIP_COLOURS["flipped"] if f else "black" for f in table["flipped"]] if len(table) else None
    return face_grid(images, titles, ncols=k, title_colors=colours,
                     title=f"{run.label} ({run.run_id}): top row most, bottom row least uncertain; "
                           "red = flipped (given/clean)")


def fold_groups(runs) -> list[list[RunRecord]]:
    """The fold runs (RunSpec ``fold = [i, k]``) among ``runs``, one list per data setting (dataset, data, noise,
    noise seed, train subset, seed, epochs) whose k folds have all finished; other runs are ignored."""
    groups: dict[str, list[RunRecord]] = {}
    for run in load_runs(runs):
        r = run.result
        if r.get("fold"):
            key = json.dumps([r.get(k) for k in ("dataset", "data", "dataset_options", "noise", "noise_seed",
                                                 "train_subset", "seed", "epochs")], sort_keys=True, default=str)
            groups.setdefault(key, []).append(run)
    return [members for members in groups.values() if len(members) >= members[0].result["fold"][1]]


def out_of_sample_probs(fold_runs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cross-fitted probabilities from the k runs of one data setting's folds (RunSpec ``fold = [i, k]``).

    Each fold run trained on the other folds and predicted its held-out fold as its test split, with its last
    epoch's model; together they predict every training sample once, out of sample: cleanlab's ``pred_probs``.

    Parameters
    ----------
    fold_runs : the k RunRecords (or run directories) of one setting, folds 0..k-1 each once.

    Returns
    -------
    ``(ids, given, clean, probs)``: (N,) str sample ids, (N,) int given (possibly flipped) and clean labels,
    (N, K) float64 probabilities, sorted by id.

    Raises
    ------
    ValueError naming the setting when a fold is missing or twice, or two folds predict the same sample.
    """
    runs = load_runs(fold_runs)
    folds = sorted(tuple(r.result.get("fold") or ()) for r in runs)
    k = folds[0][1] if folds and len(folds[0]) == 2 else 0
    if folds != [(i, k) for i in range(k)]:
        raise ValueError(f"fold runs {[r.run_id for r in runs]} are folds {folds}, not 0..k-1 of one k")
    ids = np.concatenate([r.readout["test_ids"].astype(str) for r in runs])
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"fold runs {[r.run_id for r in runs]} predict some sample twice (other data?)")
    order = np.argsort(ids, kind="stable")
    cat = lambda key: np.concatenate([r.readout[key] for r in runs])[order]  # noqa: E731
    return ids[order], cat("test_given").astype(np.int64), cat("test_labels").astype(np.int64), \
        softmax(cat("test_logits").astype(np.float64))


def cleanlab_issues(given, pred_probs, *, filter_by: str = "prune_by_noise_rate") -> np.ndarray:
    """Confident learning (Northcutt et al., JAIR 2021): which given labels cleanlab flags as issues.

    A thin call of ``cleanlab.filter.find_label_issues``.

    Parameters
    ----------
    given : (N,) int given labels in [0, K).
    pred_probs : (N, K) out-of-sample probabilities (:func:`out_of_sample_probs`).
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


def cleanlab_table(runs, *, filter_by: str = "prune_by_noise_rate") -> "object":
    """cleanlab's confident learning beside the methods: one row per data setting the fold runs cover.

    The study trains the fold cells (:meth:`ferlib.study.StudySpec.fold_specs`: k CE runs per noise and seed,
    each holding one fold of the train split out); this reads them, builds :func:`out_of_sample_probs` and
    lets cleanlab flag and rank the given labels. Settings without a flipped label are skipped (detection
    metrics are undefined there).

    Parameters
    ----------
    runs : the fold runs folder (``<runs_dir>/cleanlab``), or RunRecords / run directories; runs that are not
        folds are ignored, and a setting with a fold still missing is left out.
    filter_by : :func:`cleanlab_issues`'s method.

    Returns
    -------
    pandas.DataFrame with the columns of :func:`uncertainty_table` (``method = "cleanlab"``, ``ranking =
    "1 - self_confidence"``: ``auroc, ap, p_at_n, fnr_at_n`` ... of cleanlab's ranking) plus :func:`flag_metrics`
    of the flagged set (``precision, recall, f1, n_flagged``) and ``folds``, ``epochs``.
    """
    import pandas as pd

    rows = []
    for members in fold_groups(runs):
        k = members[0].result["fold"][1]
        ids, given, clean, probs = out_of_sample_probs(members)
        flipped = given != clean
        if not flipped.any():
            continue
        ref = members[0].result
        rows.append({"run_id": "cleanlab-" + ref["run_id"].rsplit("-", 1)[0], "method": "cleanlab",
                     "oracle": False, "noise": ref.get("noise"), "noise_rate": float(flipped.mean()),
                     "seed": ref.get("seed"), "start": run_start(members[0]),
                     "ranking": "1 - self_confidence",
                     **detection_metrics(cleanlab_scores(given, probs), flipped),
                     **flag_metrics(cleanlab_issues(given, probs, filter_by=filter_by), flipped),
                     "folds": int(k), "epochs": ref.get("epochs")})
    return pd.DataFrame(rows)


def detection_summary(table) -> "object":
    """Detection quality averaged over seeds: one row per ``method, noise, start, ranking``.

    Parameters
    ----------
    table : pandas.DataFrame, one row per run and ranking: :func:`uncertainty_table`, with the rows of
        :func:`cleanlab_table` concatenated or not.

    Returns
    -------
    pandas.DataFrame: those keys (``start`` where the table has it), ``n_seeds, seeds, n_runs``, and
    ``<metric>_mean``, ``<metric>_std`` (ddof = 1; NaN for one seed) for ``auroc, ap, fnr_at_n`` and ``rate``
    (the flip rate: the chance level of AP).
    """
    return seed_summary(table, ("method", "noise", "start", "ranking"), ("auroc", "ap", "fnr_at_n", "rate"))


def best_rankings(summary, *, metric: str = "auroc") -> "object":
    """The answer of the detection view: per noise setting, each kind of ranking's best method, best first.

    Parameters
    ----------
    summary : :func:`detection_summary` (cleanlab's rows included or not). Oracle methods (labels ending in
        ``(oracle)``: they read the human votes) and :data:`~ferlib.analysis.style.NOT_DETECTORS` are left out.
    metric : what "best" means (``auroc`` or ``ap``).

    Returns
    -------
    pandas.DataFrame, one row per noise (and start) and ranking: ``noise, start, ranking, method``, ``n_seeds``,
    ``auroc_mean, auroc_std, ap_mean, ap_std, rate_mean, rate_std`` (those present) and ``best`` (True on the
    noise's best row); rows of a noise in decreasing ``<metric>_mean``.
    """
    import pandas as pd

    if summary.empty:
        return summary
    keep = ~summary["method"].astype(str).str.endswith("(oracle)")
    keep &= ~pd.Series([(method_of(m), r) in NOT_DETECTORS for m, r in zip(summary["method"], summary["ranking"])],
                       index=summary.index)
    df = summary[keep & summary[f"{metric}_mean"].notna()]
    keys = [k for k in ("noise", "start") if k in df]
    best = df.loc[df.groupby([*keys, "ranking"], sort=False)[f"{metric}_mean"].idxmax()]
    best = best.sort_values([*keys, f"{metric}_mean"], ascending=[True] * len(keys) + [False], kind="stable")
    best["best"] = ~best.duplicated(keys)
    columns = [*keys, "ranking", "method", "n_seeds",
               *(c for c in ("auroc_mean", "auroc_std", "ap_mean", "ap_std", "rate_mean", "rate_std") if c in best),
               "best"]
    return best[columns].reset_index(drop=True)


def best_ranking_words(best) -> list[str]:
    """One sentence per noise setting (and start) of :func:`best_rankings`: which ranking of which method finds
    the flipped labels best, with its AUROC and AP beside the chance level of AP (the flip rate)."""
    from .style import RANKING_NAMES, method_label, noise_label

    lines = []
    for r in best[best["best"]].to_dict("records"):
        who = ("cleanlab on the cross-fitted CE folds" if r["method"] == "cleanlab"
               else f"{RANKING_NAMES.get(r['ranking'], r['ranking'])} of {method_label(r['method'])}")
        lines.append(f"{noise_label(r['noise'])}: {who} finds the flipped labels best, AUROC "
                     f"{r['auroc_mean']:.3f}, average precision {r['ap_mean']:.3f} (chance {r['rate_mean']:.3f}; "
                     f"means over {r['n_seeds']} seed{'' if r['n_seeds'] == 1 else 's'}).")
    return lines


def relabel_summary(label, given, clean) -> dict[str, float]:
    """How good a method's relabelling was (SCN, RUL with relabelling), scored against the clean labels.

    label, given, clean : (N,) int final training labels (read-out ``label``), given (noisy) labels and clean
    labels. Returns ``relabelled`` (samples whose final label differs from the given one), ``fixed`` (of those,
    given wrong and final right), ``broken`` (given right, final wrong), ``precision`` (fixed / relabelled;
    NaN when none) and ``recall`` (fixed / samples with a wrong given label; NaN when none).
    """
    label, given, clean = (np.asarray(a) for a in (label, given, clean))
    changed, wrong = label != given, given != clean
    fixed = int(np.sum(changed & wrong & (label == clean)))
    n, n_wrong = int(changed.sum()), int(wrong.sum())
    return {"relabelled": n, "fixed": fixed, "broken": int(np.sum(changed & ~wrong)),
            "precision": fixed / n if n else float("nan"), "recall": fixed / n_wrong if n_wrong else float("nan")}


def relabel_table(runs) -> "object":
    """:func:`relabel_summary` of every run whose method relabels (read-out ``method_label``): one row per run
    with ``run_id, method, noise, seed`` and the summary's columns."""
    import pandas as pd

    rows = [{"run_id": r.run_id, "method": r.label, "noise": r.result.get("noise"), "seed": r.result.get("seed"),
             **relabel_summary(r.readout["method_label"], r.readout["given"], r.readout["clean"])}
            for r in load_runs(runs) if "method_label" in r.readout]
    return pd.DataFrame(rows, columns=["run_id", "method", "noise", "seed", "relabelled", "fixed", "broken",
                                       "precision", "recall"])

