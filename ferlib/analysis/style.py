"""One look for every figure and table: each method's display name, colour and marker, each noise setting's
display name. Every plotting function takes its colours from :func:`method_style`, so a method keeps its colour
from one figure to the next; the oracle (trained on the human votes) is grey and dashed."""
from __future__ import annotations

__all__ = ["METHOD_NAMES", "NOISE_NAMES", "method_label", "noise_label", "method_style", "ORACLE_STYLE"]

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


def method_label(name: str, variant: str = "") -> str:
    """``"nla"`` -> ``"NLA"``; a variant other than the method's default configuration is added in brackets
    (``"LA-Net (no_landmarks)"``). A variant that is a configuration key=value of the whole study (LDLVA's
    ``neighbours=bank``) is not a variant: pass ``""``."""
    label = METHOD_NAMES.get(name, name)
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


def method_style(name: str) -> dict:
    """Matplotlib keywords ``{"color", "marker", "linestyle"}`` of method ``name`` (its registry name)."""
    if name == "ldl_votes":
        return dict(ORACLE_STYLE)
    colour = _COLOURS.get(name)
    if colour is None:  # an unlisted method: a stable colour from its name
        colour = f"C{sum(map(ord, name)) % 10}"
    return {"color": colour, "marker": _MARKERS.get(name, "o"), "linestyle": "-"}
