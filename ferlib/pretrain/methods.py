"""The self-supervised objectives, assembled from ``lightly``'s torch-level pieces (losses, heads, momentum
updates and schedules; never its Lightning trainer). Each is a module holding the backbone being pretrained:
``forward(x0, x1)`` maps two views (B, C, H, W) of the same faces to the tensors its ``loss`` compares, so the
loop runs the networks under autocast and the loss in float32; ``after_step(step, total)`` updates momentum
encoders after the optimiser's step.

- ``simclr``: SimCLR (Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
  Representations", ICML 2020): projection MLP, NT-Xent over the 2B views of the batch (temperature 0.5, the
  paper's CIFAR-10 choice; Appendix B.9).
- ``byol``: BYOL (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020): online projection + prediction MLPs
  regress the target (momentum) network's projection of the other view, symmetrised; the target momentum
  follows the paper's cosine schedule from ``ema`` (default 0.99, the paper's 0.996 is for 1000 ImageNet
  epochs) to 1.
- ``mocov2``: MoCo v2 (Chen, Fan, Girshick, He, "Improved Baselines with Momentum Contrastive Learning",
  arXiv:2003.04297): MLP head, InfoNCE of the query against its momentum key and a queue of earlier keys
  (temperature 0.2, momentum ``ema`` default 0.99 and queue 4096, lightly's small-data settings; the paper:
  0.999 and 65536 for ImageNet). Shuffle-BN is left out: it only matters when BatchNorm statistics are
  computed per device over several devices.

Heads are sized for small backbones (hidden ``PretrainConfig.hidden_dim``, output ``out_dim``; the papers' 2048
or 4096 and 128 or 256 are for ResNet-50's 2048 features).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["SSL_METHODS", "create_ssl", "SimCLR", "BYOL", "MoCoV2"]


class SimCLR(nn.Module):
    """SimCLR: ``z = g(f(x))``, NT-Xent between the two views' ``z`` with the other 2B - 2 views as negatives."""

    temperature = 0.5

    def __init__(self, backbone: nn.Module, cfg) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules.heads import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone
        self.head = SimCLRProjectionHead(backbone.num_features, cfg.hidden_dim, cfg.out_dim)
        self.criterion = NTXentLoss(temperature=cfg.temperature or self.temperature)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections (B, out_dim) of both views."""
        return self.head(self.backbone(x0)), self.head(self.backbone(x1))

    def loss(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        return self.criterion(z0, z1)

    def after_step(self, step: int, total: int) -> None:
        """Nothing to update."""


class _Momentum(nn.Module):
    """A backbone and projection head with momentum (exponential moving average) copies of both."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone, self.head = backbone, head
        self.backbone_momentum, self.head_momentum = copy.deepcopy(backbone), copy.deepcopy(head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.head_momentum)

    def momentum_project(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.head_momentum(self.backbone_momentum(x))

    def _update(self, m: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.head, self.head_momentum, m)


class BYOL(_Momentum):
    """BYOL: ``p = q(g(f(x)))`` regresses the momentum network's ``g'(f'(x'))`` of the other view (negative
    cosine similarity, symmetrised); the momentum rises from ``ema`` to 1 on a cosine over the run."""

    def __init__(self, backbone: nn.Module, cfg) -> None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead

        super().__init__(backbone, BYOLProjectionHead(backbone.num_features, cfg.hidden_dim, cfg.out_dim))
        self.predictor = BYOLPredictionHead(cfg.out_dim, cfg.hidden_dim, cfg.out_dim)
        self.criterion = NegativeCosineSimilarity()
        self.ema = cfg.ema

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Online predictions p0, p1 and momentum projections t0, t1 (each (B, out_dim))."""
        p0, p1 = (self.predictor(self.head(self.backbone(x))) for x in (x0, x1))
        return p0, p1, self.momentum_project(x0), self.momentum_project(x1)

    def loss(self, p0, p1, t0, t1) -> torch.Tensor:
        return 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))

    def after_step(self, step: int, total: int) -> None:
        """EMA update with momentum ``cosine_schedule(step, total, ema, 1)`` (BYOL, Sec. 3.2)."""
        from lightly.utils.scheduler import cosine_schedule

        self._update(cosine_schedule(step, total, self.ema, 1.0))


class MoCoV2(_Momentum):
    """MoCo v2: InfoNCE of the query ``g(f(x0))`` against its key ``g'(f'(x1))`` and a queue of ``queue``
    earlier keys (lightly's ``NTXentLoss`` with a memory bank); constant momentum ``ema``.

    The queue is state (a non-persistent buffer in lightly): it is saved with the module through
    :meth:`get_extra_state`, so a resumed run continues with the same negatives."""

    temperature = 0.2

    def __init__(self, backbone: nn.Module, cfg) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules.heads import MoCoProjectionHead

        super().__init__(backbone, MoCoProjectionHead(backbone.num_features, cfg.hidden_dim, cfg.out_dim))
        self.criterion = NTXentLoss(temperature=cfg.temperature or self.temperature,
                                    memory_bank_size=(cfg.queue, cfg.out_dim))
        self.ema = cfg.ema

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query (B, out_dim) of view 0 and momentum key (B, out_dim) of view 1."""
        return self.head(self.backbone(x0)), self.momentum_project(x1)

    def loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self.criterion(q, k)

    def after_step(self, step: int, total: int) -> None:
        self._update(self.ema)

    def get_extra_state(self) -> dict:
        bank = self.criterion.memory_bank
        return {"bank": bank.bank.clone(), "ptr": bank.bank_ptr.clone()}

    def set_extra_state(self, state: dict) -> None:
        bank = self.criterion.memory_bank
        bank.bank.copy_(state["bank"])
        bank.bank_ptr.copy_(state["ptr"])


#: Objective name -> class (``PretrainConfig.method``).
SSL_METHODS: dict[str, type[nn.Module]] = {"simclr": SimCLR, "byol": BYOL, "mocov2": MoCoV2}


def create_ssl(backbone: nn.Module, cfg) -> nn.Module:
    """The objective ``cfg.method`` (:data:`SSL_METHODS`) around ``backbone`` (a timm trunk with
    ``num_features``), its heads initialised from the global torch RNG."""
    return SSL_METHODS[cfg.method](backbone, cfg)
