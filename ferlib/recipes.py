"""Training recipes: one shared budget for fair comparisons, or each method's official recipe.

``shared`` (the default for comparisons): every method trains with the same :class:`ferlib.engine.TrainConfig`
(the profile's or the command line's), so differences come from the methods alone.

``paper``: the method's official training recipe (optimiser, learning rate, schedule, batch size, epochs, weight
decay, augmentation), read from its official code and cited below by file and line, at our input size. What
no recipe can carry here is said in ``Recipe.unmatched``: the official codes start from a face- or
ImageNet-pretrained backbone at 224 px (an MS-Celeb ResNet-18; EAC an ImageNet ResNet-50), while ferlib starts
from scratch or from its own self-supervised checkpoint unless weights are given. A method without an
official recipe (``ce``, the oracle) keeps the shared settings under ``paper``; its ``result.json`` says so
in ``recipe_source``.

Usage::

    train = resolve_recipe("nla", "paper", TrainConfig(image_size=48))   # Adam 1e-4, x0.9 per epoch, batch 32 ...
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

__all__ = ["Recipe", "RECIPES", "PAPER_RECIPES", "paper_recipe", "resolve_recipe", "recipe_method_options",
           "recipe_source"]

RECIPES = ("shared", "paper")


@dataclass(frozen=True)
class Recipe:
    """A method's official training recipe.

    train : :class:`~ferlib.engine.TrainConfig` fields it sets (``augment``: :class:`~ferlib.augment.AugmentConfig`
        fields); fields it does not name (image size, device, seed, evaluation) keep the run's values.
    method : method-config fields the recipe sets (e.g. LA-Net's per-GPU contrastive positives at its global
        batch); options given explicitly to the run override them.
    source : the official file(s) and line(s) the values come from.
    unmatched : what of the official recipe is not reproduced, and why.
    """

    train: dict
    source: str
    method: dict = field(default_factory=dict)
    unmatched: str = "MS-Celeb-pretrained ResNet-18 at 224 px in the official code; here the run's backbone " \
                     "and input size"


def _nla(image_size: int) -> Recipe:
    return Recipe(
        train={"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-4, "scheduler": "exponential", "gamma": 0.9,
               "batch_size": 32, "epochs": 60,
               # Gaussian pixel noise sigma^2 = 30 on uint8 with p 0.5, flip 0.5, RandomErasing p 0.5 (0.02-0.3);
               # no crop, no jitter.
               "augment": {"flip": 0.5, "crop": "none", "erase": 0.5, "erase_scale": (0.02, 0.3),
                           "erase_fill": "zero", "brightness": 0.0, "contrast": 0.0,
                           "noise_std": math.sqrt(30) / 255, "noise_p": 0.5}},
        source="jungyu0413/NLA@b86f31f main_rafdb.py:28-32 (batch 32, 60 epochs), :115-116 (Adam 1e-4, "
               "wd 1e-4, ExponentialLR 0.9); src/dataset.py:71-80 and src/utils.py:119-123 (augmentation)")


def _lanet(image_size: int) -> Recipe:
    return Recipe(
        train={"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "scheduler": "linear",
               "batch_size": 128, "epochs": 80,
               # flip 0.5, RandomResizedCrop (0.75, 1) ratio (3/4, 4/3), ColorJitter 0.4/0.4/0.4 (ferlib has no
               # saturation jitter: a no-op on grey faces such as FERPlus, missing on RGB), RandomErasing p 0.2.
               "augment": {"flip": 0.5, "crop": "resized", "scale": (0.75, 1.0), "ratio": (3 / 4, 4 / 3),
                           "brightness": 0.4, "contrast": 0.4, "erase": 0.2, "erase_scale": (0.02, 0.2),
                           "erase_fill": "zero", "noise_std": 0.0}},
        # The global batch of 128 on 2 GPUs: the LDE graph over all 128, contrastive positives per GPU (64).
        method={"positive_batch": 64},
        source="hw-tony/LA-Net@74bb121 train.py:41-45, 112-115 (Adam 1e-3, weight_decay=0, LinearLR to 0 per "
               "iteration, 2 x 64 batch, 80 epochs); dataloader.py:42-49 (augmentation)")


def _ldlva(image_size: int) -> Recipe:
    pad = max(1, round(8 * image_size / 224))
    return Recipe(
        train={"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "scheduler": "multistep", "gamma": 0.1,
               "milestones": (10, 20, 40), "batch_size": 32, "epochs": 60,
               # flip, pad 8 + random crop at 224 px (scaled to the input size), RandomErasing p 0.5
               # (0.02, 0.3) with random fill; no jitter.
               "augment": {"flip": 0.5, "crop": "pad", "pad": pad,
                           "erase": 0.5, "erase_scale": (0.02, 0.3), "erase_fill": "random",
                           "brightness": 0.0, "contrast": 0.0, "noise_std": 0.0}},
        method={"neighbour_pad": pad},  # the neighbour images get the same pad as the central ones
        source="minhnhatvt/label-distribution-learning-fer-tf@a741b36 cfg_files/config_resnet18_raf.py (Adam "
               "1e-3, x0.1 at epochs 10/20/40, batch 32, 60 epochs, pad 8); src/train.py (no weight decay: "
               "model.losses is never added); src/data_utils.py:125-133 (augmentation)")


# SCN's and RUL's augmentation (the same scheme): with p 0.5 either a flip or Gaussian pixel noise sigma^2 = 30 on
# uint8, then RandomErasing p 0.5 (0.02-0.25) on the normalised tensor; no crop, no jitter. ferlib draws flip and
# noise independently at 0.25 each (the code never does both; here 1/16 of the images get both).
_SCN_RUL_AUGMENT = {"flip": 0.25, "crop": "none", "noise_std": math.sqrt(30) / 255, "noise_p": 0.25, "erase": 0.5,
                    "erase_scale": (0.02, 0.25), "erase_fill": "zero", "brightness": 0.0, "contrast": 0.0}


def _scn(image_size: int) -> Recipe:
    return Recipe(
        train={"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4, "scheduler": "exponential", "gamma": 0.9,
               "batch_size": 64, "epochs": 70, "augment": dict(_SCN_RUL_AUGMENT)},
        source="kaiwang960112/Self-Cure-Network@9f4c3ad src/train.py:26, 31 (batch 64, 70 epochs), :193-194 (Adam at "
               "its default lr 1e-3: --lr only reaches SGD, :28, 196; weight decay 1e-4), :202, 260 (ExponentialLR "
               "0.9 per epoch); :60, 71-74, 166 and src/image_utils.py:4-11 (augmentation)",
        unmatched="MS-Celeb-pretrained ResNet-18 (ijba_res18_naive) at 224 px in the official code, here the run's "
                  "backbone and input size; flip and pixel noise exclusive in the code, independent here")


def _rul(image_size: int) -> Recipe:
    return Recipe(
        train={"optimizer": "adam", "lr": 2e-4, "weight_decay": 1e-4, "scheduler": "exponential", "gamma": 0.9,
               "batch_size": 64, "epochs": 60, "augment": dict(_SCN_RUL_AUGMENT)},
        source="zyh-uaiaaaa/Relative-Uncertainty-Learning@63b73f2 src/main.py:28-29 (batch 64, 60 epochs), :77-80, "
               "114 (Adam 2e-4, weight decay 1e-4, ExponentialLR 0.9 per epoch); src/dataset.py:27, 45-49, "
               "src/utils.py:7-15 and src/main.py:40-47 (augmentation)",
        unmatched="the classifier's 10x learning rate (2e-3, src/main.py:77-79): TrainConfig has one lr, so the "
                  "classifier trains at 2e-4; MS-Celeb-pretrained ResNet-18 (resnet18_msceleb.pth) at 224 px in "
                  "the official code, here the run's backbone and input size; flip and pixel noise exclusive in the "
                  "code, independent here")


def _eac(image_size: int) -> Recipe:
    return Recipe(
        # lr 2e-4: the README's value for a ResNet-18 (ferlib's default backbone); src/main.py:168 has 1e-4 for
        # its ResNet-50. Augmentation: resize only, Gaussian pixel noise sigma^2 = 30 on uint8 with p 0.5 on the
        # original view; no flip, crop or jitter. RandomErasing p 0.5 (0.02-0.25) is EAC's own (EACConfig.erase,
        # erase_scale, one draw per view), so the engine erases nothing.
        train={"optimizer": "adam", "lr": 2e-4, "weight_decay": 1e-4, "scheduler": "exponential", "gamma": 0.9,
               "batch_size": 32, "epochs": 60,
               "augment": {"flip": 0.0, "crop": "none", "erase": 0.0, "brightness": 0.0, "contrast": 0.0,
                           "noise_std": math.sqrt(30) / 255, "noise_p": 0.5}},
        source="zyh-uaiaaaa/Erasing-Attention-Consistency@61efdfd src/main.py:31, 36 (batch 32, 60 epochs), "
               ":168-169, 83 (Adam, weight decay 1e-4, ExponentialLR 0.9 per epoch), README.md:62 (lr 2e-4 for "
               "ResNet-18; 1e-4 for ResNet-50 at src/main.py:168); src/main.py:128-134, src/dataset.py:49-62 and "
               "src/utils.py:7-11 (augmentation)",
        unmatched="ImageNet-normalised ResNet-50 (resnet50_ft_weight.pkl) at 224 px RGB, lr 1e-4, in the official "
                  "code, here the run's backbone and input size at the README's ResNet-18 lr; the code's flipped "
                  "view (noisy labels) gets no pixel noise, here it mirrors the original's")


def _dmue(image_size: int) -> Recipe:
    return Recipe(
        # Backbone lr (lr1): 1e-4 for epochs 0-5, 5e-5 for 6-11, 1e-5 from 12 (0-based). One multistep gamma
        # cannot give x0.5 then x0.2: sqrt(0.1) keeps both ends (1e-4, then 3.2e-5, then 1e-5 from epoch 12).
        # Augmentation: Gaussian pixel noise sigma^2 = 30 on uint8 with p 0.25, RandomCrop 224 of the 256-px face
        # (a window of (224/256)^2 of the area, square), flip 0.5, RandomErasing p 0.5 (0.02-0.25, value 0 on the
        # normalised image); no jitter.
        train={"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-4, "scheduler": "multistep",
               "milestones": (6, 12), "gamma": math.sqrt(0.1), "batch_size": 72, "epochs": 36,
               "augment": {"flip": 0.5, "crop": "resized", "scale": ((224 / 256) ** 2, (224 / 256) ** 2),
                           "ratio": (1.0, 1.0), "erase": 0.5, "erase_scale": (0.02, 0.25), "erase_fill": "zero",
                           "brightness": 0.0, "contrast": 0.0, "noise_std": math.sqrt(30) / 255, "noise_p": 0.25}},
        source="JDAI-CV/FaceX-Zoo@16b793a addition_module/DMUE/config.py:31, 34-35, 69-70 (batch 72; lr1 backbone, "
               "lr2 classifiers; 36 epochs; weight decay 1e-4), train.py:55-57, 83 (Adam, per-epoch lr), "
               "datasets/make_dataloader.py:12-21, 36-41 and datasets/bases.py:40-42 (augmentation, balanced sampler)",
        unmatched="the classifiers' own lr (lr2: 1e-3 for epochs 0-3, 5e-4 to 7, 1e-4 to 13, then 1e-5) and both "
                  "lrs' bump to 5e-5 at epochs 22-24 (config.py:34-35): TrainConfig has one lr and one multistep "
                  "gamma, so every parameter follows the backbone's lr, 3.2e-5 instead of 5e-5 at epochs 6-11 and no "
                  "bump; the target branch's dropout 0.5 (BackboneConfig.drop_rate, not a TrainConfig field); the "
                  "test-time CenterCrop 224 of 256 (ferlib evaluates the whole face); ramp_a is the method's option "
                  "(default 6, the code's AffectNet value; its comment gives 10/12/14 for FERPlus); MS-Celeb ResNet-18 "
                  "pretrained by the authors with MV-softmax at 224 px RGB, here the run's backbone and input size"
                  )


#: method name -> function of the input size giving its official recipe.
PAPER_RECIPES = {"nla": _nla, "lanet": _lanet, "ldlva": _ldlva, "scn": _scn, "rul": _rul, "eac": _eac, "dmue": _dmue}


def paper_recipe(method: str, image_size: int = 48) -> Recipe | None:
    """The official recipe of ``method`` at ``image_size`` px, or None when it has none (``ce``, oracles)."""
    make = PAPER_RECIPES.get(method)
    return make(image_size) if make else None


def resolve_recipe(method: str, recipe: str, train):
    """The :class:`~ferlib.engine.TrainConfig` a run uses: ``train`` itself (``shared``, or a method without a
    paper recipe) or ``train`` with the paper recipe's fields replaced (``paper``)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    found = paper_recipe(method, train.image_size) if recipe == "paper" else None
    if found is None:
        return train
    values = dict(found.train)
    augment = {**dataclasses.asdict(train.augment), **values.pop("augment", {})}
    return dataclasses.replace(train, **values, augment=type(train.augment)(**augment))


def recipe_method_options(method: str, recipe: str, options: dict, image_size: int) -> dict:
    """Method options of a run at ``image_size`` px: the paper recipe's (``paper``) under the explicitly given
    ``options``."""
    found = paper_recipe(method, image_size) if recipe == "paper" else None
    return {**(found.method if found else {}), **options}


def recipe_source(method: str, recipe: str) -> str:
    """Where a run's training settings come from, for ``result.json``."""
    found = paper_recipe(method) if recipe == "paper" else None
    if recipe == "paper" and found is None:
        return f"no official recipe for {method!r}: the shared settings"
    if found is None:
        return "shared: the run's own settings, the same for every method"
    return f"{found.source}; not reproduced: {found.unmatched}"
