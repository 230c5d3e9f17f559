"""Model selection and early stopping: which epoch's weights (trained or EMA) the run saves, and when it stops.

Every epoch the trained weights (and with --model-ema the EMA copy) are scored by --select-metric on the eval
split. The best so far, its score and the patience counter live in `TrainingProgress` (so in each checkpoint):
a resumed run selects and stops exactly as an uninterrupted one. The scores come from gathered metrics, the
same on every process; the main process's decision is broadcast anyway, so no rank can leave the loop alone.

The best weights sit in OUTPUT_DIR/checkpoints/best-epoch-NNNN/ (main process, crash-safe like checkpoints):
a new one is committed before the checkpoint that names it, and the old one removed only after, so whatever
a kill interrupts, the newest checkpoint's best folder exists.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from hf_finetune.train.checkpoints import EMA_FILE, TrainingProgress, checkpoints_dir, fsync_tree, remove_checkpoint
from hf_finetune.model.ema import ema_state, share_ema_statistics
from hf_finetune.train.engine import evaluate
from hf_finetune.errors import UserError
from hf_finetune.model.calibrate import apply_temperature
from hf_finetune.model.create import unwrap
from hf_finetune.tasks import Task
from hf_finetune.tasks.calibration import ECE_BINS

if TYPE_CHECKING:
    from hf_finetune.train.parts import TrainingParts

BEST_PREFIX = "best-epoch-"


def evaluate_candidates(parts: TrainingParts) -> dict[str, dict]:
    """{"trained": metrics, "ema": metrics with --model-ema}: each `engine.evaluate` on the eval split, the EMA's
    with rank 0's statistics on every process (the saved EMA)."""
    results = {"trained": evaluate(parts)}
    if parts.ema is not None:
        share_ema_statistics(parts.ema, parts.accelerator.num_processes)
        results["ema"] = evaluate(parts, model=parts.ema.module)
    return results


def score(metrics: dict, select_metric: str, task: Task) -> float:
    key = task.select_metrics[select_metric][0]
    if metrics.get(key) is None:
        raise UserError(f"--select-metric {select_metric}: not computed for this evaluation; pick another one")
    return metrics[key]


def better(new: float, old: float, select_metric: str, task: Task, min_delta: float = 0.0) -> bool:
    """Whether `new` improves on `old` by more than min_delta (ties keep the earlier)."""
    higher_is_better = task.select_metrics[select_metric][1]
    return new - old > min_delta if higher_is_better else old - new > min_delta


def select_epoch(parts: TrainingParts, progress: TrainingProgress, epoch: int, results: dict[str, dict]) -> bool:
    """Update progress.best, the patience counter and stopped_early with this epoch; True when it is the new
    best. Computed on every process from identical gathered metrics, then the main process's result is sent to
    all, so every process stops at the same epoch."""
    from accelerate.utils import broadcast_object_list

    config, task = parts.config, parts.task
    scores = {name: score(metrics, config.select_metric, task) for name, metrics in results.items()}
    ema_better = "ema" in scores and better(scores["ema"], scores["trained"], config.select_metric, task)
    weights = "ema" if ema_better else "trained"
    improved = progress.best is None or better(scores[weights], progress.best["score"], config.select_metric, task,
                                               config.min_delta)
    if improved:
        progress.best, progress.epochs_without_improvement = {"epoch": epoch, "score": scores[weights],
                                                              "weights": weights}, 0
    else:
        progress.epochs_without_improvement += 1
    progress.stopped_early = bool(config.patience) and progress.epochs_without_improvement >= config.patience
    decision = [(improved, progress.best, progress.epochs_without_improvement, progress.stopped_early)]
    if parts.accelerator.num_processes > 1:
        broadcast_object_list(decision)
    improved, progress.best, progress.epochs_without_improvement, progress.stopped_early = decision[0]
    return improved


def best_dir(output_dir: Path, epoch: int) -> Path:
    return checkpoints_dir(output_dir) / f"{BEST_PREFIX}{epoch:04d}"


def save_best(parts: TrainingParts, progress: TrainingProgress) -> None:
    """On the main process, before the epoch's checkpoint: the new best weights into best-epoch-NNNN/."""
    from safetensors.torch import save_file

    if not parts.accelerator.is_main_process:
        return
    final = best_dir(Path(parts.config.output_dir), progress.best["epoch"])
    staging = final.with_name(".staging-" + final.name)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    state = ema_state(parts.ema) if progress.best["weights"] == "ema" else {
        key: value.detach().cpu().contiguous() for key, value in unwrap(parts.model).state_dict().items()}
    save_file(state, staging / "model.safetensors")
    fsync_tree(staging)
    remove_checkpoint(final)  # a leftover of an interrupted run that redoes this epoch: no checkpoint names it
    os.replace(staging, final)
    fsync_tree(final.parent)


def carry_best_weights(checkpoint: Path, progress: dict, output_dir: Path) -> None:
    """Before a resumed run trains (main process): make OUTPUT_DIR/checkpoints hold the best weights `checkpoint`
    names. They are its best-epoch-NNNN/ neighbour (copied when the checkpoint is another folder's), or, for the
    epoch-end checkpoint of the best epoch, its own weights; gone, the resume is refused now rather than after
    all the training."""
    best = progress.get("best")
    if best is None:
        return
    target = best_dir(output_dir, best["epoch"])
    beside = Path(checkpoint).parent / target.name
    if beside.resolve() == target.resolve() and (target / "model.safetensors").is_file():
        return
    own = Path(checkpoint) / (EMA_FILE if best["weights"] == "ema" else "model.safetensors")
    if (beside / "model.safetensors").is_file():
        weights = beside / "model.safetensors"
    elif best["epoch"] == progress["epoch"] and not progress["step"] and own.is_file():
        weights = own
    else:
        raise UserError(f"cannot resume {checkpoint}: the best weights it names ({target.name}, the "
                        f"{best['weights']} weights of epoch {best['epoch']}) are no longer beside it in "
                        f"{beside.parent}; resume from a checkpoint whose best weights are kept, or pass --resume "
                        "none to start over")
    staging = target.with_name(".staging-" + target.name)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(weights, staging / "model.safetensors")
    fsync_tree(staging)
    remove_checkpoint(target)
    os.replace(staging, target)
    fsync_tree(target.parent)


def prune_best(parts: TrainingParts, progress: TrainingProgress) -> None:
    """On the main process, after the epoch's checkpoint: remove the best folders it no longer names."""
    folder = checkpoints_dir(Path(parts.config.output_dir))
    if not parts.accelerator.is_main_process or progress.best is None or not folder.is_dir():
        return
    keep = best_dir(folder.parent, progress.best["epoch"]).name
    for path in folder.glob(BEST_PREFIX + "*"):
        if path.name != keep:
            remove_checkpoint(path)


def load_selected(parts: TrainingParts, progress: TrainingProgress) -> dict:
    """Put the weights to save into the model on every process (the main process reads them and sends them);
    return how they were selected."""
    from accelerate.utils import broadcast_object_list
    from safetensors.torch import load_file

    config, accelerator = parts.config, parts.accelerator
    if config.save_last or progress.best is None:
        return {"epoch": progress.epoch, "weights": "trained", "rule": "last epoch (--save-last)"}
    state = [None]
    if accelerator.is_main_process:
        state = [load_file(best_dir(Path(config.output_dir), progress.best["epoch"]) / "model.safetensors")]
    if accelerator.num_processes > 1:
        broadcast_object_list(state)
    unwrap(parts.model).load_state_dict(state[0])
    return {**progress.best, "metric": config.select_metric, "rule": f"best {config.select_metric} on the eval split"}


def final_evaluation(parts: TrainingParts, progress: TrainingProgress) -> dict:
    """The selected weights (calibrated first where the task can be and with --calibrate temperature: the weights
    saved) on the eval split and the test split, if any, plain and with --tta flip. The task fits its decisions
    to the eval split's plain scores (multi-label: the per-label thresholds), so every split and the saved model
    use them; calibration then re-expresses them for the calibrated scores, changing no decision."""
    selected = load_selected(parts, progress)
    test_loader: Optional[object] = getattr(parts, "test_loader", None)
    calibrate = parts.config.calibrate == "temperature" and parts.task.temperature_scaling
    accumulator = parts.task.create_metrics()
    plain = evaluate(parts, metrics=accumulator, keep_logits=calibrate)
    evaluation = {key: value for key, value in plain.items() if key not in ("logits", "labels")}
    if parts.task.fit_decisions(accumulator, parts.config.threshold):  # the same on every process: gathered
        evaluation = {**accumulator.compute(), "seconds": plain["seconds"]}
    calibration = calibrate_selected(parts, plain, test_loader) if calibrate else None
    if calibration is not None:  # the report is the saved (calibrated) model's, as scripts/evaluate.py finds it
        evaluation = evaluate(parts)
    report = {"selected": selected, "eval": evaluation}
    if test_loader is not None:
        report["test"] = evaluate(parts, loader=test_loader)
    if parts.config.tta == "flip":
        report["eval_tta"] = evaluate(parts, tta=True)
        if test_loader is not None:
            report["test_tta"] = evaluate(parts, loader=test_loader, tta=True)
    if calibration is not None:
        report["calibration"] = calibration
    return report


def calibrate_selected(parts: TrainingParts, plain: dict, test_loader: Optional[object]) -> dict:
    """Fit the task's temperature(s) on `plain`, the gathered logits (never the TTA ones) of the selected weights
    on the eval split, the split that selected them; divide the model's classifier by it and re-express the
    task's decisions, on every process (the same gathered logits give each the same fit). Returns metrics.json's
    "calibration": the temperature (single-label) or one per label (multi-label) and, per split (the test split
    scored with what was fitted on eval), ECE, NLL and reliability bins before and after."""
    task = parts.task
    logits = {"eval": plain}
    if test_loader is not None:
        logits["test"] = evaluate(parts, loader=test_loader, keep_logits=True)
    temperature = task.fit_temperature(plain["logits"], plain["labels"])
    apply_temperature(unwrap(parts.model), temperature)
    task.scale_decisions(temperature, parts.config.threshold)
    fitted = {"temperature": temperature} if isinstance(temperature, float) else \
        {"temperatures": dict(zip(task.label_names, temperature))}
    return {"method": "temperature", **fitted, "fitted_on": "eval", "bins": ECE_BINS,
            **{split: task.calibration_numbers(result["logits"], result["labels"], temperature)
               for split, result in logits.items()}}


def eval_columns(metrics: dict, task: Task, prefix: str = "eval") -> dict:
    """An evaluation's columns of a metrics.json history row: the task's `history_columns` (single-label:
    eval_acc, eval_loss, eval_count kept as before)."""
    return {f"{prefix}_{suffix}": metrics[key] for key, suffix in task.history_columns}
