"""Small shared test helpers (imported as ``from stubs import ...``; pytest puts ``tests/`` on the path):
tolerances and conversions for reference checks, a learnable synthetic dataset, stand-ins for what a method's
``bind`` reads, and the spec of a tiny end-to-end run."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ferlib.backbones import BackboneConfig
from ferlib.data.dataset import FERData
from ferlib.engine import TrainConfig

#: Tolerance of the reference-pinned equations.
TOL = 1e-6


def to_np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_close(actual, expected, tol: float = TOL) -> None:
    np.testing.assert_allclose(to_np(actual).astype(np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=tol, atol=tol)


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def synthetic(n_train: int = 96, n_eval: int = 32, k: int = 4, seed: int = 0) -> FERData:
    """Images whose class is a bright horizontal band at a class-specific height: learnable in one epoch."""
    rng = np.random.default_rng(seed)
    n = n_train + 2 * n_eval
    labels = rng.integers(0, k, n)
    images = (rng.random((n, 24, 24, 1)) * 40).astype(np.uint8)
    for c in range(k):
        images[labels == c, 6 * c:6 * c + 6] = 230
    split = np.array(["train"] * n_train + ["valid"] * n_eval + ["test"] * n_eval)
    return FERData(images=images, labels=labels, split=split, ids=np.arange(n).astype(str),
                   classes=tuple(f"c{i}" for i in range(k)))


class StubModel(nn.Module):
    """A model whose features are its input (B, D): embed = flatten, no dropout, a linear head."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.feature_dim = dim
        self.dropout = nn.Identity()
        self.head = nn.Linear(dim, classes)

    def embed(self, x):
        return x.flatten(1)

    def forward(self, x):
        return self.head(self.dropout(self.embed(x)))


class RecordingDropout(nn.Module):
    """Dropout at rate ``p`` (inverted, as nn.Dropout in training) whose masks are drawn from its own seeded
    generator and kept in ``masks``, one per call: a reference recomputes a step with dropout ON from them, and
    the number of calls shows where a method applies the module."""

    def __init__(self, p: float, seed: int = 0) -> None:
        super().__init__()
        self.p, self.gen, self.masks = p, torch.Generator().manual_seed(seed), []

    def forward(self, x):
        mask = (torch.rand(x.shape, generator=self.gen, dtype=x.dtype) >= self.p).to(x.dtype) / (1 - self.p)
        self.masks.append(mask.detach().numpy())
        return x * mask


class TrainLabels:
    """What a method's ``bind`` reads of a FERData train split: its labels and length."""

    def __init__(self, labels) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)


class RunConfig:
    """What a method's ``bind`` reads of a TrainConfig: epochs and seed."""

    def __init__(self, epochs: int = 5, seed: int = 0) -> None:
        self.epochs, self.seed = epochs, seed


def tiny_run_spec(data, method: str, out, **method_options):
    """A two-epoch run of ``method`` on ``data`` (a FERPlus tree) with a tiny ResNet: for resume checks."""
    from ferlib.experiment import RunSpec

    return RunSpec(data=str(data), noise="symmetric:0.3", method=method, out=str(out), method_options=method_options,
                   backbone=BackboneConfig(model_kwargs={"channels": [8, 16, 32, 64], "stem_width": 8}),
                   train=TrainConfig(epochs=2, batch_size=16, image_size=32, progress=False, device="cpu",
                                     eval_batch_size=64))
