"""One look for every figure and table: each method's display name, colour and marker, each noise setting's
display name. Every plotting function takes its colours from :func:`method_style`, so a method keeps its colour
from one figure to the next; the oracle (trained on the human votes) is grey and dashed."""
from __future__ import annotations

__all__ = ["METHOD_NAMES", "NOISE_NAMES", "RANKING_NAMES", "method_label", "noise_label", "method_style",
           "method_of", "method_order", "noise_style", "ranking_label", "ranking_style", "NOT_DETECTORS",
           "ORACLE_STYLE", "REFERENCE_STYLE", "FLIP_COLOURS", "VOTES_COLOUR", "CLASS_CMAP", "HEATMAP_CMAP",
           "DIFFERENCE_CMAP", "LINE_COLOURS"]

#: Display names of the registered methods (a method missing here shows under its registry name).
METHOD_NAMES = {
    "ce": "CE", "nla": "NLA", "lanet": "LA-Net", "ldlva": "LDLVA", "scn": "SCN", "rul": "RUL", "eac": "EAC",
    "dmue": "DMUE", "gce": "GCE", "sce": "SCE", "elr": "ELR", "ldl_votes": "oracle (human votes)",
}
#: Display names of the noise settings; ``symmetric:R`` and other parametrised steps are spelled out by
#: :func:`noise_label`.
NOISE_NAMES = {"none": "clean labels", "annotator": "real annotator", "annotator_matched": "synthetic twin"}
#: tab10's colours by method, in the order the methods are usually listed; the oracle is grey.
_COLOURS = {
    "ce": "#1f77b4", "nla": "#d62728", "lanet": "#2ca02c", "ldlva": "#ff7f0e", "scn": "#9467bd",
    "rul": "#8c564b", "gce": "#e377c2", "eac": "#bcbd22", "dmue": "#17becf", "sce": "#393b79", "elr": "#637939",
}
_MARKERS = {"ce": "o", "nla": "s", "lanet": "^", "ldlva": "D", "scn": "v", "rul": "P", "gce": "X", "eac": "<",
            "dmue": ">", "sce": "h", "elr": "*"}
ORACLE_STYLE = {"color": "#7f7f7f", "marker": "o", "linestyle": "--"}
#: The reference every figure draws a method against: the baseline (CE) trained on the clean labels.
REFERENCE_STYLE = {"color": "black", "linestyle": ":", "linewidth": 1.2}
#: Train faces whose given label is the clean one, and those whose label was flipped; of these, the ones a model
#: predicts as their flipped label (memorised), as their clean label (recovered), or as a third class.
FLIP_COLOURS = {"clean": "#c8c8c8", "flipped": "#dc143c", "memorised": "#dc143c", "recovered": "#1f78b4",
                "other": "#ff9f1c"}
#: The human vote distribution beside a method's (bars).
VOTES_COLOUR = "#1a1a1a"
#: Colour maps: classes (categorical), heatmaps (confusion, transition matrices) and differences of two heatmaps.
CLASS_CMAP, HEATMAP_CMAP, DIFFERENCE_CMAP = "tab10", "Blues", "RdBu_r"
#: Lines of one run that are not methods (loss terms, splits), in order.
LINE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
#: Display names of the per-sample rankings of :data:`ferlib.analysis.detection.RANKINGS` (and cleanlab's).
RANKING_NAMES = {"score": "own score", "neg_aum": "AUM", "loss": "loss", "neg_margin": "margin",
                 "1 - self_confidence": "cleanlab"}
#: (method, ranking) pairs whose score is not a label-noise detector, marked so in every view: DMUE's ``1 - s``
#: comes from the official code's frozen, randomly initialised uncertainty MLP (docs/methods/dmue.md, Read-outs).
NOT_DETECTORS = (("dmue", "score"),)
_RANKING_COLOURS = {"score": "#4c72b0", "neg_aum": "#dd8452", "loss": "#55a868", "neg_margin": "#c44e52",
                    "1 - self_confidence": "#8172b3"}
#: Noise settings by kind: clean labels black, symmetric blue, the real annotator green, its synthetic twin orange.
_NOISE_COLOURS = {"none": "black", "symmetric": "#1f77b4", "class_dependent": "#9467bd", "annotator": "#2ca02c",
                  "annotator_matched": "#ff7f0e", "imbalance": "#8c564b"}


def method_label(name: str, variant: str = "") -> str:
    """``"nla"`` -> ``"NLA"`` (a table's label such as ``"ldl_votes (oracle)"`` too: :func:`method_of`); a variant
    other than the method's default configuration is added in brackets (``"LA-Net (no_landmarks)"``). A variant
    that is a configuration key=value of the whole study (LDLVA's ``neighbours=bank``) is not a variant: pass
    ``""``."""
    label = METHOD_NAMES.get(method_of(name), name)
    return f"{label} ({variant})" if variant and variant != "full" else label


def noise_label(spec: str) -> str:
    """``"symmetric:0.3"`` -> ``"30% symmetric"``; ``"annotator"`` -> ``"real annotator"``; steps joined by ``+``
    are labelled one by one."""
    parts = []
    for step in str(spec).split("+"):
        name, _, value = step.partition(":")
        if step in NOISE_NAMES:
            parts.append(NOISE_NAMES[step])
        elif name in ("symmetric", "class_dependent") and value:
            parts.append(f"{float(value):.0%} {name.replace('_', '-')}")
        elif name == "imbalance" and value:
            parts.append(f"imbalance {float(value):g}:1")
        else:
            parts.append(step)
    return " + ".join(parts)


def method_of(label: str) -> str:
    """The registry name inside a table's method label: ``"ldl_votes (oracle)"`` -> ``"ldl_votes"``,
    ``"ce [run-id]"`` -> ``"ce"`` (registry names hold no space)."""
    return str(label).split(" ", 1)[0]


def method_order(names) -> list:
    """``names`` (registry names or table labels), each once, in the order of :data:`METHOD_NAMES` (the
    baseline first, the oracle last); names it lacks before the oracle, in their given order."""
    order = list(METHOD_NAMES)
    unique = list(dict.fromkeys(names))
    return sorted(unique, key=lambda n: (order.index(method_of(n)) if method_of(n) in order
                                         else order.index("ldl_votes") - 0.5, unique.index(n)))


def method_style(name: str) -> dict:
    """Matplotlib keywords ``{"color", "marker", "linestyle"}`` of method ``name`` (its registry name, or a table's
    label of it: :func:`method_of`)."""
    name = method_of(name)
    if name == "ldl_votes":
        return dict(ORACLE_STYLE)
    colour = _COLOURS.get(name)
    if colour is None:  # an unlisted method: a stable colour from its name
        colour = f"C{sum(map(ord, name)) % 10}"
    return {"color": colour, "marker": _MARKERS.get(name, "o"), "linestyle": "-"}


def noise_style(spec: str) -> dict:
    """Matplotlib keywords ``{"color", "linestyle"}`` of a noise setting, by its kind (the last step's protocol:
    ``"symmetric:0.3"`` and ``"symmetric:0.5"`` share a colour, the higher rate dashed); for figures of one method
    under every noise."""
    last = str(spec).split("+")[-1]
    name, _, value = last.partition(":")
    dashed = bool(value) and float(value) >= 0.5
    return {"color": _NOISE_COLOURS.get(name, "#7f7f7f"), "linestyle": "--" if dashed else "-"}


def ranking_style(name: str) -> dict:
    """Matplotlib keywords ``{"color"}`` of a per-sample ranking (``score``, ``neg_aum``, ``loss``,
    ``neg_margin``, cleanlab's ``1 - self_confidence``)."""
    return {"color": _RANKING_COLOURS.get(name, "#7f7f7f")}


def ranking_label(ranking: str, method: str = "") -> str:
    """A ranking's display name (:data:`RANKING_NAMES`), ``"own score (not a detector)"`` for a (method, ranking)
    of :data:`NOT_DETECTORS`."""
    name = RANKING_NAMES.get(ranking, ranking)
    return f"{name} (not a detector)" if (method_of(method), ranking) in NOT_DETECTORS else name
