"""The search space: finetune options -> Optuna distributions, written as a small YAML mapping.

    lr: {low: 1.0e-4, high: 1.0e-2, log: true}     # a float range (log scale)
    freeze_epochs: {low: 0, high: 2}               # integer bounds: an integer range
    batch_size: {choices: [32, 64]}                # a choice
    mixup: null                                    # not searched: the finetune flags' (or recipe's) value

A --space file changes only the options it names; the others keep the default space below. Values are passed
to the run as flags, so every trial is the command line `--config` or the flags would give.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from hf_finetune.config import FinetuneConfig
from hf_finetune.errors import UserError
from hf_finetune.recipes import fill_from_recipe

# Options a trial must not choose: where its run goes and whether it is pushed belong to the sweep.
NOT_SEARCHABLE = ("output_dir", "resume", "push_to_hub", "hub_public", "recipe_values")


def recipe_centre(options: FinetuneConfig) -> FinetuneConfig:
    """The flags as given with the recipe's values filled in, before any data is known: the centre of the search.
    Only data-independent values are read from it (LR, weight decay, epochs); the batch size and warm-up that
    fill_from_recipe derives from the data stay each trial's run to resolve."""
    centre = dataclasses.replace(options)
    fill_from_recipe(centre, train_size=0, num_processes=1, pretrained=options.pretrained, layer_groups=True)
    return centre


def default_space(base: FinetuneConfig) -> dict[str, dict]:
    """The options that matter most when fine-tuning (issue 20), centred on the values `base` (the finetune flags,
    filled by the recipe) would train with: the LR from 1/10 to 30x (the recipe's LR was measured on small data at
    batch 16; larger data and batches want more), weight decay from 1/10 to 10x, layer decay, head-only epochs
    (at most 2, and fewer than --epochs), label smoothing, mixup/cutmix on or off, and the batch size."""
    space = {
        "lr": {"low": base.lr / 10, "high": base.lr * 30, "log": True},
        "weight_decay": ({"low": base.weight_decay / 10, "high": base.weight_decay * 10, "log": True}
                         if base.weight_decay > 0 else {"low": 1e-6, "high": 1e-3, "log": True}),
        "layer_decay": {"low": 0.5, "high": 1.0},
        "freeze_epochs": {"low": 0, "high": min(2, base.epochs - 1)},
        "label_smoothing": {"low": 0.0, "high": 0.2},
        "mixup": {"choices": [0.0, 0.2]},
        "cutmix": {"choices": [0.0, 1.0]},
        "batch_size": {"choices": [16, 32, 64, 128]},
    }
    if base.epochs < 2:  # no epoch is left to train the backbone after a head-only one
        del space["freeze_epochs"]
    return space


def load_space(base: FinetuneConfig, path: Optional[str] = None) -> dict[str, dict]:
    """The default space, with the options a YAML file names replaced (or removed, when null); checked."""
    space = default_space(recipe_centre(base))
    if path:
        import yaml

        file = Path(path)
        if not file.is_file():
            raise UserError(f"--space {path}: no such file")
        overrides = yaml.safe_load(file.read_text()) or {}
        if not isinstance(overrides, dict):
            raise UserError(f"--space {path}: expected a mapping of option: {{low, high[, log]}} or {{choices}}")
        for name, spec in overrides.items():
            name = name.replace("-", "_")
            if spec is None:
                space.pop(name, None)
            else:
                space[name] = _numbers(spec)
    for name, spec in space.items():
        check_option(name, spec, path or "the default space")
    return space


def _numbers(spec):
    """YAML 1.1 reads `1e-4` (no dot) as a string: bounds are numbers."""
    if isinstance(spec, dict):
        return {key: float(value) if key in ("low", "high", "step") and isinstance(value, str) else value
                for key, value in spec.items()}
    return spec


def check_option(name: str, spec, where: str) -> None:
    known = {field.name for field in dataclasses.fields(FinetuneConfig)} - set(NOT_SEARCHABLE)
    if name not in known:
        raise UserError(f"{where}: {name!r} is not a finetune option that a sweep can search; see finetune --help")
    ranged = isinstance(spec, dict) and {"low", "high"} <= set(spec) and set(spec) <= {"low", "high", "log", "step"}
    chosen = isinstance(spec, dict) and set(spec) == {"choices"} and isinstance(spec["choices"], list)
    if not (ranged or chosen) or (chosen and not spec["choices"]):
        raise UserError(f"{where}: {name}: expected {{low: .., high: ..[, log: true]}} or {{choices: [..]}}, "
                        f"got {spec!r}")
    if ranged and not spec["low"] <= spec["high"]:
        raise UserError(f"{where}: {name}: low must not exceed high, got {spec!r}")


def suggest(trial, space: dict[str, dict]) -> dict:
    """One trial's values, sampled by the study's sampler: integer bounds give an integer range."""
    values = {}
    for name, spec in space.items():
        if "choices" in spec:
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and not spec.get("log"):
            values[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1))
        else:
            values[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                               log=bool(spec.get("log")), step=spec.get("step"))
    return values


def as_flags(values: dict) -> list[str]:
    """A trial's values as finetune flags (`--lr 0.001`), placed after the user's so that they win."""
    flags = []
    for name, value in values.items():
        flags += [f"--{name.replace('_', '-')}", repr(value) if isinstance(value, float) else str(value)]
    return flags
