"""Resumable training state: the one save / load pair of the training engine and of self-supervised pretraining.

A checkpoint holds the epoch it closes, the history so far, the state of each stateful part of the loop (model,
method, optimizer, scheduler ...), the generator that drives data order and augmentation, and torch's CPU and
CUDA random states, so that resuming from it gives the uninterrupted run (torchvision's reference checkpoint
holds model, optimizer, scheduler and epoch, but no random state). It is written atomically after a free-space
check (:func:`ferlib.results.atomic_write`): a killed or failed save leaves the previous checkpoint usable.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .results import atomic_write, nbytes_of
from .rundir import CorruptRunError

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: str | os.PathLike, *, epoch: int, history: list[dict], parts: dict,
                    gen: torch.Generator) -> None:
    """Write the training state after ``epoch`` (1-based: the epochs done) to ``path``.

    parts : ``{name: object with state_dict()}`` (model, optimizer, ...); each is stored under its name.
    gen : the generator of data order and augmentation.
    """
    state = {"epoch": epoch, "history": history, **{name: part.state_dict() for name, part in parts.items()},
             "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    atomic_write(path, lambda f: torch.save(state, f), nbytes=nbytes_of(state))


def load_checkpoint(path: str | os.PathLike, parts: dict, gen: torch.Generator, *,
                    device: torch.device | str = "cpu") -> tuple[int, list[dict]]:
    """Restore ``parts`` (as for :func:`save_checkpoint`), ``gen`` and the random states from ``path``; returns
    (the epochs done, the history). ``(0, [])`` when there is no checkpoint at ``path``.

    Raises :class:`ferlib.rundir.CorruptRunError` (a ValueError) naming the file and the way out when it cannot
    be read (truncated, or not a checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        return 0, []
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated or not a checkpoint: name the file and the way out
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise CorruptRunError(path.parent, f"{path.name} cannot be read to resume ({type(exc).__name__}: {detail}); "
                                           "start this run afresh with --no-resume (resume=False), which replaces "
                                           "it") from exc
    for name, part in parts.items():
        part.load_state_dict(state[name])
    gen.set_state(state["gen"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    return state["epoch"], state["history"]
