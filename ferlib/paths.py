"""Paths as files record them: relative to the repository root where possible, so that a committed run, report or
checkpoint record carries no path of the machine that wrote it.

A checkout is a folder holding ``pyproject.toml`` and ``ferlib/__init__.py`` (:func:`repo_root`). A path inside
that folder or beside it (under its parent, e.g. a dataset in ``../shared/data``) is recorded relative to it
(:func:`portable_path`); any other path stays absolute, as given. Readers turn a recorded path back into one they can
open with :func:`resolve_recorded` (relative paths are relative to the repository root, where the notebooks and the
command line work).
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "portable_path", "resolve_recorded"]


def repo_root(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the current directory) holding ``pyproject.toml`` and
    ``ferlib/__init__.py``; None when there is none."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "ferlib" / "__init__.py").is_file():
            return folder
    return None


def portable_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """``path`` as a record should hold it: relative to ``root`` (default :func:`repo_root` of the current
    directory) when it lies inside ``root`` or beside it (under ``root``'s parent: ``../shared/data/ferplus``),
    else as given. A relative ``path`` is taken relative to the current directory, as the caller opens it."""
    root = Path(root).resolve() if root is not None else repo_root()
    target = Path(os.path.abspath(Path(path).expanduser()))
    if root is None or root.parent == root or not target.is_relative_to(root.parent):
        return os.fspath(path)
    return Path(os.path.relpath(target, root)).as_posix()


def resolve_recorded(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A recorded path made openable: an absolute one as it is, a relative one under ``root`` (default
    :func:`repo_root` of the current directory; the current directory when there is none)."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    base = Path(root) if root is not None else repo_root()
    return (base or Path.cwd()) / path
