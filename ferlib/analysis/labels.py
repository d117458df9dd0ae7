"""The labels of table rows, from :mod:`.style`'s display names: one label per method, its option set (``variant``)
in brackets only where the same method appears with several (a study-wide option such as LDLVA's
``neighbours=bank`` is no variant), an oracle marked as one."""
from __future__ import annotations

from .style import METHOD_NAMES, method_label

__all__ = ["method_labels", "method_display", "start_label", "METRIC_NAMES"]

#: Display names of the compared metrics (``<stage>.<metric>`` of a result).
METRIC_NAMES = {"last.acc": "accuracy, last epoch", "best.acc": "accuracy, early-stopped",
                "last.mean_acc": "mean accuracy, last epoch", "best.mean_acc": "mean accuracy, early-stopped",
                "last.macro_f1": "macro F1, last epoch", "best.macro_f1": "macro F1, early-stopped"}
_STARTS = {"ssl": "self-supervised", "random": "random init"}


def start_label(start: str) -> str:
    """``"ssl"`` -> ``"self-supervised"``, ``"random"`` -> ``"random init"``; weights named otherwise as they are."""
    return _STARTS.get(str(start), str(start))


def method_display(label: str) -> str:
    """A table's method label in display names: ``"ce"`` -> ``"CE"``, ``"ldl_votes (oracle)"`` (a run's label) ->
    ``"oracle (human votes)"``, ``"lanet (no_landmarks)"`` -> ``"LA-Net (no_landmarks)"``; a label already in
    display names stays as it is."""
    name, _, rest = str(label).partition(" ")
    if name not in METHOD_NAMES:
        return str(label)
    shown = method_label(name)
    if rest.strip() == "(oracle)":
        return shown if "oracle" in shown else f"{shown} (oracle)"
    return f"{shown} {rest.strip()}".strip()


def method_labels(methods, variants=None, oracle=None) -> list[str]:
    """One display label per row.

    Parameters
    ----------
    methods : registry names, one per row.
    variants : ``"k=v,..."`` option sets, one per row (None: none).
    oracle : whether each row's method reads what a noisy-label method may not (None: none does); an oracle
        whose display name does not say so gets `` (oracle)``.

    Returns
    -------
    list of str, e.g. ``["CE", "LDLVA", "oracle (human votes)"]``; with two option sets of LA-Net,
    ``["LA-Net", "LA-Net (no_landmarks)"]``.
    """
    methods = [str(m) for m in methods]
    variants = [""] * len(methods) if variants is None else ["" if v is None or v != v else str(v) for v in variants]
    oracle = [False] * len(methods) if oracle is None else [bool(o) and o == o for o in oracle]  # NaN: not one
    several = {m for m in methods if len({v for mm, v in zip(methods, variants) if mm == m}) > 1}
    labels = []
    for m, v, o in zip(methods, variants, oracle):
        label = method_label(m, v if m in several else "") if m in METHOD_NAMES else method_display(m)
        labels.append(f"{label} (oracle)" if o and "oracle" not in label else label)
    return labels
