"""One run on several processes (``torchrun``): the process group, the shard of each batch, gathers with
gradient, gradient averaging and the work only rank 0 does.

The engine (:func:`ferlib.engine.fit`) is the same loop on one process or several. Under ``torchrun`` every
process draws the same epoch order and augments the same GLOBAL batch (``TrainConfig.batch_size``) from the
same seeded generator, then keeps its contiguous shard (:func:`shard`); the shards in rank order are the
one-process batch. A method runs its batch-level operations (neighbour graphs, rank groups, pairwise terms)
on tensors gathered in rank order (:func:`gather`, with gradient) and updates its per-sample state from the
gathered batch, so every process holds the same state. After ``backward`` the gradients are averaged over the
processes (:func:`average_gradients`): a loss term that is a mean over the shard then gives the mean over the
global batch, and a term computed from gathered tensors (the same value on every process) gives its own
gradient, since the gather's backward sums the W identical contributions. Only rank 0 writes the run folder
(:func:`on_main`, :func:`main_only`).

Every function is the identity, or a plain call, in a single process: a run without ``torchrun`` is unchanged
bit for bit.

The gradients are averaged explicitly rather than through DistributedDataParallel: methods call the model's
parts (``model.embed``, ``model.backbone.layer4`` ...) and not its forward, which is what arms DDP's reducer,
and they train parameters of their own outside the model (edge scorers, attention, landmark branch). The
averaged gradient is the same; communication does not overlap the backward pass.

Not the one-process computation: BatchNorm on CPU (per-shard statistics; on CUDA BatchNorm becomes
SyncBatchNorm, :func:`prepare_modules`), and draws from torch's global generator inside a training step
(dropout), which each process makes from the same seeded stream for its own shard.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["world", "leave", "rank", "is_main", "local_device", "shard", "gather", "average_gradients", "average",
           "on_main", "main_only", "prepare_modules"]


def world() -> int:
    """Number of processes of this run: ``WORLD_SIZE`` as ``torchrun`` sets it, else 1.

    In a ``torchrun`` worker the first call creates the process group (rendezvous from ``MASTER_ADDR``,
    ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``): gloo for CPU tensors, and NCCL for CUDA tensors where CUDA is
    available (the device of each process is then ``cuda:LOCAL_RANK``).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1:
        _init()
    return size


def _init() -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    atexit.register(_shutdown)


def _shutdown() -> None:
    """At exit: wait for every process, then tear the group down. A process that destroyed its group while
    another still used the connection could abort in gloo's threads ("terminate called without an active
    exception") after a finished run."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def leave(code: int) -> NoReturn:
    """End this process with exit status ``code``. In a ``torchrun`` worker: run the at-exit handlers (among them
    :func:`_shutdown`, the barrier and the group's teardown), flush, and leave through ``os._exit``, skipping the
    interpreter's own teardown: there, after a finished run, torch 2.14.1 could abort a worker ("terminate called
    without an active exception", no Python frame; measured 2 of 12 gloo runs on a busy 2-core machine). One
    process: ``SystemExit(code)``."""
    if not (dist.is_available() and dist.is_initialized()):
        raise SystemExit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def rank() -> int:
    """This process's rank (0 on one process)."""
    return dist.get_rank() if world() > 1 else 0


def is_main() -> bool:
    """Whether this process writes the run folder (rank 0, or the only process)."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """``device`` with this process's GPU: ``cuda`` without an index becomes ``cuda:LOCAL_RANK`` under
    ``torchrun``; anything else is returned as it is."""
    if device.type == "cuda" and device.index is None and world() > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def shard(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This process's rows of a global batch: the contiguous chunk ``rank`` of ``world`` equal chunks of every
    (B, ...) tensor. The whole batch on one process."""
    if world() == 1:
        return batch
    return {k: v.chunk(world())[rank()] for k, v in batch.items()}


class _Gather(torch.autograd.Function):
    """All-gather along dim 0 in rank order; backward: the sum over processes of the gradient of this
    process's rows (a reduce-scatter written as an all-reduce, which gloo has too)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """The global-batch tensor (W b, ...) of every process's (b, ...) shard, concatenated in rank order (so
    its rows are in the one-process batch's order), with gradient to this process's rows. The tensor itself
    on one process; None stays None.

    Compute a loss term from gathered tensors identically on every process: the gather's backward sums the
    W identical gradients and :func:`average_gradients` divides by W, giving the one-process gradient.
    """
    if tensor is None or world() == 1:
        return tensor
    return _Gather.apply(tensor)


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the processes, in one all-reduce.

    A parameter without a gradient on some process counts as zero there; one without a gradient on every
    process keeps none (as it would in one process). Nothing happens on one process.
    """
    if world() == 1:
        return
    params = list(params)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    present = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat([g.reshape(-1) for g in grads] + [present])
    dist.all_reduce(flat)
    values, counts = flat[:-len(params)] / world(), flat[-len(params):]
    for p, value, count in zip(params, values.split([p.numel() for p in params]), counts.tolist()):
        if count:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(value.view(p.shape))


def average(values: dict[str, float]) -> dict[str, float]:
    """Each value's mean over the processes (the same keys on every process); ``values`` on one process."""
    if world() == 1:
        return values
    total = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(total)
    return dict(zip(values, (total / world()).tolist()))


def on_main(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` called on rank 0 only, its (picklable) result returned on every process; the
    others wait for it. A plain call on one process."""
    if world() == 1:
        return fn(*args, **kwargs)
    box = [fn(*args, **kwargs) if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_only(context: contextlib.AbstractContextManager) -> contextlib.AbstractContextManager:
    """``context`` on rank 0 (e.g. the run folder's lock), an empty context on the other processes."""
    return context if is_main() else contextlib.nullcontext()


def prepare_modules(*modules: nn.Module, device: torch.device) -> None:
    """Make the processes' copies of ``modules`` one model, as DistributedDataParallel does at construction:
    on CUDA every BatchNorm becomes a SyncBatchNorm (statistics over the global batch), and rank 0's parameters
    are copied to every process. Nothing happens on one process.

    SyncBatchNorm needs CUDA: on CPU (gloo) each process normalises with its shard's statistics, which is not
    the one-process computation for a model with BatchNorm in training mode.
    """
    if world() == 1:
        return
    if device.type == "cuda":
        for module in modules:
            nn.SyncBatchNorm.convert_sync_batchnorm(module)  # in place below the root
    elif is_main() and any(isinstance(m, _BATCH_NORMS) for module in modules for m in module.modules()):
        warnings.warn("BatchNorm on CPU under torchrun: each process normalises with its shard's statistics "
                      "(SyncBatchNorm needs CUDA), so the run differs from one process with the global batch",
                      stacklevel=2)
    with torch.no_grad():
        for p in (p for module in modules for p in module.parameters()):
            buffer = p.detach().contiguous()
            dist.broadcast(buffer, src=0)
            p.copy_(buffer)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
