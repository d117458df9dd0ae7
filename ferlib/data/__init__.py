"""Dataset readers: every reader returns one :class:`FERData` holding all splits in the canonical class order.

Use :func:`load_dataset` (name registry + on-disk cache); the readers themselves are plain functions:

=============  =====================================================================
``ferplus``    :func:`read_ferplus`  Microsoft's FERPlus layout (PNGs + label.csv)
``fer2013``    :func:`read_fer2013`  Kaggle fer2013.csv joined with FERPlus fer2013new.csv
``rafdb``      :func:`read_rafdb`    RAF-DB basic, aligned faces
``affectnet``  :func:`read_affectnet` AffectNet manual annotations (+ :func:`affectnet_va`)
``folder``     :func:`read_folder`   ``root/<split>/<class>/<image>`` trees
=============  =====================================================================
"""
from __future__ import annotations

from .affectnet import affectnet_va, read_affectnet
from .cache import default_cache_dir
from .common import DatasetError
from .dataset import SPLITS, FERData
from .fer2013 import read_fer2013
from .ferplus import read_ferplus, votes_to_labels
from .folder import read_folder
from .rafdb import read_rafdb
from .registry import list_datasets, load_dataset

__all__ = [
    "FERData", "SPLITS", "DatasetError", "load_dataset", "list_datasets", "default_cache_dir",
    "read_ferplus", "read_fer2013", "read_rafdb", "read_affectnet", "affectnet_va", "read_folder",
    "votes_to_labels",
]
