"""LDLVA: uncertainty-aware label distribution learning with neighbours in an auxiliary (valence-arousal) space.

Le, Nguyen, Tran, Tjiputra, Le, Nguyen, "Uncertainty-aware label distribution learning for facial expression
recognition", WACV 2023. Official code: minhnhatvt/label-distribution-learning-fer-tf (TensorFlow), read at
a741b36: ``src/train.py`` (train_step), ``src/utils.py`` (construct_target_distribution, DiscriminativeLoss,
CELoss), ``src/models.py`` (AdaptiveSimNet), ``src/data_utils.py`` (local similarity, neighbour loading).
Notes: ``docs/methods/ldlva.md``.

Per step, for a sample i with given label y_i and its K offline neighbours j in the auxiliary space:

    a_ij = exp(-||v_i - v_j||_1 / 0.5)                              local similarity (offline)
    c_ij = sigmoid(max(MLP([f_i ; f_j]), -1.3))                     calibration score
    d_i  = sum_j a_ij c_ij p_j / sum_j a_ij c_ij                    aggregated neighbour distribution
    t_i  = lambda_i onehot(y_i) + (1 - lambda_i) d_i,  lambda_i = sigmoid(theta_i)
    L    = mean_i H(t_i, p_i) + gamma * L_dis                       L_dis: weighted center loss

What carries gradient follows the official code: the neighbours are forwarded outside the gradient tape (f_j,
p_j constant); f_i reaches the backbone through both the classifier and the calibration MLP; the target is NOT
detached, so the calibration MLP and theta learn through it; theta is stepped by its own SGD (never by the
main optimiser; here in :meth:`LDLVA.after_step`); the center loss sees lambda as a constant, and the centers
are updated by hand after each step (pull towards the class means, push apart).

Where we depart from the official code (each also noted at its config field):

- ``aux="landmarks:dlib"`` by default, because plain FERPlus has no VA and no VA model is obtainable: the kNN
  is built on standardised 68-point facial landmarks (face geometry). Any source of :mod:`ferlib.va` can be
  named instead (``csv:<path>`` VA keyed by id, ``onnx:<path>`` a VA regressor, ``affectnet:<root>`` AffectNet's
  own VA, ``file:<path>`` any per-sample values); ``aux="features"`` uses the bound model's features (meaningful
  only for a pretrained backbone).
- ``neighbours="bank"`` (opt-in, ~4x cheaper): neighbour outputs come from a memory bank, not from forwarding
  the neighbour images every step as the code (and the default ``"faithful"``) does.
- For a high-dimensional aux, the L1 distances of a_ij are divided by their median (``distance_scale``).
- We store a_ij / max_j a_ij. d_i is invariant to that per-row factor, and the row can no longer underflow to 0.
- The soft cross-entropy uses ``log_softmax``, where the official code uses ``log(softmax + 1e-10)``.
- The official classifier declares an L2 regulariser (0.001), but the custom training loop never adds
  ``model.losses``, so it has no effect there. We leave it out as well. The code uses no weight decay at all:
  its paper recipe (``--recipe paper``, :mod:`ferlib.recipes`) has ``weight_decay=0``; the shared recipe applies
  the run's weight decay to every method alike (model and calibration MLP).
- theta's step is rescaled with the batch size (``lamb_lr_batch``) so each visit moves it as in the code.
- Central images get the run's augmentation (the paper recipe has the code's). Neighbour images get flip and
  pad-and-crop, zero fill, pixels in [-1, 1], as in the code.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment import AugmentConfig, augment_batch, prepare_batch
from ..data.storage import batch_images
from ..va import KNN_METRICS, aux_from_array, aux_source_help, knn, parse_aux, resolve_aux
from ..options import AT_LEAST_1, FINITE, NON_NEGATIVE, POSITIVE, UNIT_OPEN, check_ranges, ranged
from .base import Method, Readout, register_method
from .ldl_votes import soft_cross_entropy

__all__ = ["LDLVA", "LDLVAConfig", "local_similarity", "CalibrationNet", "calibration_score",
           "aggregate_neighbours", "uncertainty_factor", "target_distribution", "center_loss",
           "center_pull", "center_repulsion", "center_push", "balanced_class_weights"]

NEIGHBOUR_MODES = ("bank", "faithful")
BN_MODES = ("train", "eval")
DISTANCE_SCALES = ("auto", "none", "median")


@dataclass(frozen=True)
class LDLVAConfig:
    """LDLVA hyperparameters; defaults from ``cfg_files/config_resnet18_raf.py`` unless noted.

    num_neighbors : int >= 1
        K neighbours per sample (``num_neighbors`` = 8).
    aux : str
        Auxiliary space for the offline kNN: an aux source string of :mod:`ferlib.va` (``name`` or
        ``name:argument``, :func:`ferlib.va.aux_source_help`), checked when the config is built. Default
        ``landmarks:dlib`` (DEPARTS: the paper uses EmoNet valence-arousal, which is not obtainable here and
        which plain FERPlus lacks): the 68 facial landmarks of :func:`ferlib.landmarks.extract_landmarks`,
        flattened to 136 columns and standardised, i.e. neighbours by face geometry. ``features``: the
        model's pooled features on the un-augmented train images, computed in ``bind`` (meaningful only for a
        pretrained backbone). ``file:<path>`` (or a bare path): a ``.npy`` row-aligned with the train split, or
        a ``.csv`` keyed by ``id``; ``csv:<path>`` (``id, valence, arousal``), ``onnx:<path>`` (a VA regressor),
        ``affectnet:<root>`` (AffectNet's VA). A teacher behind a file (its features, or VA projected from its
        probabilities) must be trained on the noisy training labels only; ORACLE sources (``oracle_votes``)
        are refused.
    aux_standardise : bool
        Standardise each aux column before the kNN (off: VA is used as is in the official code).
    knn_metric : str
        ``euclidean`` | ``manhattan`` | ``cosine``. The official kNN comes precomputed in a csv with an
        unstated distance (docs/methods/ldlva.md, A1); Euclidean is our default.
    similarity_temperature : float > 0
        The 0.5 of a_ij = exp(-||v_i - v_j||_1 / 0.5) (``data_utils.get_train_dataset``).
    distance_scale : str
        Divide the L1 distances of a_ij by their median over all kNN pairs (``median``), or not (``none``:
        official, meant for VA in [-1, 1]). ``auto`` (default) = ``none`` for a 2-column aux (VA) and
        ``median`` otherwise (DEPARTS where the aux is high-dimensional: there the raw kernel would give
        one neighbour all the weight).
    neighbours : str
        ``faithful`` (default): the official scheme (``src/train.py:64-69``), the K neighbour images are loaded,
        augmented (flip, pad-and-crop) and forwarded every step, about (1 + K) times the forward cost (4.4x
        CE's epoch time on 2 CPU cores). ``bank`` (DEPARTURE, opt-in, for speed: 1.06-1.2x CE): neighbour
        features f_j and predictions p_j are read from a memory bank of each sample's latest
        training-forward outputs (up to one epoch old), initialised in ``bind`` by one no-grad eval pass and
        refreshed whenever a sample is in a batch; one forward per image. The CPU study profiles opt in.
    neighbour_bn : str
        ``faithful`` mode: ``train`` (official: BatchNorm in training mode, running statistics updated by the
        neighbour batches, no gradient) or ``eval`` (running statistics used, not updated).
    neighbour_pad : int >= 0
        Pad-and-crop shift in pixels of the neighbour augmentation (official ``pad_size``: 8 at 224 px,
        4 at 112 px; 4 suits 48 px).
    calibration : bool
        Use the calibration score c_ij (official). False sets c_ij = 1 (ablation: fixed similarity only).
    calib_clamp : float
        Lower clamp of the calibration logit (``AdaptiveSimNet``: max(x, -1.3), so c_ij >= 0.214).
    lamb_init, lamb_lr, lamb_momentum : float
        theta_i initial value (any finite), learning rate (>= 0) and momentum (in [0, 1)) of theta's own SGD
        (0.5 / 10 / 0 for RAF-DB; AffectNet uses 0.8 / 10 / 0.9). ``lamb_lr = 0`` keeps lambda at
        sigmoid(lamb_init) (ablation).
    lamb_lr_batch : int >= 0
        The batch size ``lamb_lr`` was tuned at (``config_resnet18_raf.py``: 32). theta's gradient comes from
        the batch-MEAN loss, so one visit moves theta_i by lamb_lr / B * dL_i/dtheta_i; we step with
        lamb_lr * B / lamb_lr_batch, which gives every visit the official step whatever our batch size B
        (``src/train.py:95-102``). 0 = no rescaling (DEPARTURE, ferlib up to bec7813: at B = 64 each visit
        moved theta half as far as the code).
    gamma : float >= 0
        Weight of the discriminative loss (0.01).
    center_lr : float >= 0
        SGD rate of the manual center updates (``DiscriminativeLoss(centers_alpha=0.5)``).
    center_push : float >= 0
        Factor on the repulsion gradient in the push step (0.1 in ``update_centers``).
    class_weights : bool
        sklearn "balanced" class weights in the soft cross-entropy (off for RAF-DB, on for AffectNet).
    image_size : int >= 0
        Side of the images of the ``bind`` pass (bank init, aux features); 0 = the run's
        ``TrainConfig.image_size``.
    seed : int >= 0
        Seed of the neighbour augmentation (``faithful``), combined with the step count so resume is exact.
    """

    num_neighbors: int = ranged(8, AT_LEAST_1)
    aux: str = "landmarks:dlib"
    aux_standardise: bool = False
    knn_metric: str = "euclidean"
    similarity_temperature: float = ranged(0.5, POSITIVE)
    distance_scale: str = "auto"
    neighbours: str = "faithful"
    neighbour_bn: str = "train"
    neighbour_pad: int = ranged(4, NON_NEGATIVE)
    calibration: bool = True
    calib_clamp: float = ranged(-1.3, FINITE)
    lamb_init: float = ranged(0.5, FINITE)
    lamb_lr: float = ranged(10.0, NON_NEGATIVE)
    lamb_momentum: float = ranged(0.0, UNIT_OPEN)
    lamb_lr_batch: int = ranged(32, NON_NEGATIVE)
    gamma: float = ranged(0.01, NON_NEGATIVE)
    center_lr: float = ranged(0.5, NON_NEGATIVE)
    center_push: float = ranged(0.1, NON_NEGATIVE)
    class_weights: bool = False
    image_size: int = ranged(0, NON_NEGATIVE)
    seed: int = ranged(0, NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_ranges(self)
        for key, valid in (("neighbours", NEIGHBOUR_MODES), ("neighbour_bn", BN_MODES),
                           ("knn_metric", KNN_METRICS), ("distance_scale", DISTANCE_SCALES)):
            if getattr(self, key) not in valid:
                raise ValueError(f"LDLVAConfig.{key} must be one of {valid}, got {getattr(self, key)!r}")
        source, _ = parse_aux(self.aux, where="LDLVAConfig.aux")
        if source.oracle:
            raise ValueError(f"LDLVAConfig.aux: {self.aux!r} is an ORACLE source (it reads the human votes), which "
                             "a noisy-label method may not see; valid: " + aux_source_help())


# --------------------------------------------------------------------------- paper equations
def local_similarity(distance: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Local similarity of a sample and its neighbours: a_ij = exp(-||v_i - v_j||_1 / T).

    Le et al., WACV 2023 (auxiliary-space similarity; official ``data_utils.get_train_dataset``).
    distance : (N, K) L1 distances ||v_i - v_j||_1 in the auxiliary space; T = ``temperature`` (0.5).
    Returns (N, K) in (0, 1].
    """
    return torch.exp(-distance / temperature)


class CalibrationNet(nn.Module):
    """The calibration MLP of ``AdaptiveSimNet``: [f_i ; f_j] (2D) -> 512 -> BN -> ReLU -> 256 -> BN -> ReLU -> 1.

    He-normal (truncated, as Keras) hidden weights, Glorot-uniform output weights, zero biases; BatchNorm
    with Keras' defaults (momentum 0.99, i.e. torch momentum 0.01; epsilon 1e-3).
    """

    def __init__(self, feature_dim: int, hidden: tuple[int, int] = (512, 256)) -> None:
        super().__init__()
        dims = (2 * feature_dim, *hidden)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            linear = nn.Linear(d_in, d_out)
            std = math.sqrt(2.0 / d_in)
            nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.BatchNorm1d(d_out, eps=1e-3, momentum=0.01), nn.ReLU()]
        out = nn.Linear(dims[-1], 1)
        nn.init.xavier_uniform_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """(M, 2D) -> (M,) calibration logits (before clamp and sigmoid)."""
        return self.net(pairs).squeeze(-1)


def calibration_score(net: CalibrationNet, feat: torch.Tensor, feat_nb: torch.Tensor,
                      clamp: float = -1.3) -> torch.Tensor:
    """Calibration score of each neighbour: c_ij = sigmoid(max(MLP([f_i ; f_j]), -1.3)).

    Le et al., WACV 2023 (adaptive similarity; official ``models.AdaptiveSimNet``).
    feat : (B, D) f_i of the central samples; feat_nb : (B, K, D) f_j of their neighbours.
    Returns (B, K) in [sigmoid(clamp), 1).
    """
    b, k, d = feat_nb.shape
    pairs = torch.cat([feat[:, None].expand(b, k, d), feat_nb.to(feat.dtype)], dim=-1)
    return torch.sigmoid(net(pairs.reshape(b * k, 2 * d)).clamp_min(clamp)).view(b, k)


def aggregate_neighbours(prob_nb: torch.Tensor, similarity: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
    """Aggregated neighbour distribution: d_i = sum_j a_ij c_ij p_j / sum_j a_ij c_ij.

    Le et al., WACV 2023 (official ``utils.construct_target_distribution``).
    prob_nb : (B, K, C) neighbour predictions p_j; similarity : (B, K) a_ij; calibration : (B, K) c_ij.
    Returns (B, C), rows summing to 1.
    """
    weight = similarity * calibration
    return (weight[..., None] * prob_nb).sum(1) / weight.sum(1, keepdim=True)


def uncertainty_factor(theta: torch.Tensor) -> torch.Tensor:
    """Per-sample uncertainty factor lambda_i = sigmoid(theta_i) (Le et al., WACV 2023; official ``lamb_hat``)."""
    return torch.sigmoid(theta)


def target_distribution(label: torch.Tensor, neighbour_dist: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Target label distribution: t_i = lambda_i onehot(y_i) + (1 - lambda_i) d_i.

    Le et al., WACV 2023 (official ``utils.construct_target_distribution``).
    label : (B,) given labels y_i; neighbour_dist : (B, C) d_i; lam : (B,) lambda_i in (0, 1).
    Returns (B, C), rows summing to 1.
    """
    onehot = F.one_hot(label, neighbour_dist.shape[1]).to(neighbour_dist.dtype)
    lam = lam[:, None].to(neighbour_dist.dtype)
    return lam * onehot + (1 - lam) * neighbour_dist


def center_loss(x: torch.Tensor, label: torch.Tensor, centers: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Uncertainty-weighted center loss: L_dis = 1/2 sum_m lambda_m ||x_m - c_{y_m}||^2 / M.

    Le et al., WACV 2023 (discriminative loss; official ``utils.DiscriminativeLoss.call``).
    x : (M, D) features (central samples and neighbours); label : (M,) given labels y_m; centers : (C, D);
    weight : (M,) lambda_m, treated as constants. Returns a scalar.
    """
    diff = x - centers[label]
    return 0.5 * (weight.detach()[:, None] * diff.pow(2)).sum() / len(x)


@torch.no_grad()
def center_pull(centers: torch.Tensor, x: torch.Tensor, label: torch.Tensor, weight: torch.Tensor,
                lr: float = 0.5) -> torch.Tensor:
    """Pull step of the centers: c_k += lr * sum_{m: y_m = k} lambda_m (x_m - c_k) / ((n_k + 1) M).

    Le et al., WACV 2023 (official ``DiscriminativeLoss.compute_grads`` then an SGD step of rate 0.5).
    centers : (C, D); x : (M, D); label : (M,); weight : (M,) lambda_m; n_k = count of label k among the M.
    Returns the new (C, D) centers.
    """
    onehot = F.one_hot(label, len(centers)).to(x.dtype)
    pull = onehot.T @ (weight[:, None] * (x - centers[label]))
    return centers + lr * pull / (onehot.sum(0)[:, None] + 1) / len(x)


def center_repulsion(centers: torch.Tensor) -> torch.Tensor:
    """Inter-center repulsion energy: S_B = sum_{k<l} exp(-||c_k - c_l||^2 / D).

    Le et al., WACV 2023 (official ``DiscriminativeLoss.update_centers``, D = feature dimension).
    centers : (C, D). Returns a scalar that decreases as the centers move apart. The squares are expanded
    (not ``cdist``) so that the gradient exists where centers coincide, as they all do at the start (0).
    """
    sq = (centers[:, None] - centers[None]).pow(2).sum(-1)
    upper = torch.triu(torch.ones_like(sq, dtype=torch.bool), diagonal=1)
    return torch.exp(-sq[upper] / centers.shape[1]).sum()


def center_push(centers: torch.Tensor, lr: float = 0.5, scale: float = 0.1) -> torch.Tensor:
    """Push step of the centers: c <- c - lr * scale * grad_c S_B (official: SGD rate 0.5, scale 0.1).

    Le et al., WACV 2023 (official ``DiscriminativeLoss.update_centers``).
    centers : (C, D). Returns the new (C, D) centers (no graph attached).
    """
    with torch.enable_grad():
        c = centers.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(center_repulsion(c), c)
    return (centers - lr * scale * grad).detach()


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """sklearn's "balanced" weights n / (C_present * n_k) (official AffectNet setting); absent classes get 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights.astype(np.float32)


# --------------------------------------------------------------------------- helpers of bind
@torch.no_grad()
def _embed_all(model: nn.Module, images: np.ndarray, size: int, device: torch.device, augment: AugmentConfig,
               batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode features (N, D) and softmax predictions (N, C) of uint8 images (N, H, W, C), resized to
    ``size`` and normalised as ``augment`` says."""
    was_training = model.training
    model.eval()
    feats, probs = [], []
    for start in range(0, len(images), batch_size):
        x = prepare_batch(torch.from_numpy(images[start:start + batch_size]).to(device), size, augment)
        f = model.embed(x).float()
        feats.append(f)
        probs.append(torch.softmax(model.head(f).float(), dim=1))
    model.train(was_training)
    return torch.cat(feats), torch.cat(probs)


def _neighbour_distances(aux: np.ndarray, neighbours: np.ndarray, mode: str, chunk: int = 4096) -> np.ndarray:
    """(N, K) L1 distances ||v_i - v_j||_1, divided by their median when ``mode`` asks for it."""
    dist = np.concatenate([np.abs(aux[s:s + chunk, None, :] - aux[neighbours[s:s + chunk]]).sum(-1)
                           for s in range(0, len(aux), chunk)])
    if mode == "median" or (mode == "auto" and aux.shape[1] != 2):
        dist = dist / max(float(np.median(dist)), 1e-12)
    return dist.astype(np.float32)


# --------------------------------------------------------------------------- the method
@register_method
class LDLVA(Method):
    """Label distributions from auxiliary-space neighbours, blended with the given label by a learnt lambda."""

    name = "ldlva"
    Config = LDLVAConfig
    ablations = {
        "no_calibration": {"calibration": False},  # c_ij = 1: neighbours weighted by a_ij alone
        "fixed_lambda": {"lamb_lr": 0.0},          # lambda stays sigmoid(lamb_init) for every sample
        "no_discriminative": {"gamma": 0.0},       # soft-target cross-entropy alone
        "feature_space": {"aux": "features"},      # kNN on the model's features instead of landmarks
        "bank_neighbours": {"neighbours": "bank"},  # neighbour outputs from a bank instead of forwarding them
    }
    model_parts = ("embed", "dropout", "head", "feature_dim")  # features for the calibrator, logits for targets

    def __init__(self, config: LDLVAConfig, *, num_classes: int, num_train: int, feature_dim: int) -> None:
        super().__init__(config, num_classes=num_classes, num_train=num_train, feature_dim=feature_dim)
        k = config.num_neighbors
        self.calibrator = CalibrationNet(feature_dim) if config.calibration else None
        self.register_buffer("labels", torch.zeros(num_train, dtype=torch.int64))
        self.register_buffer("neighbour_index", torch.zeros(num_train, k, dtype=torch.int64))
        self.register_buffer("similarity", torch.ones(num_train, k))
        self.register_buffer("theta", torch.full((num_train,), float(config.lamb_init)))
        self.register_buffer("theta_velocity", torch.zeros(num_train))
        self.register_buffer("centers", torch.zeros(num_classes, feature_dim))
        self.register_buffer("class_weight", torch.ones(num_classes))
        self.register_buffer("target", torch.full((num_train, num_classes), float("nan")))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        if config.neighbours == "bank":
            self.register_buffer("bank_feature", torch.zeros(num_train, feature_dim))
            self.register_buffer("bank_prob", torch.full((num_train, num_classes), 1.0 / num_classes))
        self._images = None   # the train images (N, H, W, C) uint8, in memory or memory-mapped
        self._augment: AugmentConfig | None = None   # the run's, for the neighbours' normalisation
        self._pending: dict | None = None

    # ----------------------------------------------------------------- bind: offline neighbours
    def bind(self, model: nn.Module, train, config) -> None:
        """Build the kNN graph and a_ij in the auxiliary space; initialise the bank (one no-grad pass)."""
        cfg, device = self.config, self.theta.device
        self.labels.copy_(torch.from_numpy(train.labels))
        self._images = train.images
        self._augment = config.augment
        if cfg.class_weights:
            self.class_weight.copy_(torch.from_numpy(balanced_class_weights(train.labels, self.num_classes)))
        source, _ = parse_aux(cfg.aux, where="LDLVAConfig.aux")
        feats = None
        if cfg.neighbours == "bank" or "features" in source.context:
            feats, probs = _embed_all(model, train.images, cfg.image_size or config.image_size, device, config.augment)
            if cfg.neighbours == "bank":
                self.bank_feature.copy_(feats)
                self.bank_prob.copy_(probs)
        aux = resolve_aux(cfg.aux, train, where="LDLVAConfig.aux",
                          features=None if feats is None else feats.cpu().numpy())
        aux = aux_from_array(aux, standardise=cfg.aux_standardise or source.standardise)
        neighbours = knn(aux, cfg.num_neighbors, metric=cfg.knn_metric, device=device)
        dist = _neighbour_distances(aux, neighbours, cfg.distance_scale)
        # d_i is unchanged by a per-row factor on a_ij: store a_ij / max_j a_ij, which cannot underflow to 0.
        relative = torch.from_numpy(dist - dist.min(1, keepdims=True))
        self.neighbour_index.copy_(torch.from_numpy(neighbours))
        self.similarity.copy_(local_similarity(relative, cfg.similarity_temperature))

    # ----------------------------------------------------------------- one step
    def training_step(self, model, batch):
        idx, label = batch["index"], batch["label"]
        nb = self.neighbour_index[idx]                                        # (B, K)
        feat_nb, prob_nb = self._neighbour_outputs(model, batch["image"], nb)  # constants
        feat = model.embed(batch["image"])
        logits = model.head(model.dropout(feat))
        self.record(idx, logits, label)
        similarity = self.similarity[idx]
        calib = (calibration_score(self.calibrator, feat, feat_nb, self.config.calib_clamp).float()
                 if self.config.calibration else torch.ones_like(similarity))
        neighbour_dist = aggregate_neighbours(prob_nb.float(), similarity, calib)
        theta = self.theta[idx].requires_grad_(True)   # a leaf: theta moves only by its own SGD
        lam = uncertainty_factor(theta)
        target = target_distribution(label, neighbour_dist, lam)
        cls = soft_cross_entropy(logits.float(), self.class_weight[label][:, None] * target)
        x_all = torch.cat([feat.float(), feat_nb.flatten(0, 1).float()])
        y_all = torch.cat([label, self.labels[nb].flatten()])
        lam_all = uncertainty_factor(self.theta[torch.cat([idx, nb.flatten()])])
        dis = center_loss(x_all, y_all, self.centers, lam_all)
        self._remember(idx, theta, feat, logits, target, x_all, y_all, lam_all)
        return {"loss": cls + self.config.gamma * dis, "cls": cls, "dis": dis, "lambda": lam.mean().detach()}

    def _neighbour_outputs(self, model, image: torch.Tensor, nb: torch.Tensor):
        """(B, K, D) features and (B, K, C) predictions of the neighbours, without gradient."""
        if self.config.neighbours == "bank":
            return self.bank_feature[nb], self.bank_prob[nb]
        return self._forward_neighbours(model, nb, image.shape[-1])

    @torch.no_grad()
    def _forward_neighbours(self, model, nb: torch.Tensor, size: int):
        """Official scheme: load, augment (flip, pad-and-crop) and forward the K neighbour images."""
        if self._images is None:
            raise RuntimeError("ldlva: call bind(model, train) before training")
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + int(self.step))
        raw = torch.from_numpy(batch_images(self._images, nb.flatten().cpu())).to(nb.device)
        norm = self._augment
        aug = AugmentConfig(pad=self.config.neighbour_pad, erase=0.0, brightness=0.0, contrast=0.0,
                            mean=norm.mean, std=norm.std)
        x, _ = augment_batch(raw, size, aug, gen)
        was_training = model.training
        model.train(self.config.neighbour_bn == "train" and was_training)
        feat = model.embed(x)
        prob = torch.softmax(model.head(model.dropout(feat)).float(), dim=1)
        model.train(was_training)
        return feat.view(*nb.shape, -1), prob.view(*nb.shape, -1)

    @torch.no_grad()
    def _remember(self, idx, theta, feat, logits, target, x_all, y_all, lam_all) -> None:
        """Keep what after_step needs; refresh the read-outs and (bank mode) the bank."""
        self.target[idx] = target.detach().float()
        if self.config.neighbours == "bank":
            self.bank_feature[idx] = feat.detach().float()
            self.bank_prob[idx] = torch.softmax(logits.detach().float(), dim=1)
        self._pending = {"idx": idx, "theta": theta, "x": x_all.detach(), "y": y_all, "lam": lam_all.detach()}

    # ----------------------------------------------------------------- after the optimiser step
    @torch.no_grad()
    def after_step(self) -> None:
        """theta's own SGD step (TF-style momentum on the batch rows), then the manual center updates."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self._step_theta(pending["idx"], pending["theta"].grad)
        cfg = self.config
        centers = center_pull(self.centers, pending["x"], pending["y"], pending["lam"], cfg.center_lr)
        self.centers.copy_(center_push(centers, cfg.center_lr, cfg.center_push))
        self.step += 1

    def _step_theta(self, idx: torch.Tensor, grad: torch.Tensor | None) -> None:
        """v <- momentum v - lr g ; theta <- theta + v, on the rows of the batch (Keras SGD, sparse update).

        lr = lamb_lr * B / lamb_lr_batch (see :class:`LDLVAConfig`), B = len(idx).
        """
        if grad is None:
            return
        cfg = self.config
        lr = cfg.lamb_lr * (len(idx) / cfg.lamb_lr_batch if cfg.lamb_lr_batch else 1.0)
        velocity = cfg.lamb_momentum * self.theta_velocity[idx] - lr * grad
        self.theta_velocity[idx] = velocity
        self.theta[idx] += velocity

    # ----------------------------------------------------------------- read-outs
    def readout(self) -> Readout:
        """Base read-outs plus ``lambda`` (N,), ``score`` = 1 - lambda (N,) and the latest ``target`` (N, C).

        A low lambda means the label is doubted, so ``score`` ranks likely-mislabelled samples first. ``target``
        rows stay NaN for samples never visited (the engine drops each epoch's last partial batch).
        """
        lam = uncertainty_factor(self.theta).cpu().numpy()
        return dataclasses.replace(super().readout(), score=1.0 - lam, target=self.target.cpu().numpy(),
                                   extra={"lambda": lam})
