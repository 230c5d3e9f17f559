"""An exponential moving average of the weights (timm's ModelEmaV3), updated after every optimizer update.

The decay warms up (timm's `use_warmup`: 1 - (1 + updates)^-2/3, capped at --ema-decay), so a fine-tune of a
few hundred updates still averages over a useful window instead of staying at its first weights. The update
count passed to timm is the schedule's, which a checkpoint restores: a resumed run averages exactly as an
uninterrupted one. Every process holds its own copy. Its weights stay identical because DDP keeps the model's
so; its BatchNorm statistics do not where they are trained (each rank averages its own batches' statistics), so
before each evaluation every rank takes rank 0's, the copy that checkpoints save (`share_ema_statistics`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from hf_finetune.model.create import unwrap

if TYPE_CHECKING:
    from hf_finetune.config import FinetuneConfig


def create_ema(model: torch.nn.Module, config: FinetuneConfig):
    """The EMA copy of the (prepared, on-device) model, or None without --model-ema."""
    if not config.model_ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(unwrap(model), decay=config.ema_decay, use_warmup=config.ema_warmup)


def update_ema(ema, model: torch.nn.Module, scheduler) -> None:
    """After an optimizer update: move the average towards the new weights (nothing without --model-ema)."""
    if ema is not None:
        ema.update(unwrap(model), step=optimizer_updates(scheduler))


def share_ema_statistics(ema, num_processes: int) -> None:
    """Give every process rank 0's EMA BatchNorm statistics (timm's distribute_bn, as timm's train.py does for its
    EMA): then the EMA all ranks evaluate together is the one saved. A broadcast, not timm's average: rank 0's
    copy never depends on the others', so a run resumed from a checkpoint (rank 0's EMA) scores as an
    uninterrupted one."""
    if ema is not None and num_processes > 1:
        from timm.utils import distribute_bn

        distribute_bn(ema.module, num_processes, reduce=False)


def optimizer_updates(scheduler) -> int:
    """Optimizer updates so far: what the (Accelerate-wrapped) LR schedule counted, saved in every checkpoint."""
    return int(getattr(scheduler, "scheduler", scheduler).last_epoch)


def ema_state(ema) -> Optional[dict]:
    """The EMA weights as contiguous CPU tensors (for safetensors), or None without --model-ema."""
    if ema is None:
        return None
    return {key: value.detach().cpu().contiguous() for key, value in ema.module.state_dict().items()}
