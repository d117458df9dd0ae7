"""ferlib: facial expression recognition under label noise, ambiguity and class imbalance.

Importing ``ferlib`` is cheap: subpackages load on first use, and nothing here needs the notebook stack
(papermill, umap, jupyter), so the core trains on a machine that has only torch, torchvision, timm and pandas.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["classes", "data", "noise", "backbones", "augment", "engine", "methods", "metrics", "results",
           "experiment", "inference", "pretrain", "landmarks", "va", "analysis", "study"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ferlib' has no attribute {name!r}")
