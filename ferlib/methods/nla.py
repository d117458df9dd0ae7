"""NLA: Noise-aware Adaptive Weighting (NAW) + flip-consistency regularisation.

Lee, Choi, Kim, Kim, Nam, "Navigating Label Ambiguity for Facial Expression Recognition in the Wild",
AAAI 2025 (arXiv 2502.09993). Official code: ``jungyu0413/NLA`` at b86f31f (``src/loss.py``, ``src/train.py``,
``main_rafdb.py``), whose effective behaviour we reproduce. Notes: ``docs/methods/nla.md``.

Per sample, the softmax gives a point s = (p_GT, p_NN) (probability of the given label, largest other
probability) in the triangle p_GT + p_NN <= 1. A normalised 2-D Gaussian density at s is the NAW weight w:
a "true" Gaussian when the prediction agrees with the label, a "false" one otherwise. The loss is::

    L = lam_a * mean(CE) + lam_b * mean(w * CE) + lam_c * 32 * mean(JS(z, z_flip))

with z_flip the logits of the horizontal mirror of the augmented image (view ``"flip"``); the factor 32 is the
code's sum over its batch of 32, kept per sample at any batch size (``js_reduction``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..distributed import gather
from ..options import AT_LEAST_1, NON_NEGATIVE, POSITIVE, PROBABILITY, Interval, check_ranges, ranged
from .base import Method, Readout, register_method

__all__ = [
    "NLA",
    "NLAConfig",
    "NAW_FORMS",
    "JS_REDUCTIONS",
    "naw_coordinates",
    "covariance_ramp",
    "naw_covariance",
    "gaussian_density",
    "naw_weight",
    "naw_cross_entropy",
    "logit_mixture_js",
    "mislabel_score",
]

NAW_FORMS = ("per_sample", "pairwise")
JS_REDUCTIONS = ("code", "mean", "sum")


@dataclass(frozen=True)
class NLAConfig:
    """NLA hyperparameters: the official code's defaults (``main_rafdb.py`` argparser), with its names where it
    has a flag (``naw_form``, ``js_reduction``, ``js_code_batch`` and ``detach_weight`` are ours).

    mu_x_t, mu_y_t : float in [0, 1]
        Mean (p_GT, p_NN) of the true-branch Gaussian (prediction == label). Code: 0.5, 0.5.
    mu_x_f, mu_y_f : float in [0, 1]
        Mean of the false-branch Gaussian (prediction != label). Code: 0.30, 0.15.
    t_std_major, t_std_ratio : float > 0
        True-branch sigma and axis ratio r (see :func:`naw_covariance`). Code: 0.8, 2.
    f_std_major, f_std_ratio : float > 0
        False-branch sigma and axis ratio. Code: 0.91, 6.
    t_lambda : float >= 0
        Scale of the true-branch density. Code: 1.
    slope : float <= 0
        Slope of the true-branch correlation ramp eps(e) = 1 - exp(slope * e / E). Code: -15. A positive slope
        would make eps negative and, past -1, the covariance indefinite (:func:`naw_covariance`).
    ramp : bool
        Apply the ramp (code: ``sch_bool``); False keeps eps = 1 from the first epoch.
    lam_a, lam_b, lam_c : float >= 0
        Weights of mean(CE), mean(w * CE) and the JS regulariser. Code: 0.5 each.
    naw_form : ``"per_sample"`` | ``"pairwise"``
        ``per_sample`` (default): w_i from s_i alone, the code from commit b86f31f (2025-05-14) on.
        ``pairwise``: the earlier code's N x N form, where each sample's weight is a batch-coupled average
        (see :func:`naw_weight`). The paper (Feb 2025) predates the fix, so which form produced its numbers
        is unknown (docs/methods/nla.md, A1).
    js_reduction : ``"code"`` | ``"mean"`` | ``"sum"``
        ``code`` (default, faithful at any batch size): lam_c * js_code_batch * mean_i JS_i. The code sums the
        JS term over its batch of 32 (``src/loss.py:61-66``, ``reduction='sum'``; ``src/train.py:38-40``,
        ``main_rafdb.py:28``), so each sample's JS enters with weight lam_c = 0.5 against 0.5 / 32 for its CE:
        16x the per-sample mean. ``code`` keeps that per-sample balance whatever our batch size.
        ``sum``: lam_c * sum_i JS_i over OUR batch (the code's literal form; 2x the code at batch 64).
        ``mean``: lam_c * mean_i JS_i (DEPARTURE, ferlib up to bec7813: 32x weaker than the code; NLA is then
        in effect NAW-weighted CE).
    js_code_batch : int >= 1
        The official batch size that fixes the ``code`` reduction's scale (``main_rafdb.py:28``: 32).
    detach_weight : bool
        Stop gradients through w. The code does not detach (default False; docs/methods/nla.md, A2). From a
        random start the gradient through w collapses NLA to one class on small data (the shipped sample:
        one class for every face from epoch 2, with the shared recipe and with the paper recipe alike): for
        a misclassified sample w falls as p_NN - p_GT grows, so w * CE rewards confident wrong predictions.
        The official code never meets this regime (it fine-tunes an MS-Celeb ResNet-18 whose predictions
        are mostly right from the first step; inferred). ``True`` (DEPARTURE, opt-in) keeps w as a pure
        per-sample weight; the ``smoke`` profile, from scratch on 1.4k faces, uses it.
    """

    mu_x_t: float = ranged(0.5, PROBABILITY)
    mu_y_t: float = ranged(0.5, PROBABILITY)
    mu_x_f: float = ranged(0.30, PROBABILITY)
    mu_y_f: float = ranged(0.15, PROBABILITY)
    t_std_major: float = ranged(0.8, POSITIVE)
    t_std_ratio: float = ranged(2.0, POSITIVE)
    f_std_major: float = ranged(0.91, POSITIVE)
    f_std_ratio: float = ranged(6.0, POSITIVE)
    t_lambda: float = ranged(1.0, NON_NEGATIVE)
    slope: float = ranged(-15.0, Interval(hi=0))
    ramp: bool = True
    lam_a: float = ranged(0.5, NON_NEGATIVE)
    lam_b: float = ranged(0.5, NON_NEGATIVE)
    lam_c: float = ranged(0.5, NON_NEGATIVE)
    naw_form: str = "per_sample"
    js_reduction: str = "code"
    js_code_batch: int = ranged(32, AT_LEAST_1)
    detach_weight: bool = False

    def __post_init__(self) -> None:
        for key, valid in (("naw_form", NAW_FORMS), ("js_reduction", JS_REDUCTIONS)):
            if getattr(self, key) not in valid:
                raise ValueError(f"NLAConfig.{key} must be one of {valid}, got {getattr(self, key)!r}")
        check_ranges(self)


# --------------------------------------------------------------------------- the paper's equations
def naw_coordinates(logits: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The NAW point s_i = (p^GT_i, p^NN_i) of each sample and its branch (NLA, AAAI 2025, NAW section).

    logits : (B, K) z_i; label : (B,) y_i.
    Returns p_gt (B,) = softmax(z_i)[y_i]; p_nn (B,) = max_{c != y_i} softmax(z_i)[c], the "nearest negative";
    correct (B,) bool, True when p_gt >= p_nn. The code tests ``max(p) == p_GT``: the same, ties included
    (a tie counts as correct, and p_NN is then the tied value, as the code's second-largest probability).
    """
    probs = torch.softmax(logits, dim=1)
    p_gt = probs.gather(1, label[:, None]).squeeze(1)
    p_nn = probs.scatter(1, label[:, None], float("-inf")).amax(1)
    return p_gt, p_nn, p_gt >= p_nn


def covariance_ramp(epoch: int, num_epochs: int, *, slope: float = -15.0, enabled: bool = True) -> float:
    """eps(e) = 1 - exp(slope * e / E), the ramp of the true-branch correlation (code ``exponential_scheduler``).

    epoch : e, 0-based; num_epochs : E. eps = 0, 0.39, 0.71, 0.92 at e = 0, 2, 5, 10 of E = 60.
    ``enabled=False`` (code ``sch_bool``) gives 1. The paper speaks of epoch-dependent means and covariances;
    the code ramps only this term, and we follow the code (docs/methods/nla.md, A4).
    """
    return 1.0 - math.exp(slope * epoch / num_epochs) if enabled else 1.0


def naw_covariance(std_major: float, std_ratio: float, correlation: float) -> torch.Tensor:
    """Sigma = [[a, c*b], [c*b, a]] with a = sigma^2 + (sigma/r)^2, b = sigma^2 - (sigma/r)^2 (code ``train.py``).

    std_major : sigma; std_ratio : r; correlation : c in [-1, 1]. The Gaussian has standard deviation
    sigma*sqrt(2) along one diagonal and sigma*sqrt(2)/r along the other when |c| = 1; the correlation
    coefficient is c (r^2 - 1) / (r^2 + 1). The code uses c = -eps(e) for the true branch (its ``t_minor`` is
    -sigma^2 + (sigma/r)^2, times eps: major axis along p_GT + p_NN = const) and c = +1 for the false branch
    (major axis along p_GT = p_NN). Defaults: true a = 0.80, b = 0.48; false a = 0.8511, b = 0.8051.
    Returns a (2, 2) float64 tensor; it is positive definite for sigma, r > 0 and |c| <= 1.
    """
    var_major, var_minor = std_major ** 2, (std_major / std_ratio) ** 2
    a, b = var_major + var_minor, correlation * (var_major - var_minor)
    return torch.tensor([[a, b], [b, a]], dtype=torch.float64)


def gaussian_density(points: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, *,
                     pairwise: bool = False) -> torch.Tensor:
    """Normalised bivariate density N(s; mu, Sigma) = exp(-d^T Sigma^-1 d / 2) / (2 pi sqrt(det Sigma)), d = s - mu.

    The NAW Gaussian of NLA (AAAI 2025), code ``NAW.co_gau``: a normalised pdf, not scaled to a peak of 1.
    points : (B, 2) s_i; mean : (2,) mu; cov : (2, 2) Sigma. Returns (B,) N(s_i).
    ``pairwise=True`` reproduces the code before 2025-05-14: the quadratic form is taken between every pair,
    giving (B, B) values norm * exp(-d_i^T Sigma^-1 d_j / 2).
    """
    diff = points - mean.to(points)
    inv = torch.linalg.inv(cov).to(points)
    quad = diff @ inv @ diff.T if pairwise else ((diff @ inv) * diff).sum(1)
    norm = 1.0 / (2.0 * math.pi * math.sqrt(float(torch.linalg.det(cov))))
    return norm * torch.exp(-0.5 * quad)


def naw_weight(points: torch.Tensor, correct: torch.Tensor, *, mean_true: torch.Tensor, cov_true: torch.Tensor,
               mean_false: torch.Tensor, cov_false: torch.Tensor, t_lambda: float = 1.0,
               pairwise: bool = False) -> torch.Tensor:
    """NAW weight w_i = t_lambda * N(s_i; mu_t, Sigma_t(e)) if correct_i else N(s_i; mu_f, Sigma_f) (NLA, AAAI 2025).

    points : (B, 2) s_i = (p^GT_i, p^NN_i); correct : (B,) bool branch. Returns (B,) w.
    ``pairwise=True``, the legacy N x N form: the code broadcast the (B,) branch and CE over the columns of the
    (B, B) densities and averaged everything, so the weight that multiplies CE_j is the column mean
    w_j = (1/B) sum_i norm_b exp(-d_i^T Sigma_b^-1 d_j / 2), d = s - mu_b, with b the branch of sample j (and
    t_lambda on the true branch). This is exactly the code's loss, rewritten per sample; with B = 1 both forms
    agree.
    """
    t = t_lambda * gaussian_density(points, mean_true, cov_true, pairwise=pairwise)
    f = gaussian_density(points, mean_false, cov_false, pairwise=pairwise)
    w = torch.where(correct, t, f)
    return w.mean(0) if pairwise else w


def naw_cross_entropy(ce: torch.Tensor, weight: torch.Tensor, *, lam_a: float = 0.5,
                      lam_b: float = 0.5) -> torch.Tensor:
    """L_NAW-CE = lam_a * mean(CE_i) + lam_b * mean(w_i * CE_i) (NLA, AAAI 2025; the paper's (1 + w) * CE at 0.5).

    ce : (B,) per-sample cross-entropy CE_i; weight : (B,) w_i. With lam_a = lam_b = 0.5 this is
    0.5 * mean((1 + w_i) * CE_i), the "L_NAW-CE = (1 + w*) L_CE" of the paper's figure weighted by lambda = 0.5.
    """
    return lam_a * ce.mean() + lam_b * (weight * ce).mean()


def logit_mixture_js(logits: torch.Tensor, logits_other: torch.Tensor, *, reduction: str = "code",
                     code_batch: int = 32) -> torch.Tensor:
    """L_reg = 1/2 [KL(softmax(m) || softmax(z)) + KL(softmax(m) || softmax(z'))], m = (z + z') / 2 (NLA, AAAI 2025).

    The code's ``jensen_shannon_divergence``: m mixes the LOGITS z, z' (B, K) of the two views, not their
    probabilities, so this is a JS-like divergence, symmetric in (z, z') and 0 when z = z'. Gradients flow into
    softmax(m) as well, as in the code. reduction: ``sum`` over batch and classes (the code's form), ``mean`` =
    sum / B, or ``code`` = mean * ``code_batch``, the code's sum at its batch size whatever B is.
    """
    if reduction not in JS_REDUCTIONS:
        raise ValueError(f"reduction must be one of {JS_REDUCTIONS}, got {reduction!r}")
    scale = {"sum": 1.0, "mean": 1.0 / logits.shape[0], "code": code_batch / logits.shape[0]}[reduction]
    target = torch.softmax(0.5 * (logits + logits_other), dim=1)
    kl = (F.kl_div(F.log_softmax(logits, dim=1), target, reduction="sum")
          + F.kl_div(F.log_softmax(logits_other, dim=1), target, reduction="sum"))
    return 0.5 * scale * kl


def mislabel_score(density: torch.Tensor, p_gt: torch.Tensor, p_nn: torch.Tensor, correct: torch.Tensor,
                   peak_false: float) -> torch.Tensor:
    """Our ranking (not in the paper): higher = more likely mislabelled, read off NAW's own quantities.

    Samples the model agrees with (correct) score p_NN - p_GT in [-1, 0]; the others score
    2 - density / peak_false in [1, 2], so a misclassified sample far from the false branch's mean (a confident
    "noisy" one, down-weighted by NAW) ranks above an ambiguous one (up-weighted). ``1 - weight`` would rank
    an ambiguous misclassified sample (w ~ 0.40) below a clean one (w ~ 0.21), since the two branches' densities
    are on different scales.
    density : (B,) per-sample NAW density (:func:`naw_weight` with ``pairwise=False``); p_gt, p_nn : (B,);
    correct : (B,) bool; peak_false : N(mu_f; mu_f, Sigma_f), the false branch's largest density.
    """
    return torch.where(correct, p_nn - p_gt, 2.0 - density / peak_false)


# --------------------------------------------------------------------------- the method
@register_method
class NLA(Method):
    """NAW-weighted cross-entropy plus logit-mixture JS consistency with the mirrored view.

    Read-outs (latest visit of each sample): ``weight`` (the NAW weight that multiplied its CE), ``density``
    (its per-sample Gaussian; equals ``weight`` in the per-sample form), ``p_gt``, ``p_nn`` and ``score``
    (:func:`mislabel_score`).
    """

    name = "nla"
    Config = NLAConfig
    multi_process = True
    views = ("flip",)
    ablations = {
        "no_naw": {"lam_b": 0.0},          # 0.5 * CE + consistency
        "no_consistency": {"lam_c": 0.0},  # NAW-CE alone
        "no_ramp": {"ramp": False},        # true-branch correlation at full strength from epoch 0
        "pairwise_naw": {"naw_form": "pairwise"},  # the pre-May-2025 batch-coupled N x N form
    }

    def __init__(self, config: NLAConfig, *, num_classes: int, num_train: int, feature_dim: int) -> None:
        super().__init__(config, num_classes=num_classes, num_train=num_train, feature_dim=feature_dim)
        for key in ("naw_weight", "naw_density", "p_gt", "p_nn", "correct"):
            self.register_buffer(key, torch.full((num_train,), float("nan")))

    def gaussians(self) -> dict[str, torch.Tensor | float]:
        """Means, covariances (true one at the current epoch's eps) and t_lambda, as :func:`naw_weight` takes them."""
        c = self.config
        eps = covariance_ramp(self.epoch, self.num_epochs, slope=c.slope, enabled=c.ramp)
        return {"mean_true": torch.tensor([c.mu_x_t, c.mu_y_t], dtype=torch.float64),
                "cov_true": naw_covariance(c.t_std_major, c.t_std_ratio, -eps),
                "mean_false": torch.tensor([c.mu_x_f, c.mu_y_f], dtype=torch.float64),
                "cov_false": naw_covariance(c.f_std_major, c.f_std_ratio, 1.0),
                "t_lambda": c.t_lambda}

    def weights(self, logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """NAW quantities of a batch: ``weight`` (applied), ``density`` (per sample), ``p_gt``, ``p_nn``, ``correct``.

        logits : (B, K); label : (B,). Each value is (B,); ``weight`` keeps its graph (``detach_weight`` acts in
        :meth:`training_step`), ``density`` is detached.
        """
        p_gt, p_nn, correct = naw_coordinates(logits.float(), label)
        points, params = torch.stack([p_gt, p_nn], dim=1), self.gaussians()
        weight = naw_weight(points, correct, pairwise=self.config.naw_form == "pairwise", **params)
        if self.config.naw_form == "pairwise":
            with torch.no_grad():
                density = naw_weight(points, correct, **params)
        else:
            density = weight.detach()
        return {"weight": weight, "density": density, "p_gt": p_gt, "p_nn": p_nn, "correct": correct}

    def training_step(self, model, batch):
        c = self.config
        # Two forward passes, as the code (BatchNorm statistics per view).
        logits = model(batch["image"]).float()
        logits_flip = model(batch["image_flip"]).float()
        self.record(batch["index"], logits.detach(), batch["label"])
        # The loss on the whole batch, as the code computes it on its one GPU: gathered over processes under
        # torchrun (the pairwise NAW form couples the batch, and the JS term can be a sum over it).
        index, label, logits, logits_flip = map(gather, (batch["index"], batch["label"], logits, logits_flip))
        with torch.autocast(logits.device.type, enabled=False):  # the 2x2 quadratic forms stay in float32
            naw = self.weights(logits, label)
            weight = naw["weight"].detach() if c.detach_weight else naw["weight"]
            ce = F.cross_entropy(logits, label, reduction="none")
            naw_ce = naw_cross_entropy(ce, weight, lam_a=c.lam_a, lam_b=c.lam_b)
            js = logit_mixture_js(logits, logits_flip, reduction=c.js_reduction, code_batch=c.js_code_batch)
        self._record_naw(index, naw)
        return {"loss": naw_ce + c.lam_c * js, "ce": ce.mean(), "naw_ce": naw_ce, "js": js,
                "weight": naw["weight"].mean()}

    @torch.no_grad()
    def _record_naw(self, index: torch.Tensor, naw: dict[str, torch.Tensor]) -> None:
        self.naw_weight[index] = naw["weight"].detach().float()
        self.naw_density[index] = naw["density"].float()
        for key in ("p_gt", "p_nn", "correct"):
            getattr(self, key)[index] = naw[key].detach().float()

    def readout(self) -> Readout:
        params = self.gaussians()
        peak = float(gaussian_density(params["mean_false"][None], params["mean_false"], params["cov_false"]))
        score = mislabel_score(self.naw_density, self.p_gt, self.p_nn, self.correct == 1, peak)  # NaN if unvisited
        extra = {"weight": self.naw_weight, "density": self.naw_density, "p_gt": self.p_gt, "p_nn": self.p_nn}
        return dataclasses.replace(super().readout(), score=score.cpu().numpy(),
                                   extra={k: v.cpu().numpy() for k, v in extra.items()})
