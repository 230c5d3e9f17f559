"""What a training step minimizes: cross-entropy with label smoothing, class weights, and Mixup/CutMix.

One `TrainingObjective` per run: `mix` turns a normalized batch and its labels into the model's input and
the targets (class indices, or soft targets when mixing), `loss` scores logits against those targets. The
eval loss stays the plain cross-entropy (engine.evaluate), so runs with different regularizers compare.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def balanced_class_weights(labels, num_classes: int) -> torch.Tensor:
    """sklearn's 'balanced' weights n / (classes x count): every class contributes equally to the loss."""
    counts = Counter(int(label) for label in labels)
    missing = [index for index in range(num_classes) if not counts[index]]
    if missing:  # data.find_classes keeps only class folders with images: a Hub split may still lack one
        from hf_finetune.errors import UserError

        raise UserError(f"--class-weights balanced: class(es) {missing} have no training image")
    total = sum(counts.values())
    return torch.tensor([total / (num_classes * counts[index]) for index in range(num_classes)])


@contextmanager
def numpy_seeded(seed: int, key: tuple = ()):
    """numpy's global RNG (which timm's Mixup draws from) seeded from the run's seed and `key` (epoch, step,
    process), then restored: the mixing of a batch is the same in a resumed run (as sampling.py does for the
    crops)."""
    state = np.random.get_state()
    np.random.seed(hash((seed, *key)) & 0xFFFF_FFFF)
    try:
        yield
    finally:
        np.random.set_state(state)


class TrainingObjective:
    def __init__(self, num_classes: int, label_smoothing: float = 0.0, class_weights: Optional[torch.Tensor] = None,
                 mixup: float = 0.0, cutmix: float = 0.0, seed: int = 0):
        self.num_classes, self.label_smoothing, self.class_weights = num_classes, label_smoothing, class_weights
        self.seed = seed
        self.mixer = None
        if mixup or cutmix:
            from timm.data import Mixup

            # Smoothing is left to the loss (torch applies it to soft targets the same way timm's mixup_target
            # does), so one code path covers mixed and unmixed batches.
            self.mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.0, num_classes=num_classes)

    def mix(self, images: torch.Tensor, labels: torch.Tensor, key: tuple = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, targets). With Mixup/CutMix every image is blended with the batch flipped (timm's batch mode:
        one Beta draw, and a box for CutMix, per batch); timm needs an even batch, so an odd last batch leaves its
        last image unmixed with its one-hot target. Seeded per batch (`numpy_seeded`)."""
        if self.mixer is None:
            return images, labels
        targets = F.one_hot(labels, self.num_classes).to(images.dtype)
        even = len(labels) - len(labels) % 2
        if even:
            with numpy_seeded(self.seed, key):
                images[:even], targets[:even] = self.mixer(images[:even], labels[:even])
        return images, targets

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """torch's cross-entropy: class-index or soft targets, smoothed to (1 - s) target + s / classes, each
        class's term times its weight (the mean over a batch of indices divides by the weights' sum);
        `reduction="none"`: each sample's weighted loss."""
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, logits.dtype)
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=self.label_smoothing,
                               reduction=reduction)


def create_objective(config, train_labels, num_classes: int) -> TrainingObjective:
    weights = balanced_class_weights(train_labels, num_classes) if config.class_weights == "balanced" else None
    return TrainingObjective(num_classes, config.label_smoothing, weights, config.mixup, config.cutmix, config.seed)
