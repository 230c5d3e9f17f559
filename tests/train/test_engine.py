"""The training epoch's bookkeeping, run for real on a tiny model and loader under Accelerate."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
from torch.utils.data import DataLoader

from hf_finetune.train.engine import ResumePoint, evaluate, train_one_epoch
from hf_finetune.train.guard import StopGuard
from hf_finetune.data.loaders import create_normalize
from hf_finetune.tasks.multi_label import MultiLabel
from hf_finetune.tasks.single_label import SingleLabel
from hf_finetune.train.rng import rng_state


def _parts(task, label_of):
    """The real prepared components, carried as a run's TrainingParts carries them: 24 images, batches of 4,
    the image `index` labelled `label_of(index)`; the train loader evaluates too."""
    from accelerate import Accelerator

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=len(task.label_names))
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    samples = [{"pixel_values": image, "label": label_of(index)} for index, image in enumerate(images)]
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(samples, batch_size=4))
    return SimpleNamespace(model=model, train_loader=loader, eval_loader=loader, normalize=create_normalize(model),
                           optimizer=optimizer, scheduler=scheduler, accelerator=accelerator, task=task, ema=None)


def _epoch(resume=None):
    parts = _parts(SingleLabel(["even", "odd"]), lambda index: index % 2)
    with StopGuard() as guard:
        return train_one_epoch(parts, 1, guard, resume=resume)


def test_an_epoch_resumed_mid_way_counts_every_image_but_rates_only_those_it_trained():
    full = _epoch()
    assert full.count == 24 and full.examples_per_sec * full.seconds == pytest.approx(24)
    resumed = _epoch(ResumePoint(step=4, sums=[3.0, 10.0, 16.0], rng_state=rng_state()))
    # Metrics cover the whole epoch: the 16 images of the 4 batches before the interruption, and the 8 after.
    assert resumed.count == 24 and 10 / 24 <= resumed.accuracy <= 18 / 24
    assert resumed.examples_per_sec * resumed.seconds == pytest.approx(8)


def test_the_engine_trains_and_evaluates_a_multi_label_task_without_knowing_it():
    """Multi-hot labels through the same epoch and evaluation pass: the task alone knows the difference."""
    task = MultiLabel(["a", "b", "c"])
    parts = _parts(task, lambda index: torch.tensor([index % 2, index // 12, 1]))
    with StopGuard() as guard:
        stats = train_one_epoch(parts, 1, guard)
    assert stats.count == 24 and 0 <= stats.accuracy <= 1 and stats.loss > 0
    result = evaluate(parts, tta=True)
    assert result["count"] == 24 and list(result["per_label"]) == ["a", "b", "c"]
    assert result["per_label"]["c"]["ap"] == 1.0 and result["per_label"]["b"]["support"] == 12
    assert 0 < result["map"] <= 1 and result["loss"] > 0
