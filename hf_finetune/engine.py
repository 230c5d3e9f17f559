"""One training epoch and one evaluation pass under Accelerate, in the style of accelerate's examples."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    count: int
    seconds: float


def _summed(accelerator, loss_sum, correct, count, started: float) -> EpochStats:
    totals = accelerator.reduce(torch.stack([loss_sum, correct, count]).double(), reduction="sum")
    loss_sum, correct, count = totals.tolist()
    return EpochStats(loss_sum / max(count, 1), correct / max(count, 1), int(count), time.perf_counter() - started)


def train_one_epoch(model, loader, optimizer, scheduler, accelerator, epoch: int, frozen_norms=()) -> EpochStats:
    model.train()
    for norm in frozen_norms:  # frozen blocks keep their pretrained BatchNorm statistics
        norm.eval()
    started = time.perf_counter()
    loss_sum, correct, count = (torch.zeros((), device=accelerator.device) for _ in range(3))
    for batch in tqdm(loader, desc=f"epoch {epoch}", disable=not accelerator.is_local_main_process, leave=False):
        images, labels = batch["pixel_values"], batch["label"]
        with accelerator.accumulate(model):
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            accelerator.backward(loss)
            optimizer.step()
            if accelerator.sync_gradients:  # the schedule counts optimizer updates, not micro-batches
                scheduler.step()
            optimizer.zero_grad()
        loss_sum += loss.detach().float() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        count += len(labels)
    return _summed(accelerator, loss_sum, correct, count, started)


@torch.no_grad()
def evaluate(model, loader, accelerator) -> EpochStats:
    """Exact counts across processes: gather_for_metrics drops the samples padded onto the last batch."""
    model.eval()
    started = time.perf_counter()
    loss_sum, correct, count = (torch.zeros((), device=accelerator.device) for _ in range(3))
    for batch in loader:
        logits = model(batch["pixel_values"])
        losses = F.cross_entropy(logits, batch["label"], reduction="none")
        losses, predictions, labels = accelerator.gather_for_metrics((losses, logits.argmax(dim=1), batch["label"]))
        loss_sum += losses.float().sum()
        correct += (predictions == labels).sum()
        count += len(labels)
    # gather_for_metrics already gave every process all samples: no further reduction.
    return EpochStats(loss_sum.item() / max(count.item(), 1), correct.item() / max(count.item(), 1),
                      int(count.item()), time.perf_counter() - started)
