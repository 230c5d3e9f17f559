"""Training recipes: named sets of defaults for the options a user leaves unset (`--recipe NAME`).

An option that the command line or a --config file gives is never touched; every option left at None
takes the recipe's value. `fill_from_recipe` does it in one go, once the data and the model are known (the
batch size follows the training set's size and the process count, the LR warm-up the number of optimizer
updates, the layer-wise decay the model's layer groups); `config.resolve_config`, its only caller, records
what it set (run_config.json, the start-up line and the model card show it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hf_finetune.errors import UserError

# Decoupled AdamW decay for fine-tuning image models (timm's and the HF examples' AdamW recipes); the SGD
# value of a recipe would be no decay at all for AdamW.
ADAMW_DEFAULTS = {"lr": 1e-4, "weight_decay": 0.05}
# The more photos there are to fit them, the further the pretrained layers may move: lp-ft's values that depend on
# the data size are those measured on SMALL_DATA training photos (food101-mini) up to it, and move with each doubling
# beyond, for at most MAX_DOUBLINGS (8,000 photos; food101-30's 9,000 are past it). Measured in ACCURACY.md.
SMALL_DATA, MAX_DOUBLINGS = 1000, 3
# Lower layers move less once the backbone trains (timm's and BEiT's fine-tuning practice): 0.75 up to SMALL_DATA
# (there it beat 0.85 and no decay), 0.05 more for each doubling, so 0.9 from 8,000 (on 9,000 it beat 0.75).
LAYER_DECAY, LAYER_DECAY_PER_DOUBLING = 0.75, 0.05
# LP-FT's head warm-up lasts the fewest whole epochs that give the new head this many updates (at most 2 epochs
# and half of --epochs). The small folders it was measured on (10-16 updates an epoch) keep their 2 head-only
# epochs; 9,000 photos (70 an epoch at batch 128) get 1, where the second cost accuracy (ACCURACY.md).
HEAD_ONLY_UPDATES = 50


@dataclass(frozen=True)
class Recipe:
    description: str
    # option -> value, or a function of (the config filled so far, training photos, updates per epoch) for a
    # value that depends on the data; none depends on the optimizer.
    values: dict
    sgd: dict  # lr, momentum, weight_decay when the optimizer is SGD
    batch_size: str  # "chapter" (128) or "small-data" (see small_data_batch_size)
    warmup_fraction: float  # of all optimizer updates
    # The global batch its LR was measured at, and how another batch scales an LR left unset: "linear" (Goyal et
    # al. 2017; what the chapter's summed loss does by itself) or "sqrt" (Krizhevsky 2014; timm train.py's
    # --lr-base-scale for adaptive optimizers). Unscaled, batch 128 moves each sample 8x less than batch 16.
    reference_batch: int
    lr_scaling: str
    # An SGD LR left unset is also multiplied by this for each doubling of the training photos beyond SMALL_DATA
    # (see data_doublings); AdamW's was not measured against the data size and is not.
    lr_per_doubling: float = 1.0


RECIPES = {
    "lp-ft": Recipe(
        "head warm-up then fine-tune (LP-FT, fastai's fine_tune): 5 epochs, the first 2 (at most half of "
        f"--epochs, and 1 when it gives the head {HEAD_ONLY_UPDATES} updates) head-only, then every layer; SGD "
        "momentum 0.9, lr 2e-4 x sqrt(batch / 16), head x10, "
        f"layer-wise LR decay {LAYER_DECAY:g}; beyond {SMALL_DATA:,} training photos, each doubling (at most "
        f"{MAX_DOUBLINGS}) adds {LAYER_DECAY_PER_DOUBLING:g} to the layer decay and multiplies the LR by 2^(1/3); "
        "cosine LR with 10% warm-up, label smoothing 0.1, "
        "BatchNorm statistics kept (small batches: at most 1/8 of the folder); with --no-pretrained no head-only "
        "epochs, no layer decay and BatchNorm statistics trained",
        {"optimizer": "sgd", "head_lr_mult": 10.0, "lr_scheduler": "cosine", "epochs": 5,
         "freeze_epochs": lambda config, photos, updates: head_only_epochs(config.epochs, updates),
         "label_smoothing": 0.1, "freeze_bn": True,
         "layer_decay": lambda config, photos, updates: layer_decay_for(photos)},
        # Momentum 0.9 at batch 16 moves ~10x further per sample than the chapter's plain SGD at 128: a ~30x
        # lower LR than its 6.4e-3 (measured on hotdog-mini: 1e-3 and 2e-3 lose accuracy once the backbone trains).
        {"lr": 2e-4, "momentum": 0.9, "weight_decay": 1e-4},
        # sqrt, not linear: measured in ACCURACY.md (linear won 1.7 points on food101-30 at batch 128 and lost
        # 2.7 on food101-mini at batch 64; sqrt beats d2l on both by 4-10 points).
        # x2 by 8,000 photos: on food101-30 (9,000) the sweep's best LR was ~2x the batch rule's (ACCURACY.md).
        batch_size="small-data", warmup_fraction=0.1, reference_batch=16, lr_scaling="sqrt",
        lr_per_doubling=2 ** (1 / 3)),
    "d2l": Recipe(
        "the d2l Fine-Tuning chapter: plain SGD, constant LR, head x10, batch 128, 5 epochs",
        {"optimizer": "sgd", "head_lr_mult": 10.0, "lr_scheduler": "constant", "epochs": 5, "freeze_epochs": 0,
         "label_smoothing": 0.0, "freeze_bn": False},
        # The chapter's 5e-5 and 1e-3 are for its summed loss at batch 128; here the loss is the mean.
        {"lr": 5e-5 * 128, "momentum": 0.0, "weight_decay": 1e-3 / 128},
        batch_size="chapter", warmup_fraction=0.0, reference_batch=128, lr_scaling="linear"),
}
DEFAULT_RECIPE = "lp-ft"
# What a random backbone (--no-pretrained) gets instead of the recipe's values, for options left unset: the
# head warm-up, frozen BatchNorm statistics and layer-wise LR decay all protect pretrained features; a random
# backbone has none, and the chapter's scratch baseline trains every layer and its statistics from the start.
SCRATCH_VALUES = {"freeze_epochs": 0, "freeze_bn": False, "layer_decay": 1.0}  # layer decay 1: off


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"--recipe {name}: unknown recipe; choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def backbone_lr(config) -> float:
    """The backbone LR a run of `config` trains at: --lr, else the recipe's for its optimizer at the recipe's
    reference batch (the one recipe value that compare.py's scratch variant needs before any data is loaded)."""
    recipe = get_recipe(config.recipe)
    optimizer = config.optimizer or recipe.values["optimizer"]
    return config.lr or (recipe.sgd if optimizer == "sgd" else ADAMW_DEFAULTS)["lr"]


def scaled_lr(lr: float, batch_size: int, train_size: int, recipe: Recipe, optimizer: str) -> tuple[float, str]:
    """The recipe's `lr` (measured at its reference batch) for this batch and data size, and why it differs from
    `lr` ("" when it does not). The batch scales it by the recipe's rule for SGD, by the square root for AdamW (as
    timm's train.py scales adaptive optimizers); the data size by the recipe's factor per doubling, SGD only."""
    linear = optimizer == "sgd" and recipe.lr_scaling == "linear"
    ratio = batch_size / recipe.reference_batch
    scaled, why = lr * (ratio if linear else math.sqrt(ratio)), []
    if batch_size != recipe.reference_batch:
        why.append(f"scaled {'linearly' if linear else 'by the square root'} with the batch ({batch_size} vs the "
                   f"{recipe.reference_batch} it was measured at)")
    doublings = data_doublings(train_size)
    if optimizer == "sgd" and recipe.lr_per_doubling != 1 and doublings:
        scaled *= recipe.lr_per_doubling ** doublings
        why.append(f"x{recipe.lr_per_doubling ** doublings:.2f} with the data size ({doublings:.1f} doublings "
                   f"beyond {SMALL_DATA:,} training photos)")
    return scaled, (f"{scaled:g}, not the recipe's {lr:g}: " + " and ".join(why) if why else "")


def fill_from_recipe(config, train_size: int, num_processes: int, pretrained: bool,
                     layer_groups: bool) -> tuple[dict, dict]:
    """Fill every unset (None) option of `config` (a copy `config.resolve_config` owns) that the recipe knows,
    for this data (`train_size` images), process count and model (`pretrained`: whether the backbone starts
    from trained weights; `layer_groups`: whether timm's group_matcher splits it into layers). Returns
    ({option: value} the recipe set, {option: why} for each recipe value this model does not take)."""
    recipe = get_recipe(config.recipe)
    replaced = {} if pretrained else SCRATCH_VALUES
    # Values that are functions of the data wait for the batch size, below.
    filled = _fill(config, {name: value for name, value in recipe.values.items()
                            if name not in replaced and not callable(value)})
    adjusted, lr_unset = {}, config.lr is None
    filled |= _fill(config, recipe.sgd if config.optimizer == "sgd" else ADAMW_DEFAULTS)
    if config.momentum is None:  # AdamW has none; the field stays a number for the card and run_config
        filled |= _fill(config, {"momentum": 0.0})
    shares = num_processes * config.gradient_accumulation_steps
    size = 128 if recipe.batch_size == "chapter" else small_data_batch_size(train_size)
    filled |= _fill(config, {"batch_size": math.ceil(size / shares) * shares})
    if lr_unset:
        config.lr, adjusted_lr = scaled_lr(config.lr, config.batch_size, train_size, recipe, config.optimizer)
        if adjusted_lr:
            filled["lr"], adjusted["lr"] = config.lr, adjusted_lr
    # Updates per epoch: Accelerate pads each process to the same number of batches, and the last accumulation
    # of an epoch steps too, so ceil(ceil(ceil(N / per device) / processes) / accumulation) = ceil(N / batch).
    updates_per_epoch = math.ceil(train_size / config.batch_size)
    of_the_data = {name: value(config, train_size, updates_per_epoch) for name, value in recipe.values.items()
                   if callable(value)}
    filled |= _fill(config, {name: value for name, value in of_the_data.items() if name not in replaced})
    if "layer_decay" in filled and not layer_groups:  # a --layer-decay given by hand is refused by layer_depths
        adjusted["layer_decay"] = f"off, not the recipe's {config.layer_decay:g}: the model has no timm group_matcher"
        config.layer_decay = None
        del filled["layer_decay"]
    scratch = _adjust(config, recipe.values | of_the_data, replaced, "the backbone is random (--no-pretrained)")
    adjusted = scratch | adjusted
    filled |= _fill(config, {"warmup_steps": math.ceil(recipe.warmup_fraction * updates_per_epoch * config.epochs)})
    return filled, adjusted


def _adjust(config, recipe_values: dict, replacements: dict, reason: str) -> dict:
    """Set each unset option of `replacements` that the recipe sets, instead of the recipe's value; returns
    {option: why} of those that differ from it."""
    adjusted = {}
    for name, value in replacements.items():
        if name in recipe_values and getattr(config, name) is None:
            recipe_value = recipe_values[name]
            setattr(config, name, value)
            if recipe_value != value:
                adjusted[name] = f"{_format(value)}, not the recipe's {_format(recipe_value)}: {reason}"
    return adjusted


def head_only_epochs(epochs: int, updates_per_epoch: int) -> int:
    """LP-FT's head-only epochs: the fewest that give the head HEAD_ONLY_UPDATES updates, at most 2 and at most
    half of `epochs` (a sweep's centre knows no data yet: 2)."""
    needed = math.ceil(HEAD_ONLY_UPDATES / updates_per_epoch) if updates_per_epoch else 2
    return min(2, epochs // 2, needed)


def data_doublings(train_size: int) -> float:
    """How many times `train_size` training photos double SMALL_DATA, between 0 and MAX_DOUBLINGS."""
    return min(MAX_DOUBLINGS, math.log2(train_size / SMALL_DATA)) if train_size > SMALL_DATA else 0.0


def layer_decay_for(train_size: int) -> float:
    """LP-FT's layer-wise LR decay for `train_size` training photos."""
    return round(LAYER_DECAY + LAYER_DECAY_PER_DOUBLING * data_doublings(train_size), 2)


def small_data_batch_size(train_size: int) -> int:
    """The largest power of two at most 1/8 of the training set, within [16, 128]: at least 8 updates an
    epoch on a small folder (the chapter's 128 gives 2 on 250 photos), the chapter's 128 on a large one."""
    return min(128, max(16, 2 ** math.floor(math.log2(max(train_size // 8, 1)))))


def _fill(config, values: dict) -> dict:
    filled = {}
    for name, value in values.items():
        if getattr(config, name) is None:
            setattr(config, name, value)
            filled[name] = value
    return filled


def _format(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_recipe(name: str, values: dict, adjusted: dict) -> str:
    """The start-up line: the recipe, every value it set, and what it changed for this model."""
    text = ", ".join(f"{option} {_format(value)}" for option, value in values.items())
    changes = "".join(f"; {option} {why}" for option, why in adjusted.items())
    return f"recipe {name}: {text or 'every option it sets was given'}{changes}"


def recipe_card_rows(run: dict) -> list[tuple[str, str]]:
    """The model card's hyper-parameter rows for the recipe (and what it set) and every regularizer, those left
    off included: a reader sees what was not used."""
    config, recipe = run["config"], run.get("recipe") or {}
    values = ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                       for name, value in (recipe.get("values") or {}).items())
    weights = run.get("class_weights")
    changed = "".join(f"; {name} {why}" for name, why in (recipe.get("adjusted") or {}).items())
    described = (f"{recipe['name']} (set {values or 'nothing: every option it sets was given'}{changed})"
                 if recipe else None)
    rows = [("recipe", described)] if recipe else []
    if "label_smoothing" not in config:  # a run from before the regularizers existed
        return rows
    mixing = [f"{name} alpha {config[name]:g}" for name in ("mixup", "cutmix") if config.get(name)]
    losses = {"ce": "cross-entropy", "bce": "binary cross-entropy per label",
              "asl": "asymmetric loss (timm AsymmetricLossMultiLabel: gamma_neg 4, gamma_pos 1, clip 0.05)"}
    rows += [("loss", losses[config["loss"]])] if config.get("loss") else []
    rows += [("label smoothing", f"{config['label_smoothing']:g}"),
             ("mixup / cutmix", ", ".join(mixing) + " (timm Mixup; train accuracy against the unmixed labels)"
              if mixing else "off"),
             ("auto-augment", {"rand": "RandAugment (2 ops, magnitude 9)", "trivial": "TrivialAugmentWide"}.get(
                 config.get("auto_augment"), "off")),
             ("drop path", f"{config.get('drop_path', 0):g}"),
             ("class weights", ", ".join(f"{name} {value:.3f}" for name, value in weights.items()) + " (balanced)"
              if weights else "none")]
    return rows
