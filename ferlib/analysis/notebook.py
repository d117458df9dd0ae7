"""Notebook plumbing: one setup call, work from the repository root, save figures, record key metrics."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ..paths import portable_path, repo_root
from ..results import write_json

__all__ = [
    "setup_notebook", "chdir_repo_root", "save_figure", "record_metrics",
]


def setup_notebook(name: str, study_dir: str | os.PathLike) -> tuple[Path, Path]:
    """The one setup every study notebook runs first: work from the repository root (:func:`chdir_repo_root`),
    show every DataFrame as :func:`ferlib.analysis.pages.html_table` does (no index column, numbers rounded, long
    tables folded), silence tqdm's "IProgress not found" warning (libraries such as cleanlab and umap import
    ``tqdm.auto``; without ipywidgets it would print into every rendered report).
    Returns ``(root, figures)`` with ``figures = <study_dir>/figures/<name>``, where the notebook saves its
    figures. Nothing is printed: a rendered page carries no path of the machine that rendered it."""
    import warnings

    import pandas as pd

    warnings.filterwarnings("ignore", message="IProgress not found")
    root = chdir_repo_root()
    pd.set_option("display.width", 160, "display.max_columns", 30, "display.max_rows", 500, "display.precision", 3)
    _show_frames_as_tables()
    return root, Path(study_dir) / "figures" / name


def _show_frames_as_tables() -> None:
    """Register :func:`~ferlib.analysis.pages.html_table` as IPython's HTML form of a DataFrame (outside IPython:
    nothing to do)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        import pandas as pd

        from .pages import html_table

        shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, html_table)


def chdir_repo_root(start: str | os.PathLike | None = None) -> Path:
    """Change to the nearest folder at or above ``start`` (default: cwd) holding ``ferlib/`` and ``pyproject.toml``.

    Notebooks use paths relative to the repository root (``data/...``, ``runs/...``); this makes them work
    whether started from the root (papermill, ``make study``) or from ``notebooks/`` (Jupyter).
    Stays put, returning the cwd, when no such folder exists.
    """
    root = repo_root(start)
    if root is None:
        return Path.cwd()
    os.chdir(root)
    return root


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
    the file, relative to the repository root (:func:`ferlib.paths.portable_path`), and its keys (the tables above
    already show the values; the rendered report stays readable).

    The notebooks' last cell calls this; the test suite and the study runner read the file back.
    """
    path = write_json(Path(study_dir) / f"{name}.json", dict(metrics))
    print(f"metrics ({', '.join(map(str, metrics))}) written to {portable_path(path)}")
    return path
