"""The LR range test (Smith 2017; fastai's lr_find): train with the learning rate growing exponentially from
`start_lr` to `end_lr`, record the smoothed loss, and suggest the LR where it falls fastest.

It builds exactly what a run would (`create_training_parts`: data, model, recipe, regularizers) with the output
folder in a temporary directory deleted afterwards, so the user's --output-dir is never touched and nothing is
left behind but the plot. The head warm-up is skipped: the suggestion is for the stage that trains every layer
(--lr; the head keeps its --head-lr-mult ratio).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SMOOTHING = 0.98  # fastai's exponential moving average of the loss, debiased
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestion: float  # steepest descent of the smoothed loss
    minimum_over_10: float
    reason: str


def default_steps(updates_per_epoch: int) -> int:
    """200 steps, or 5 epochs' worth on a tiny folder (at least 30): enough points for a smooth curve."""
    return min(200, max(30, 5 * updates_per_epoch))


def find_lr(config, steps=None, start_lr: float = 1e-7, end_lr: float = 1.0) -> RangeTest:
    """The range test for the run `config` describes (options as given: resolved here as the run resolves them)."""
    from hf_finetune.recipes import describe_recipe
    from hf_finetune.train.parts import create_training_parts

    with tempfile.TemporaryDirectory(prefix="lr_find-") as scratch:
        options = dataclasses.replace(config, output_dir=scratch, resume="none", report_to="none", freeze_epochs=0)
        parts = create_training_parts(options.validate())
        resolved = parts.config
        parts.accelerator.print(describe_recipe(resolved.recipe, resolved.recipe_values, resolved.recipe_adjusted))
        updates_per_epoch = math.ceil(len(parts.train_loader) / resolved.gradient_accumulation_steps)
        lrs, losses = sweep(parts, steps or default_steps(updates_per_epoch), start_lr, end_lr)
    return _suggest(lrs, losses)


def sweep(parts, steps: int, start_lr: float, end_lr: float) -> tuple[list[float], list[float]]:
    """Train `steps` optimizer updates with the backbone LR growing exponentially from start_lr to end_lr (each
    group keeping its ratio to it); the LR and the smoothed loss of each update. With gradient accumulation an
    update is its micro-batches (as in training), and its loss their mean."""
    from hf_finetune.model.create import unwrap
    from hf_finetune.model.freezing import frozen_batchnorms

    accelerator, model, optimizer, task = parts.accelerator, parts.model, parts.optimizer, parts.task
    # The configured rates (a warm-up schedule has already set "lr" to its first value).
    ratios = [group.get("initial_lr", group["lr"]) / parts.config.lr for group in optimizer.param_groups]
    model.train()
    for norm in frozen_batchnorms(unwrap(model), all_of_them=parts.config.freeze_bn):
        norm.eval()
    lrs, losses, micro_losses, average, best, batch_index, epoch = [], [], [], 0.0, math.inf, 0, 0
    while len(lrs) < steps:
        epoch += 1
        parts.train_loader.set_epoch(epoch)
        for batch in parts.train_loader:
            lr = start_lr * (end_lr / start_lr) ** (len(lrs) / max(steps - 1, 1))
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            images, targets = task.training_batch(parts.normalize(batch["pixel_values"]), batch["label"],
                                                  key=(epoch, batch_index, accelerator.process_index))
            batch_index += 1
            with accelerator.accumulate(model):  # the prepared optimizer steps only when the update is complete
                loss = task.loss(model(images), targets)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            micro_losses.append(accelerator.reduce(loss.detach().float(), reduction="mean").item())
            if not accelerator.sync_gradients:
                continue
            average = SMOOTHING * average + (1 - SMOOTHING) * sum(micro_losses) / len(micro_losses)
            smoothed, micro_losses = average / (1 - SMOOTHING ** (len(lrs) + 1)), []
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if len(lrs) >= steps or not math.isfinite(smoothed) or smoothed > DIVERGED * best:
                return lrs, losses
    return lrs, losses


def _suggest(lrs: list[float], losses: list[float]) -> RangeTest:
    """The steepest descent of the smoothed loss against log LR, between the first 10% of the sweep (the
    average is still settling) and the minimum (beyond it the loss climbs)."""
    finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
    low = np.argmin([losses[i] for i in finite])
    lowest = finite[low]
    start = min(len(losses) // 10, max(lowest - 1, 0))
    window = np.arange(start, lowest + 1)
    if len(window) < 3:
        suggestion = lrs[lowest] / 10
        reason = "the loss fell too little to find a slope: the LR of the minimum / 10"
    else:
        slopes = np.gradient(np.array(losses)[window], np.log(np.array(lrs)[window]))
        suggestion = lrs[window[int(np.argmin(slopes))]]
        reason = "steepest descent of the smoothed loss (before its minimum)"
    return RangeTest(lrs, losses, suggestion, lrs[lowest] / 10, reason)


def plot_range_test(test: RangeTest, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(test.lrs, test.losses)
    axis.axvline(test.suggestion, color="tab:red", linestyle="--", label=f"suggested --lr {test.suggestion:.2g}")
    axis.axvline(test.minimum_over_10, color="tab:gray", linestyle=":",
                 label=f"minimum / 10: {test.minimum_over_10:.2g}")
    axis.set(xscale="log", xlabel="learning rate (--lr)", ylabel="smoothed training loss", title="LR range test")
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
