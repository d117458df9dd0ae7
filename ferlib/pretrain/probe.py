"""How good a frozen representation is, measured as the self-supervised literature does, on plain arrays:

- a **linear probe**: multinomial logistic regression on the frozen, standardised features (SimCLR, Chen et al.
  2020, Sec. B.6: L-BFGS, the L2 penalty chosen on held-out data), here fitted with ``torch.optim.LBFGS``;
- a **weighted k-NN** classifier on cosine similarity (Wu et al., "Unsupervised Feature Learning via
  Non-Parametric Instance Discrimination", CVPR 2018): each of the k nearest training features votes for its
  label with weight exp(similarity / temperature); k 200, temperature 0.1 (as lightly's ``knn_predict``, which
  is not imported because its package loads pytorch_lightning).

:func:`evaluate_representation` is the only place pretraining reads labels: after it, on the clean labels of
the train split (fitting) and of valid / test (scoring).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import classification_metrics

__all__ = ["linear_probe", "knn_predict", "extract_features", "evaluate_representation", "L2_GRID", "DEFAULT_L2"]

#: L2 penalties the linear probe tries; the one with the best valid accuracy is reported.
L2_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
#: The penalty used when the data have no valid split to choose one on.
DEFAULT_L2 = 1e-4


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, *, num_classes: int, l2: float = DEFAULT_L2,
                 max_iter: int = 100):
    """Fit a multinomial logistic regression on frozen features.

    Parameters
    ----------
    train_x : (N, D) float features; standardised with their own mean and standard deviation.
    train_y : (N,) int labels in [0, num_classes).
    l2 : penalty ``l2 / 2 * ||W||^2`` added to the mean cross-entropy (the bias is not penalised).
    max_iter : L-BFGS iterations (strong-Wolfe line search), from zero weights: deterministic.

    Returns
    -------
    predict : function (M, D) features -> (M,) int64 predicted labels.
    """
    x = torch.as_tensor(np.asarray(train_x, dtype=np.float32))
    y = torch.as_tensor(np.asarray(train_y, dtype=np.int64))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()

    def predict(features: np.ndarray) -> np.ndarray:
        z = (torch.as_tensor(np.asarray(features, dtype=np.float32)) - mean) / std
        return (z @ weight + bias).argmax(1).numpy()

    return predict


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk: int = 1024) -> np.ndarray:
    """Weighted k-NN labels of ``test_x`` (M, D) from ``train_x`` (N, D) with labels ``train_y`` (N,).

    Similarity is the cosine; the k nearest (k capped at N) vote with weight exp(sim / temperature); the class
    with the largest summed weight wins. Test rows are processed ``chunk`` at a time. Returns (M,) int64.
    """
    bank = F.normalize(torch.as_tensor(np.asarray(train_x, dtype=np.float32)), dim=1)
    labels = torch.as_tensor(np.asarray(train_y, dtype=np.int64))
    k = min(k, len(bank))
    out = []
    for start in range(0, len(test_x), chunk):
        q = F.normalize(torch.as_tensor(np.asarray(test_x[start:start + chunk], dtype=np.float32)), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes).scatter_add_(1, labels[idx], (sim / temperature).exp())
        out.append(votes.argmax(1))
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def extract_features(backbone: torch.nn.Module, images, cfg, device: torch.device) -> np.ndarray:
    """(N, D) float32 pooled features of uint8 ``images`` (N, H, W, C) through ``backbone`` in eval mode, with
    the evaluation transform of :func:`ferlib.engine.predict` (``cfg``: a :class:`ferlib.engine.TrainConfig`
    giving the input size, precision and layout)."""
    from ..backbones import FERModel
    from ..engine import predict

    _, features = predict(FERModel(backbone, num_classes=1).to(device), images, cfg, device, features=True)
    return features


def evaluate_representation(backbone: torch.nn.Module, data, cfg, device: torch.device, *, k: int = 200,
                            temperature: float = 0.1) -> dict:
    """Linear-probe and k-NN scores of a frozen ``backbone`` on ``data`` (a :class:`~ferlib.data.FERData`).

    Both fit on the train split's clean labels (``true_labels``) and score valid and test (each split present).
    The probe's L2 penalty is chosen on valid among :data:`L2_GRID` (:data:`DEFAULT_L2` without a valid split).

    Returns
    -------
    ``{"linear_probe": {"l2", "selected_on", "<split>": {acc, mean_acc, macro_f1}}, "knn": {"k", "temperature",
    "<split>": {...}}}``.
    """
    splits = [s for s in ("train", "valid", "test") if data.split_counts()[s]]
    feats = {s: extract_features(backbone, data.subset(s).images, cfg, device) for s in splits}
    labels = {s: data.subset(s).true_labels for s in splits}
    scored, classes = [s for s in splits if s != "train"], data.num_classes
    score = lambda s, pred: _scalars(classification_metrics(labels[s], pred, num_classes=classes))  # noqa: E731
    probes = {}
    for l2 in L2_GRID if "valid" in scored else (DEFAULT_L2,):
        predict = linear_probe(feats["train"], labels["train"], num_classes=classes, l2=l2)
        probes[l2] = {s: score(s, predict(feats[s])) for s in scored}
    l2 = max(probes, key=lambda v: probes[v]["valid"]["acc"]) if "valid" in scored else DEFAULT_L2
    knn = {s: score(s, knn_predict(feats["train"], labels["train"], feats[s], num_classes=classes, k=k,
                                   temperature=temperature)) for s in scored}
    return {"linear_probe": {"l2": l2, "selected_on": "valid" if "valid" in scored else "none", **probes[l2]},
            "knn": {"k": k, "temperature": temperature, **knn}}


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not isinstance(v, list)}
