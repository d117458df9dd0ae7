"""Notebook plumbing: one setup call, work from the repository root, save figures, record key metrics."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ..results import write_json

__all__ = [
    "setup_notebook", "chdir_repo_root", "save_figure", "record_metrics",
]


def setup_notebook(name: str, study_dir: str | os.PathLike) -> tuple[Path, Path]:
    """The one setup every study notebook runs first: work from the repository root (:func:`chdir_repo_root`),
    widen pandas' display (tables of up to 500 rows shown whole), silence tqdm's "IProgress not found" warning
    (libraries such as cleanlab and umap import ``tqdm.auto``; without ipywidgets it would print into every
    rendered report), print the root.
    Returns ``(root, figures)`` with ``figures = <study_dir>/figures/<name>``, where the notebook saves its
    figures."""
    import warnings

    import pandas as pd

    warnings.filterwarnings("ignore", message="IProgress not found")
    root = chdir_repo_root()
    pd.set_option("display.width", 160, "display.max_columns", 30, "display.max_rows", 500)
    print("repository root:", root)
    return root, Path(study_dir) / "figures" / name


def chdir_repo_root(start: str | os.PathLike | None = None) -> Path:
    """Change to the nearest folder at or above ``start`` (default: cwd) holding ``ferlib/`` and ``pyproject.toml``.

    Notebooks use paths relative to the repository root (``data/...``, ``runs/...``); this makes them work
    whether started from the root (papermill, ``make study``) or from ``notebooks/`` (Jupyter).
    Stays put, returning the cwd, when no such folder exists.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "ferlib" / "__init__.py").is_file():
            os.chdir(folder)
            return folder
    return Path.cwd()


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110):
    """Save a figure (PNG by suffix) creating folders; a pyplot-managed figure is closed so it displays once.

    Returns the figure, so ``save_figure(fig, ...)`` as a cell's last expression shows it.
    """
    import sys

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        if getattr(fig, "number", None) is not None and plt.fignum_exists(fig.number):
            plt.close(fig)
    return fig


def record_metrics(study_dir: str | os.PathLike, name: str, metrics: Mapping) -> Path:
    """Write a notebook's key metrics to ``<study_dir>/<name>.json`` (atomically) and print one line naming
    the file and its keys (the tables above already show the values; the rendered report stays readable).

    The notebooks' last cell calls this; the test suite and the study runner read the file back.
    """
    path = write_json(Path(study_dir) / f"{name}.json", dict(metrics))
    print(f"metrics ({', '.join(map(str, metrics))}) written to {path}")
    return path
