"""Test-time augmentation: merge the logits of a batch and of its horizontal mirror (by default their mean)."""

from __future__ import annotations

import torch


def mean_logits(logits: torch.Tensor, mirrored_logits: torch.Tensor) -> torch.Tensor:
    return (logits + mirrored_logits) / 2


@torch.no_grad()
def flip_tta_logits(model: torch.nn.Module, images: torch.Tensor, merge=mean_logits) -> torch.Tensor:
    """`merge` (a task's `merge_tta`) of `model(images)` and `model(images mirrored left-right)`; `images` is
    [batch, channels, H, W].

    Two forwards rather than one of a doubled batch: the same memory as plain evaluation, and each half is
    computed exactly as `model(images)` would be. The width axis is the last one of the logical NCHW shape,
    whatever the memory format (channels_last included).
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [batch, channels, height, width], got shape {tuple(images.shape)}")
    return merge(model(images), model(torch.flip(images, dims=[3])))
