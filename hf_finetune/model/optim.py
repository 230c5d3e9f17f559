"""Parameter groups (head at a multiple of the backbone LR), optimizer and LR schedule.

Each group carries its real `lr`: torch optimizers and the transformers/LambdaLR schedules read
`lr` only, so nothing may rely on timm's `lr_scale` convention here.
"""

from __future__ import annotations

import torch
from torch import nn

from hf_finetune.config import FinetuneConfig
from hf_finetune.model.freezing import layer_depths
from hf_finetune.model.create import head_parameter_names


def create_param_groups(model: nn.Module, config: FinetuneConfig) -> list[dict]:
    """Trainable parameters split into a backbone group at `lr` and a head group at `lr * head_lr_mult`,
    or one group at `lr` with `--param-group false` (the chapter's scratch baseline). With --layer-decay,
    one group per depth d from the top at `lr * decay**d` (times the head multiplier for the head)."""
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if not config.param_group:
        return [_group("all", [param for _, param in trainable], config.lr, config)]
    head = head_parameter_names(model)
    if config.layer_decay in (None, 1):  # 1: every depth at `lr`, the two plain groups
        return [
            _group("backbone", [param for name, param in trainable if name not in head], config.lr, config),
            _group("head", [param for name, param in trainable if name in head], config.lr * config.head_lr_mult,
                   config),
        ]
    depths = layer_depths(model)
    groups: dict[str, dict] = {}
    for name, param in trainable:
        depth, in_head = depths[name], name in head
        key = "head" if in_head else f"backbone.depth{depth}"
        if key not in groups:
            lr = config.lr * (config.head_lr_mult if in_head else 1.0) * config.layer_decay ** depth
            groups[key] = _group(key, [], lr, config) | {"depth": depth}
        groups[key]["params"].append(param)
    return sorted(groups.values(), key=lambda group: (group["name"] == "head", -group["depth"]))


def _group(name: str, params: list, lr: float, config: FinetuneConfig) -> dict:
    return {"name": name, "params": params, "lr": lr, "weight_decay": config.weight_decay}


def create_optimizer(param_groups: list[dict], config: FinetuneConfig) -> torch.optim.Optimizer:
    groups = [group for group in param_groups if group["params"]]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def create_scheduler(optimizer: torch.optim.Optimizer, config: FinetuneConfig, total_updates: int):
    """A schedule over optimizer updates (not micro-batches, not per-process steps)."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    if config.lr_scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, total_updates)
    return get_constant_schedule_with_warmup(optimizer, config.warmup_steps)


def describe_param_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """The groups as configured. A built schedule has already set `lr` to its first value (0 at the start of a
    warm-up); `initial_lr`, which torch schedulers record, is the configured rate."""
    return [{"name": group["name"], "lr": group.get("initial_lr", group["lr"]), "weight_decay": group["weight_decay"],
             "num_params": sum(param.numel() for param in group["params"])} for group in optimizer.param_groups]


def describe_learning_rates(groups: list[dict]) -> str:
    """The start-up line's rates: each group's, or with layer-wise decay the backbone's range over its depths."""
    by_depth = [group for group in groups if group["name"].startswith("backbone.depth")]
    depths = [group["lr"] for group in by_depth]
    rates = [f"{group['name']} lr {group['lr']:g}" for group in groups if group not in by_depth]
    if depths:
        rates.insert(0, f"backbone lr {min(depths):.3g} to {max(depths):.3g} over {len(depths)} layer groups")
    return ", ".join(rates)
