"""Self-supervised pretraining on the training faces, without their labels: a face-pretrained start that needs
nothing but the user's own images.

The seed methods (and SCN, RUL, EAC, DMUE) start from a ResNet-18 pretrained on MS-Celeb-1M faces, whose
weights cannot be had here. In learning with noisy labels, self-supervised pretraining on the same images is an
established remedy (Zheltonozhskii et al., "Contrast to Divide: Self-Supervised Pre-Training for Learning with
Noisy Labels", WACV 2022): the representation is learnt before any label, so the noise cannot shape it.

    python -m ferlib pretrain --data ../shared/data/ferplus --backbone-opt channels=[32,64,128,256] \\
        --backbone-opt stem_width=32            # -> <cache>/pretrain/simclr-<key>/weights.pt, probe + k-NN
    python -m ferlib train --data ../shared/data/ferplus --weights ssl --backbone-opt ...

Objectives (:mod:`~ferlib.pretrain.methods`, built from ``lightly``'s losses, heads and schedules): SimCLR (Chen
et al., ICML 2020), BYOL (Grill et al., NeurIPS 2020), MoCo v2 (Chen et al., arXiv:2003.04297). Views:
:mod:`~ferlib.pretrain.views`. Loop: :mod:`~ferlib.pretrain.loop`. Evaluation (linear probe, k-NN):
:mod:`~ferlib.pretrain.probe`. Cache, provenance and ``weights: ssl``: :mod:`~ferlib.pretrain.store`.
"""
from __future__ import annotations

from .config import PretrainConfig
from .loop import fit_ssl, train_one_epoch
from .methods import SSL_METHODS, create_ssl
from .probe import evaluate_representation, knn_predict, linear_probe
from .store import SSL, checkpoint_key, images_fingerprint, pretrain, pretrain_command, pretrain_jobs, ssl_weights
from .views import ViewConfig, two_views

__all__ = ["PretrainConfig", "ViewConfig", "SSL", "SSL_METHODS", "pretrain", "ssl_weights", "pretrain_jobs",
           "pretrain_command",
           "fit_ssl", "train_one_epoch", "create_ssl", "two_views", "linear_probe", "knn_predict",
           "evaluate_representation", "images_fingerprint", "checkpoint_key"]
