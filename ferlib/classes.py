"""The canonical expression class space and the name mappings of each dataset.

ferlib stores every dataset's labels as integers in ONE order, the FERPlus order:

    0 neutral, 1 happiness, 2 surprise, 3 sadness, 4 anger, 5 disgust, 6 fear, 7 contempt

The 7-class space is the first seven (contempt dropped), so a 7-class label is also a valid 8-class label.
FERPlus vote columns come in this order, which is why it was chosen: votes never need re-indexing.
Other datasets are mapped by name (see ``SYNONYMS``) into this order when read; a method that needs another
order (e.g. LA-Net's anger-first order on RAF-DB) maps at its edge, never in the stored data.
"""
from __future__ import annotations

__all__ = ["CLASSES_8", "CLASSES_7", "class_names", "class_index", "SYNONYMS"]

CLASSES_8: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
)
CLASSES_7: tuple[str, ...] = CLASSES_8[:7]

# Spellings used by the datasets' own files (lower-cased) -> canonical name.
SYNONYMS: dict[str, str] = {
    "neutral": "neutral", "neutrality": "neutral",
    "happiness": "happiness", "happy": "happiness", "joy": "happiness",
    "surprise": "surprise", "surprised": "surprise",
    "sadness": "sadness", "sad": "sadness",
    "anger": "anger", "angry": "anger",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear",
    "contempt": "contempt",
}


def class_names(num_classes: int) -> tuple[str, ...]:
    """Canonical class names for a 7- or 8-class problem."""
    if num_classes == 8:
        return CLASSES_8
    if num_classes == 7:
        return CLASSES_7
    raise ValueError(f"num_classes must be 7 or 8, got {num_classes!r}")


def class_index(name: str, num_classes: int = 8) -> int:
    """Canonical integer of a class name (any spelling in ``SYNONYMS``, case-insensitive).

    Raises ``KeyError`` naming the valid classes when the name is unknown or outside the class space.
    """
    canon = SYNONYMS.get(str(name).strip().lower())
    names = class_names(num_classes)
    if canon is None or canon not in names:
        raise KeyError(f"unknown class name {name!r} for {num_classes} classes; valid: {', '.join(names)}")
    return names.index(canon)
