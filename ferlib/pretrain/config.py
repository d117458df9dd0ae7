"""The settings of one self-supervised pretraining: :class:`PretrainConfig`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..options import AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT_OPEN, check_ranges, check_types
from .methods import SSL_METHODS
from .views import ViewConfig

__all__ = ["PretrainConfig", "NOT_IN_KEY"]

#: Fields that do not change the checkpoint: left out of its cache key.
NOT_IN_KEY = ("device", "progress", "compile")


@dataclass(frozen=True)
class PretrainConfig:
    """How a backbone is pretrained on the train split's images (labels never read).

    method : ``simclr`` | ``byol`` | ``mocov2`` (:mod:`ferlib.pretrain.methods`).
    epochs, batch_size : passes over the train images; images per step (each seen as two views). Every epoch
        has floor(N / batch_size) steps over a seeded permutation.
    lr, weight_decay, momentum : SGD (lightly's CIFAR-10 benchmark settings for all three objectives: lr
        0.06 x batch / 128, weight decay 5e-4, momentum 0.9), on a per-step cosine schedule to 0.1 % of ``lr``
        after a linear warm-up of ``warmup_epochs`` (lightly's ``CosineWarmupScheduler``).
    temperature : NT-Xent / InfoNCE temperature; None = the method's paper value (SimCLR 0.5, MoCo v2 0.2).
    ema : momentum of BYOL's target (start of its cosine to 1) and MoCo v2's key encoder.
    queue : MoCo v2's queue of negative keys.
    hidden_dim, out_dim : width of the projection (and BYOL prediction) MLP's hidden layer; its output.
    image_size : side in pixels the network sees (the faces are resized on the device).
    views : :class:`~ferlib.pretrain.views.ViewConfig`, how each view is drawn (a dict is converted).
    amp, channels_last, compile : as :class:`ferlib.engine.TrainConfig` (bfloat16 autocast where the device
        computes it natively and the backbone's layers pass :func:`ferlib.engine.probe_bf16`; the loss itself in
        float32).
    seed : seeds the initial weights, the image order and every augmentation draw.
    device : ``auto`` | ``cpu`` | ``cuda[:i]``; progress : a progress bar per epoch. Neither (nor ``compile``)
        is part of the checkpoint's key (:data:`NOT_IN_KEY`).

    The defaults are the CPU budget: the half-width ResNet-18 of ``cpu_full`` (channels 32-64-128-256, stem 32)
    at 48 px on the 28,150 FERPlus train images within 60 minutes on 2 CPU cores. Measured on this machine's
    2-core EPYC (AVX-512 BF16, so bfloat16 autocast) beside a training that held the cores, so as ratios to a CE
    step measured in the same process, interleaved, and the reference the ``cpu_full`` profile documents (a CE
    epoch over the same images, float32, batch 64, 2 threads: 31.5 s, i.e. 894 img/s):

    - 2 threads, 16 repetitions: a SimCLR step at batch 256 costs 1.13x the CE step per image (15.2 vs 13.4 ms
      per image under load); 1 thread, 6 repetitions: 1.17x (2.62 vs 2.23 ms), i.e. ~380 img/s on one core,
      which a real 2-epoch run on the FERPlus train images at 1 thread confirmed: 74.5 s per epoch.
    - So an epoch (109 steps) takes 1.13-1.17 x 31.5 = 36-37 s; at the 1-thread speed with the 1.7-2.0x gain of
      a second thread CE shows, 37-43 s. 60 epochs: 36-43 min.
    - The evaluation (features of the 35,198 faces, five linear probes, k-NN) took 39 s on one thread; loading
      and fingerprinting the cached dataset < 1 s. In all ~37-44 min: a 1.4-1.6x margin on the 60 minutes for
      the extrapolation.
    - The real run (``reports/evidence/pretrain/``, alone on the machine, 2 threads, bf16): 48-54 s per epoch,
      48.0 min of training, 48.4 min with the evaluation; within the budget, 1.1-1.3x the extrapolation.

    Per step MoCo v2 costs ~0.64x SimCLR (one view back-propagated) and BYOL ~1.3x (two momentum forwards):
    scale their epochs for the same budget. On a GPU the run takes minutes.
    """

    method: str = "simclr"
    epochs: int = 60
    batch_size: int = 256
    lr: float = 0.12
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: int = 1
    temperature: float | None = None
    ema: float = 0.99
    queue: int = 4096
    hidden_dim: int = 512
    out_dim: int = 128
    image_size: int = 48
    views: ViewConfig = field(default_factory=ViewConfig)
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.views, dict):
            views = {k: tuple(v) if isinstance(v, list) else v for k, v in self.views.items()}
            object.__setattr__(self, "views", ViewConfig(**views))
        if self.method not in SSL_METHODS:
            raise ValueError(f"PretrainConfig.method must be one of {tuple(SSL_METHODS)}, got {self.method!r}")
        check_types(self, where="PretrainConfig")
        check_ranges(self, _RANGES, where="PretrainConfig")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"PretrainConfig.warmup_epochs={self.warmup_epochs} must be below epochs={self.epochs}")

    def key_fields(self) -> dict:
        """The settings that decide the checkpoint (all but :data:`NOT_IN_KEY`), as plain data."""
        return {k: v for k, v in asdict(self).items() if k not in NOT_IN_KEY}


_RANGES = {"epochs": AT_LEAST_1, "batch_size": (lambda v: v >= 2, ">= 2"), "lr": POSITIVE,
           "weight_decay": NON_NEGATIVE, "momentum": UNIT_OPEN, "warmup_epochs": NON_NEGATIVE,
           "temperature": (lambda v: v is None or v > 0, "> 0 (or None: the method's)"), "ema": UNIT_OPEN,
           "queue": AT_LEAST_1, "hidden_dim": AT_LEAST_1, "out_dim": AT_LEAST_1, "image_size": (lambda v: v >= 8, ">= 8 (pixels)"), "seed": NON_NEGATIVE}
