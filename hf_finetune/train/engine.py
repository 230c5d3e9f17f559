"""One training epoch and one evaluation pass under Accelerate, in the style of accelerate's examples."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch
from tqdm.auto import tqdm

from hf_finetune.data.stream_loader import StreamLoader
from hf_finetune.model.ema import update_ema
from hf_finetune.errors import UserError
from hf_finetune.train.guard import NON_FINITE, PREEMPTED, StopGuard, leave_together
from hf_finetune.train.rng import restore_rng_state
from hf_finetune.tasks.tta import flip_tta_logits

if TYPE_CHECKING:
    from hf_finetune.train.parts import TrainingParts


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    count: int
    seconds: float
    examples_per_sec: float = 0.0  # of the batches this run trained: an epoch resumed mid-way counts its own part
    stopped_at_step: Optional[int] = None  # set when a SIGTERM stopped the epoch early
    sums: list = field(default_factory=list)  # the epoch's [loss sum, correct, count] so far, for a resume


@dataclass
class ResumePoint:
    """Where an interrupted epoch stopped: the batches done, their metric sums, this process's RNG state."""

    step: int
    sums: list
    rng_state: dict


def train_one_epoch(parts: TrainingParts, epoch: int, guard: StopGuard, frozen_norms=(),
                    resume: Optional[ResumePoint] = None) -> EpochStats:
    """One pass over parts.train_loader; a SIGTERM agreed by every process stops it early (stopped_at_step)."""
    model, loader, normalize, accelerator = parts.model, parts.train_loader, parts.normalize, parts.accelerator
    optimizer, scheduler, task = parts.optimizer, parts.scheduler, parts.task
    model.train()
    for norm in frozen_norms:  # frozen blocks keep their pretrained BatchNorm statistics
        norm.eval()
    started, step = time.perf_counter(), resume.step if resume else 0
    sums = torch.tensor(resume.sums if resume else [0.0, 0.0, 0.0], dtype=torch.float64, device=accelerator.device)
    trained_here = 0  # images this call trains; an epoch resumed mid-way already has some in `sums`
    batches = _batches_from(accelerator, loader, epoch, resume)
    bar = tqdm(total=len(loader), initial=step, desc=f"epoch {epoch}", disable=not accelerator.is_local_main_process,
               leave=False)
    for batch in batches:
        labels = batch["label"]
        images, targets = task.training_batch(normalize(batch["pixel_values"]), labels,
                                              key=(epoch, step, accelerator.process_index))
        with accelerator.accumulate(model):
            logits = model(images)
            loss = task.loss(logits, targets)
            stop = guard.check(accelerator, loss)
            if stop == NON_FINITE:
                leave_together(accelerator)
                raise UserError(f"non-finite loss at epoch {epoch}, batch {step + 1}: nothing saved or pushed, the "
                                "last checkpoint is intact; lower --lr or use --mixed-precision no/bf16")
            accelerator.backward(loss)
            optimizer.step()
            if accelerator.sync_gradients:  # the schedule counts optimizer updates, not micro-batches
                scheduler.step()
                update_ema(parts.ema, parts.model, parts.scheduler)
            optimizer.zero_grad()
        step += 1
        trained_here += len(labels)
        bar.update()
        sums += _epoch_sums(accelerator, task.loss(logits.detach(), targets, reduction="none"),
                            task.hits(logits.detach(), labels))
        if stop == PREEMPTED and accelerator.sync_gradients and step < len(loader):
            bar.close()
            return EpochStats(0.0, 0.0, 0, time.perf_counter() - started, stopped_at_step=step, sums=sums.tolist())
    bar.close()
    seconds = time.perf_counter() - started
    loss_sum, correct, count = sums.tolist()  # the same on every process: gathered each step
    trained = accelerator.reduce(sums.new_tensor(trained_here), reduction="sum").item()
    return EpochStats(loss_sum / max(count, 1), correct / max(count, 1), int(count), seconds, trained / seconds)


def _epoch_sums(accelerator, losses: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """[loss sum, correct, count] of the batch over all processes, each image once: gather_for_metrics drops
    the samples Accelerate repeats to pad the last batch (trained on, but not counted twice)."""
    losses, correct = accelerator.gather_for_metrics((losses.double(), correct.double()))
    return torch.stack([losses.sum(), correct.sum(), losses.new_tensor(len(losses))])


def _batches_from(accelerator, loader, epoch: int, resume: Optional[ResumePoint]):
    """The epoch's batches, from the resume point's step on, with the RNG as it was there."""
    if not resume:
        return iter(loader)
    if isinstance(loader, StreamLoader):  # its checkpointed state already continues after the trained batches
        loader.resume_at(resume.step)
        batches = iter(loader)
    else:
        skipping = accelerator.skip_first_batches(loader, resume.step)
        # Accelerate before 1.15 starts the new loader at epoch 0, and its first iteration hands that epoch to the
        # sampler, which would shuffle and augment the rest of the epoch as epoch 0's.
        skipping.set_epoch(epoch)
        batches = iter(skipping)
    # Accelerate's loaders are generators: the torch DataLoader iterator, whose creation draws a seed from
    # torch's RNG, only comes to exist at the first next(). Take that batch first, then restore the RNG,
    # so that drop path and dropout draw what they drew before the interruption.
    first = next(batches, None)
    restore_rng_state(resume.rng_state)
    return itertools.chain([first] if first is not None else [], batches)


@torch.no_grad()
def evaluate(parts: TrainingParts, model: Optional[torch.nn.Module] = None, loader=None, tta: bool = False,
             keep_logits: bool = False, metrics=None) -> dict:
    """The task's metrics (`parts.task.create_metrics().compute()`) of `model` (default the trained one; the EMA
    copy, the selected weights) on `loader` (default the eval split), plus "seconds"; `metrics`: the accumulator
    to fill (default a new one), for a caller that wants its scores too. Exact across processes:
    gather_for_metrics gives every process every sample once (the last batch's padding dropped), and the
    metrics are computed from counts and exactly rounded loss sums, so each process gets the same numbers as
    one process would. `tta`: the task's merge of the logits of each image and its mirror (tta.flip_tta_logits).
    `keep_logits`: the result also holds the gathered "logits" and "labels" (CPU tensors, every sample once, the
    same on every process)."""
    # `is None`, not `or`: a DataLoader (and a Sequential) with length 0 is falsy.
    model = parts.model if model is None else model
    loader = parts.eval_loader if loader is None else loader
    normalize, accelerator, task = parts.normalize, parts.accelerator, parts.task
    model.eval()
    started = time.perf_counter()
    metrics = task.create_metrics() if metrics is None else metrics
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for batch in loader:
        images, labels = normalize(batch["pixel_values"]), batch["label"]
        # Under the run's autocast whichever model it is: the EMA copy is not wrapped by accelerator.prepare.
        with accelerator.autocast():
            logits = flip_tta_logits(model, images, task.merge_tta) if tta else model(images)
        logits = logits.float()
        losses = task.eval_losses(logits, labels)
        gathered = accelerator.gather_for_metrics((logits, labels, losses))
        metrics.update(*gathered)
        if keep_logits:
            kept.append((gathered[0].cpu(), gathered[1].cpu()))
    result = {**metrics.compute(), "seconds": time.perf_counter() - started}
    if keep_logits:
        result["logits"], result["labels"] = (torch.cat(tensors) for tensors in zip(*kept))
    return result
