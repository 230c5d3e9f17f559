"""Transforms from the backbone's own data config, and the DataLoaders that apply them.

The model's pretrained_cfg (input size, mean/std, interpolation, crop_pct) drives every transform
through timm, so a backbone with other normalization (e.g. mean = std = 0.5) is fed correctly.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import ImageData


def create_transforms(model: nn.Module) -> tuple[Callable, Callable]:
    """Train: RandomResizedCrop + horizontal flip + normalize (the chapter's augmentation; timm's default
    colour jitter is off). Eval: resize by crop_pct + center crop + normalize."""
    from timm.data import create_transform, resolve_model_data_config

    data_config = resolve_model_data_config(model)
    train = create_transform(**data_config, is_training=True, color_jitter=None)
    evaluation = create_transform(**data_config, is_training=False)
    return train, evaluation


def default_num_workers(num_processes: int) -> int:
    return max(0, min(8, (os.cpu_count() or 1) // num_processes))


def _apply(transform: Callable, batch: dict) -> dict:
    # convert("RGB"): grayscale, CMYK and palette images must all become 3-channel tensors.
    return {"pixel_values": [transform(image.convert("RGB")) for image in batch["image"]], "label": batch["label"]}


def _collate(examples: list[dict], channels_last: bool) -> dict:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.stack([example["pixel_values"] for example in examples]).contiguous(memory_format=memory_format)
    return {"pixel_values": images, "label": torch.tensor([example["label"] for example in examples])}


def create_dataloaders(data: ImageData, model: nn.Module, per_device_batch_size: int, num_workers: Optional[int],
                       num_processes: int = 1, channels_last: bool = False) -> tuple[DataLoader, DataLoader]:
    train_transform, eval_transform = create_transforms(model)
    workers = default_num_workers(num_processes) if num_workers is None else num_workers
    common = dict(batch_size=per_device_batch_size, num_workers=workers, persistent_workers=workers > 0,
                  pin_memory=torch.cuda.is_available(), collate_fn=partial(_collate, channels_last=channels_last))
    train = DataLoader(data.train.with_transform(partial(_apply, train_transform)), shuffle=True, **common)
    evaluation = DataLoader(data.eval.with_transform(partial(_apply, eval_transform)), shuffle=False, **common)
    return train, evaluation
