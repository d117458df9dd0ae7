"""Dataset readers: every reader returns one :class:`FERData` holding all splits in the canonical class order.

Use :func:`load_dataset` (name registry + on-disk cache); the readers themselves are plain functions, each
registered under its name by ``@register_dataset("<name>")`` at its definition:

=============  =====================================================================
``ferplus``    :func:`read_ferplus`  Microsoft's FERPlus layout (PNGs + label.csv)
``fer2013``    :func:`read_fer2013`  Kaggle fer2013.csv joined with FERPlus fer2013new.csv
``rafdb``      :func:`read_rafdb`    RAF-DB basic, aligned faces
``affectnet``  :func:`read_affectnet` AffectNet manual annotations (+ :func:`affectnet_va`)
``folder``     :func:`read_folder`   ``root/<split>/<class>/<image>`` trees
=============  =====================================================================

Adding a dataset: write ``ferlib/data/<name>.py`` with a reader ``read_<name>(root, *, <options>) -> FERData``
decorated with ``@register_dataset("<name>")`` (keyword-only options with type hints and the harness's
defaults), and import it below. ``load_dataset``, ``list_datasets``, the CLI (``--dataset``, typed
``--dataset-opt``) and the study pick it up by name; ``tests/test_data.py`` asks for a tiny tree of it.

A large dataset is cached memory-mapped (:mod:`ferlib.data.cache`, ``load_dataset(..., mmap=...)``): its
``FERData.images`` is a :class:`MappedImages` read from disk when indexed; :func:`batch_images` reads one batch.
"""
from __future__ import annotations

from .affectnet import affectnet_va, read_affectnet
from .cache import data_fingerprint, default_cache_dir
from .common import DatasetError
from .dataset import SPLITS, FERData
from .fer2013 import read_fer2013
from .ferplus import read_ferplus, votes_to_labels
from .folder import read_folder
from .rafdb import read_rafdb
from .registry import cache_dataset, dataset_reader, list_datasets, load_dataset, register_dataset
from .storage import MappedImages, batch_images

__all__ = [
    "FERData", "SPLITS", "DatasetError", "load_dataset", "cache_dataset", "list_datasets", "register_dataset",
    "dataset_reader", "default_cache_dir", "data_fingerprint", "MappedImages", "batch_images",
    "read_ferplus", "read_fer2013", "read_rafdb", "read_affectnet", "affectnet_va", "read_folder",
    "votes_to_labels",
]
