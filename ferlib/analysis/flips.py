"""Real against synthetic noise: what each noise setting did to the train labels (its realised transition matrix,
averaged over seeds), the human votes of the faces it flipped (are they the ambiguous ones?), and every method
under one noise against itself under another, seed by seed."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .. import rundir
from ..results import read_json
from .answer import PAIRED_METRICS, _comparable, _paired, _pairing_keys

__all__ = ["realised_transitions", "vote_statistics", "vote_frame", "flip_votes", "flip_vote_summary",
           "format_vote_summary", "ambiguity_verdict", "noise_contrast"]


def _noise_runs(runs_dir: str | os.PathLike) -> dict[tuple[str, int], "os.PathLike"]:
    """One finished run folder per (noise, seed) that flipped labels: every method of a seed sees the same noise,
    so any run of it describes that noise (the first in folder order)."""
    found: dict[tuple[str, int], os.PathLike] = {}
    for folder in rundir.finished_runs(runs_dir):
        if not (folder / rundir.NOISE).is_file():
            continue
        result = rundir.read_result(folder)
        key = (str(result.get("noise")), int(result.get("seed") or 0))
        if key[0] != "none":
            found.setdefault(key, folder)
    return found


def realised_transitions(runs_dir: str | os.PathLike) -> dict[str, dict]:
    """Each noise setting's realised train transition matrix ``T[i, j] = P(given = j | clean = i)``, averaged over
    the seeds (each seed draws its own noise), from the runs' ``noise.json``.

    Returns
    -------
    dict noise -> ``{"transition": (C, C) float64, "rate": mean overall flip rate, "per_class_rate": {class:
    mean rate}, "seeds": sorted seeds, "classes": class names}``, in the runs' order of noise settings; empty
    when no run flipped a label.
    """
    reports: dict[str, list[dict]] = {}
    for (noise, seed), folder in sorted(_noise_runs(runs_dir).items(), key=lambda kv: kv[0][1]):
        reports.setdefault(noise, []).append({"seed": seed, **read_json(folder / rundir.NOISE)["train"]})
    out = {}
    for noise, per_seed in reports.items():
        classes = list(per_seed[0]["per_class_rate"])
        out[noise] = {"transition": np.mean([np.asarray(r["transition"], float) for r in per_seed], axis=0),
                      "rate": float(np.mean([r["overall_rate"] for r in per_seed])),
                      "per_class_rate": {c: float(np.mean([r["per_class_rate"][c] for r in per_seed]))
                                         for c in classes},
                      "seeds": [r["seed"] for r in per_seed], "classes": classes}
    return out


def vote_statistics(votes, given) -> dict[str, np.ndarray]:
    """How ambiguous each face's human votes are, and where the given label stands among them.

    Parameters
    ----------
    votes : (N, K) vote counts (FERPlus: 10 annotators over the K emotion classes), every row with a vote.
    given : (N,) int labels in [0, K).

    Returns
    -------
    dict of (N,) arrays: ``entropy`` (bits, of the vote distribution: 0 = unanimous), ``plurality_share`` (the
    most voted class's share of the votes), ``given_share`` (the given label's share), ``given_voted`` (bool: at
    least one annotator chose the given label), ``given_runner_up`` (bool: the given label is not the most voted
    class but has the second-highest count, ties included).
    """
    v = np.asarray(votes, dtype=np.float64)
    given = np.asarray(given, dtype=np.int64)
    share = v / v.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(share > 0, share * np.log2(share), 0.0), axis=1)
    ranked = np.sort(v, axis=1)
    mine = v[np.arange(len(v)), given]
    return {"entropy": entropy, "plurality_share": share.max(axis=1), "given_share": share[np.arange(len(v)), given],
            "given_voted": mine > 0,
            "given_runner_up": (mine > 0) & (mine < ranked[:, -1]) & (mine == ranked[:, -2])}


_VOTE_COLUMNS = ["noise", "seed", "id", "flipped", "entropy", "plurality_share", "given_share", "given_voted",
                 "given_runner_up"]


def vote_frame(votes, given, clean, *, noise: str, seed: int, ids=None) -> "object":
    """One noise draw's train faces with their human votes: ``noise, seed, id, flipped`` (given != clean) and the
    columns of :func:`vote_statistics` of the given label, one row per face (``ids`` None: row numbers)."""
    import pandas as pd

    given, clean = np.asarray(given, dtype=np.int64), np.asarray(clean, dtype=np.int64)
    ids = np.arange(len(given)).astype(str) if ids is None else np.asarray(ids).astype(str)
    return pd.DataFrame({"noise": noise, "seed": seed, "id": ids, "flipped": given != clean,
                         **vote_statistics(votes, given)})[_VOTE_COLUMNS]


def flip_votes(runs_dir: str | os.PathLike, data) -> "object":
    """:func:`vote_frame` of every noise setting and seed of a runs folder (the given and clean labels of one run
    per noise and seed: every method of a seed sees the same noise), pooled.

    Parameters
    ----------
    runs_dir : a study's runs folder.
    data : the FERData the runs were trained on, with votes (:func:`ferlib.analysis.run_dataset`).

    Returns
    -------
    pandas.DataFrame, one row per (noise, seed, train face); empty without votes or a run with flipped labels.
    """
    import pandas as pd

    from .runs import images_by_id

    if getattr(data, "votes", None) is None:
        return pd.DataFrame(columns=_VOTE_COLUMNS)
    parts = []
    for (noise, seed), folder in _noise_runs(runs_dir).items():
        r = rundir.read_readout(folder)
        parts.append(vote_frame(data.votes[images_by_id(data, r["ids"])], r["given"], r["clean"], noise=noise,
                                seed=seed, ids=r["ids"]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=_VOTE_COLUMNS)


_VOTE_MEANS = ("entropy", "plurality_share", "given_share", "given_voted", "given_runner_up")


def flip_vote_summary(frame) -> "object":
    """:func:`flip_votes` per noise setting: the faces each noise flipped against all train faces.

    Returns
    -------
    pandas.DataFrame, one row per noise and group (``flipped`` faces, then ``all`` train faces: the same faces
    under every noise, so their row is the reference): ``noise, faces, n_seeds, n`` (faces per seed, mean) and
    the means over seeds of the per-seed means of ``entropy`` (bits), ``plurality_share``, ``given_share``,
    ``given_voted`` and ``given_runner_up`` (shares of the faces; on ``all`` faces these describe the clean
    label for unflipped faces).
    """
    import pandas as pd

    rows = []
    for noise, g in frame.groupby("noise", sort=False):
        for faces, sub in (("flipped", g[g["flipped"]]), ("all", g)):
            per_seed = sub.groupby("seed")[list(_VOTE_MEANS)].mean()
            rows.append({"noise": noise, "faces": faces, "n_seeds": len(per_seed),
                         "n": float(sub.groupby("seed").size().mean()) if len(sub) else 0.0,
                         **per_seed.mean().to_dict()})
    return pd.DataFrame(rows, columns=["noise", "faces", "n_seeds", "n", *_VOTE_MEANS])


def format_vote_summary(summary) -> "object":
    """A readable copy of :func:`flip_vote_summary`: noise settings by display name, faces per seed, the vote
    entropy in bits (2 decimals) and the shares in % (1 decimal), under words for column names."""
    import pandas as pd

    from .style import noise_label

    out = pd.DataFrame({"noise": [noise_label(n) for n in summary["noise"]], "faces": summary["faces"],
                        "faces per seed": [f"{n:,.0f}" for n in summary["n"]],
                        "vote entropy (bits)": [f"{v:.2f}" for v in summary["entropy"]]})
    for column, words in (("plurality_share", "most voted class's share of the votes, %"),
                          ("given_share", "given label's share of the votes, %"),
                          ("given_voted", "given label had a vote, %"),
                          ("given_runner_up", "given label is the runner-up vote, %")):
        out[words] = [f"{100 * v:.1f}" for v in summary[column]]
    return out


def ambiguity_verdict(frame, *, real: str = "annotator", synthetic: str = "annotator_matched") -> dict:
    """Are the faces the real annotator mislabels more ambiguous than those its synthetic twin flips?

    Seed by seed, the vote entropy of the faces ``real`` flipped is compared with that of the faces
    ``synthetic`` flipped (Mann-Whitney U, two-sided); the claim is *supported* when the real flips have the
    higher mean entropy in every seed, there are at least 3 seeds and every seed's p < 0.05 (the rule of
    :func:`~ferlib.analysis.paired_comparison`).

    Returns
    -------
    dict: ``verdict`` (``"supported"``; ``"rejected"``: the real flips are less ambiguous in every seed, each
    p < 0.05, 3 seeds or more; ``"too few seeds"``: one direction and p < 0.05 in every seed, but fewer than 3;
    ``"not supported"``; ``"no data"``), ``n_seeds``, ``max_p``, the means over
    seeds of the entropy, plurality share and runner-up share of each side's flips and of all train faces
    (``real_*``, ``synthetic_*``, ``all_*``), and ``text``: the finding in words, numbers included.
    """
    from scipy.stats import mannwhitneyu

    flips = frame[frame["flipped"]]
    seeds = sorted(set(flips.loc[flips["noise"] == real, "seed"]) & set(flips.loc[flips["noise"] == synthetic, "seed"]))
    if not seeds:
        return {"verdict": "no data", "n_seeds": 0,
                "text": f"No seed has flipped labels under both {real!r} and {synthetic!r}: the ambiguity of their "
                        "flips is not compared."}
    higher, ps = [], []
    for s in seeds:
        a = flips.loc[(flips["noise"] == real) & (flips["seed"] == s), "entropy"].to_numpy()
        b = flips.loc[(flips["noise"] == synthetic) & (flips["seed"] == s), "entropy"].to_numpy()
        higher.append(a.mean() > b.mean())
        ps.append(float(mannwhitneyu(a, b).pvalue))
    one_way = max(ps) < 0.05 and (all(higher) or not any(higher))
    verdict = ("not supported" if not one_way else "too few seeds" if len(seeds) < 3
               else "supported" if all(higher) else "rejected")
    summary = flip_vote_summary(frame[frame["seed"].isin(seeds)]).set_index(["noise", "faces"])
    out = {"verdict": verdict, "n_seeds": len(seeds), "max_p": max(ps), "higher": all(higher), "real_noise": real,
           "synthetic_noise": synthetic}
    for name, key in (("real", (real, "flipped")), ("synthetic", (synthetic, "flipped")), ("all", (real, "all"))):
        for col in ("entropy", "plurality_share", "given_runner_up", "given_voted"):
            out[f"{name}_{col}"] = float(summary.loc[key, col])
    out["text"] = _ambiguity_words(out)
    return out


def _ambiguity_words(v: dict) -> str:
    from .style import noise_label

    real, synthetic = (f"the {noise_label(v[k])}" for k in ("real_noise", "synthetic_noise"))
    faces = f"the faces {real} mislabels"
    p = "p < 0.001" if v["max_p"] < 0.001 else f"p <= {v['max_p']:.3f}"
    claim = {"supported": f"Supported: {faces} are the ambiguous ones",
             "rejected": f"Rejected: {faces} are less ambiguous than those {synthetic} flips",
             "too few seeds": f"{faces[0].upper()}{faces[1:]} are {'more' if v['higher'] else 'less'} ambiguous than "
                              f"those {synthetic} flips in "
                              + ("the one seed drawn" if v["n_seeds"] == 1 else f"each of the {v['n_seeds']} seeds")
                              + ", too few seeds to call it supported (3 needed)",
             "not supported": f"Not supported by every seed: {faces} are not clearly more ambiguous than those "
                              f"{synthetic} flips"}[v["verdict"]]
    return (f"{claim}. Their human votes have a mean entropy of {v['real_entropy']:.2f} bits against "
            f"{v['synthetic_entropy']:.2f} for the faces {synthetic} flips and {v['all_entropy']:.2f} for all train "
            f"faces; the most voted class holds {100 * v['real_plurality_share']:.0f}% of their votes (against "
            f"{100 * v['synthetic_plurality_share']:.0f}% and {100 * v['all_plurality_share']:.0f}%); their new "
            f"label is the runner-up vote for {100 * v['real_given_runner_up']:.0f}% of them (against "
            f"{100 * v['synthetic_given_runner_up']:.0f}%) and was chosen by at least one annotator for "
            f"{100 * v['real_given_voted']:.0f}% (against {100 * v['synthetic_given_voted']:.0f}%). Mann-Whitney U on "
            f"the entropies, seed by seed: {p}"
            + (f" in each of {v['n_seeds']} seeds." if v["n_seeds"] > 1 else " in the one seed."))


def noise_contrast(results, *, noise: str = "annotator", other: str = "annotator_matched",
                   metrics: Sequence[str] = PAIRED_METRICS) -> "object":
    """Every method under ``noise`` against itself under ``other``, seed by seed, as
    :func:`~ferlib.analysis.paired_comparison` compares a method with its baseline (same statistics and verdict
    rule): ``noise`` minus ``other``. Oracle methods (which never read the noisy labels) are left out.

    Parameters
    ----------
    results : DataFrame of :func:`ferlib.rundir.collect_results`.

    Returns
    -------
    pandas.DataFrame, one row per method (and variant, setting) and metric with at least one pair: ``method``,
    ``variant``, ``dataset``, ``start``, the run settings present, ``metric``, ``noise_mean`` / ``noise_std``
    and ``other_mean`` / ``other_std`` over the paired seeds, ``n_pairs``, ``mean_diff`` (noise minus other),
    ``std_diff``, ``wins`` (seeds where the method does better under ``noise``), ``p_value``, ``verdict``
    (:func:`~ferlib.analysis.paired_comparison`'s, its ``gain`` / ``loss`` read ``higher`` / ``lower`` under
    ``noise``: ``"supported: higher"``).
    """
    for col in ("method", "noise", "seed", *metrics):
        if col not in results.columns:
            raise ValueError(f"results lacks column {col!r}; expected collect_results() output")
    df = _comparable(results)
    df = df[~df["oracle"]]
    keys = ["method", "variant", *(k for k in _pairing_keys(df) if k != "noise")]
    out = _paired(df[df["noise"] == noise], df[df["noise"] == other], by=keys, match=keys, metrics=metrics,
                  names=("noise", "other"))
    return out.assign(verdict=out["verdict"].replace({"supported gain": "supported: higher",
                                                      "supported loss": "supported: lower"}))
