"""Training recipes: named sets of defaults for the options a user leaves unset (`--recipe NAME`).

An option that the command line or a --config file gives is never touched; every option left at None
takes the recipe's value, and `config.recipe_values` records what the recipe set (run_config.json, the
start-up line and the model card show it). Two values depend on the data and are filled once it is loaded
(`resolve_for_data`): the batch size (from the training set's size and the process count) and the LR
warm-up (from the number of optimizer updates).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from hf_finetune.errors import UserError

logger = logging.getLogger(__name__)

# Decoupled AdamW decay for fine-tuning image models (timm's and the HF examples' AdamW recipes); the SGD
# value of a recipe would be no decay at all for AdamW.
ADAMW_DEFAULTS = {"lr": 1e-4, "weight_decay": 0.05}
# Lower layers move less once the backbone trains (timm's and BEiT's fine-tuning practice); measured in ACCURACY.md.
LAYER_DECAY = 0.75


@dataclass(frozen=True)
class Recipe:
    description: str
    values: dict  # option -> value (or function of the config filled so far) not depending on optimizer or data
    sgd: dict  # lr, momentum, weight_decay when the optimizer is SGD
    batch_size: str  # "chapter" (128) or "small-data" (see small_data_batch_size)
    warmup_fraction: float  # of all optimizer updates


RECIPES = {
    "lp-ft": Recipe(
        "head warm-up then fine-tune (LP-FT, fastai's fine_tune): 5 epochs, the first 2 (at most half of "
        "--epochs) head-only, then every layer; SGD momentum 0.9, lr 2e-4, head x10, layer-wise LR decay "
        f"{LAYER_DECAY:g}, cosine LR with 10% warm-up, label smoothing 0.1, BatchNorm statistics kept (small "
        "batches: at most 1/8 of the folder)",
        {"optimizer": "sgd", "head_lr_mult": 10.0, "lr_scheduler": "cosine", "epochs": 5,
         "freeze_epochs": lambda config: min(2, config.epochs // 2), "label_smoothing": 0.1, "freeze_bn": True,
         "layer_decay": LAYER_DECAY},
        # Momentum 0.9 at batch 16 moves ~10x further per sample than the chapter's plain SGD at 128: a ~30x
        # lower LR than its 6.4e-3 (measured on hotdog-mini: 1e-3 and 2e-3 lose accuracy once the backbone trains).
        {"lr": 2e-4, "momentum": 0.9, "weight_decay": 1e-4},
        batch_size="small-data", warmup_fraction=0.1),
    "d2l": Recipe(
        "the d2l Fine-Tuning chapter: plain SGD, constant LR, head x10, batch 128, 5 epochs",
        {"optimizer": "sgd", "head_lr_mult": 10.0, "lr_scheduler": "constant", "epochs": 5, "freeze_epochs": 0,
         "label_smoothing": 0.0, "freeze_bn": False},
        # The chapter's 5e-5 and 1e-3 are for its summed loss at batch 128; here the loss is the mean.
        {"lr": 5e-5 * 128, "momentum": 0.0, "weight_decay": 1e-3 / 128},
        batch_size="chapter", warmup_fraction=0.0),
}
DEFAULT_RECIPE = "lp-ft"


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"--recipe {name}: unknown recipe; choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def apply_recipe(config) -> dict:
    """Fill every unset (None) option the recipe knows; return {option: value} of what it filled."""
    recipe = get_recipe(config.recipe)
    filled = _fill(config, recipe.values)
    optimizer_values = recipe.sgd if config.optimizer == "sgd" else ADAMW_DEFAULTS
    filled |= _fill(config, optimizer_values)
    if config.momentum is None:  # AdamW has none; the field stays a number for the card and run_config
        filled |= _fill(config, {"momentum": 0.0})
    return filled


def resolve_warmup(config, total_updates: int) -> dict:
    """Fill the warm-up steps, a fraction of all optimizer updates (optim.create_scheduler calls it)."""
    return _fill(config, {"warmup_steps": math.ceil(get_recipe(config.recipe).warmup_fraction * total_updates)})


def resolve_for_data(config, train_size: int, num_processes: int) -> dict:
    """Fill the batch size, once the training set's size is known (before the loaders exist)."""
    recipe = get_recipe(config.recipe)
    shares = num_processes * config.gradient_accumulation_steps
    size = 128 if recipe.batch_size == "chapter" else small_data_batch_size(train_size)
    return _fill(config, {"batch_size": math.ceil(size / shares) * shares})


def resolve_for_model(config, model) -> None:
    """The recipe's layer-wise LR decay needs timm's layer groups: a model without a group_matcher trains without
    it (a --layer-decay given by hand is refused there instead, by freezing.layer_depths)."""
    if "layer_decay" in config.recipe_values and not hasattr(model, "group_matcher"):
        logger.info("%s has no timm group_matcher: no layer-wise LR decay (the recipe's %g)", type(model).__name__,
                    config.layer_decay)
        config.layer_decay = None
        del config.recipe_values["layer_decay"]


def small_data_batch_size(train_size: int) -> int:
    """The largest power of two at most 1/8 of the training set, within [16, 128]: at least 8 updates an
    epoch on a small folder (the chapter's 128 gives 2 on 250 photos), the chapter's 128 on a large one."""
    return min(128, max(16, 2 ** math.floor(math.log2(max(train_size // 8, 1)))))


def _fill(config, values: dict) -> dict:
    filled = {}
    for name, value in values.items():
        if getattr(config, name) is None:
            value = value(config) if callable(value) else value  # e.g. a share of the epochs
            setattr(config, name, value)
            filled[name] = value
    config.recipe_values.update(filled)
    return filled


def describe_recipe(config) -> str:
    """The start-up line: the recipe and every value it set."""
    values = ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                       for name, value in config.recipe_values.items())
    return f"recipe {config.recipe}: {values or 'every option it sets was given'}"


def recipe_card_rows(run: dict) -> list[tuple[str, str]]:
    """The model card's hyper-parameter rows for the recipe (and what it set) and every regularizer, those left
    off included: a reader sees what was not used."""
    config, recipe = run["config"], run.get("recipe") or {}
    values = ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                       for name, value in (recipe.get("values") or {}).items())
    weights = run.get("class_weights")
    described = f"{recipe['name']} (set {values or 'nothing: every option it sets was given'})" if recipe else None
    rows = [("recipe", described)] if recipe else []
    if "label_smoothing" not in config:  # a run from before the regularizers existed
        return rows
    mixing = [f"{name} alpha {config[name]:g}" for name in ("mixup", "cutmix") if config.get(name)]
    rows += [("label smoothing", f"{config['label_smoothing']:g}"),
             ("mixup / cutmix", ", ".join(mixing) + " (timm Mixup; train accuracy against the unmixed labels)"
              if mixing else "off"),
             ("auto-augment", {"rand": "RandAugment (2 ops, magnitude 9)", "trivial": "TrivialAugmentWide"}.get(
                 config.get("auto_augment"), "off")),
             ("drop path", f"{config.get('drop_path', 0):g}"),
             ("class weights", ", ".join(f"{name} {value:.3f}" for name, value in weights.items()) + " (balanced)"
              if weights else "none")]
    return rows
