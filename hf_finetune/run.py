"""The run, top to bottom: set up, resume, train and evaluate epoch by epoch, finish, push.

Side effects that must happen once (writing files, printing, pushing) sit behind
`accelerator.is_main_process`, in this module and in the checkpoint writer only.
"""

from __future__ import annotations

import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

from hf_finetune.publish.card import write_model_card
from hf_finetune.train.checkpoints import TrainingProgress, save_checkpoint
from hf_finetune.config import FinetuneConfig
from hf_finetune.train.engine import EpochStats, ResumePoint, train_one_epoch
from hf_finetune.errors import TrainingStopped
from hf_finetune.files import write_json
from hf_finetune.model.freezing import frozen_batchnorms, set_requires_grad
from hf_finetune.train.guard import PREEMPTED, StopGuard, leave_together, main_process_checks
from hf_finetune.hardware import cpu_model, cpu_only_launch
from hf_finetune.publish.hub import check_push_possible, push_once
from hf_finetune.tasks.calibration import calibration_lines
from hf_finetune.model.create import save_classifier, unwrap
from hf_finetune.model.optim import describe_learning_rates, describe_param_groups
from hf_finetune.train.parts import TrainingParts, create_training_parts
from hf_finetune.evaluate.plots import plot_confusion_matrix, plot_per_label_ap, plot_reliability_diagram
from hf_finetune.recipes import describe_recipe
from hf_finetune.tasks import Task
from hf_finetune.evaluate.report import library_versions, plot_training_curves, summary_lines
from hf_finetune.train.resume import check_output_dir_is_ours, resume_training
from hf_finetune.train.selection import (eval_columns, evaluate_candidates, final_evaluation, prune_best, save_best,
                                         select_epoch)

logger = logging.getLogger(__name__)


def finetune(config: FinetuneConfig, on_epoch_end: Sequence[Callable[[int, dict], None]] = ()) -> dict:
    """Fine-tune, save the model and metrics in config.output_dir, and return the final metrics.

    on_epoch_end: called on every process as `hook(epoch, row)` (row: the epoch's metrics.json line) once the
    epoch is evaluated and checkpointed, e.g. to report to a hyper-parameter search; a hook stops the run by
    raising (every process must agree to: the sweep's pruning hook broadcasts its decision)."""
    config.validate()
    check_output_dir_is_ours(config)
    if config.push_to_hub:  # a missing token fails now, before the data and the training, on the main process alone
        from accelerate import PartialState  # the Accelerator created later shares it

        main_process_checks(PartialState(cpu=cpu_only_launch()), partial(check_push_possible, config.push_to_hub))
    parts = create_training_parts(config)
    config = parts.config  # from here on, the resolved record: every derived value filled once
    progress, resume_point = resume_training(parts)
    if not progress.already_finished:
        record_start(parts)
    # Trackers take scalar hyper-parameters only (tensorboard's hparams refuses dicts such as recipe_values).
    parts.accelerator.init_trackers("hf_finetune", config={k: v for k, v in config.to_dict().items()
                                                            if isinstance(v, (int, float, str, bool))})
    with StopGuard() as guard:
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            if progress.stopped_early:  # also when resuming a run that had stopped early
                break
            run_epoch(parts, progress, epoch, guard, resume_point)
            resume_point = None
            for hook in on_epoch_end:
                hook(epoch, progress.history[-1])
    metrics = finish(parts, progress)
    leave_together(parts.accelerator)
    parts.accelerator.end_training()
    if parts.accelerator.is_main_process and config.push_to_hub:  # needs no other process: they need not wait
        push_once(Path(config.output_dir), config.push_to_hub, private=not config.hub_public)
    return metrics


def record_start(parts: TrainingParts) -> None:
    """run_config.json (everything needed to reproduce the run) and the start-up lines, on the main process."""
    if not parts.accelerator.is_main_process:
        return
    config, data, source = parts.config, parts.data, parts.source
    if config.precision.slow_warning:
        logger.warning(config.precision.slow_warning)
    trainable, total = parts.parameter_counts
    groups = describe_param_groups(parts.optimizer)
    class_weights = parts.task.class_weights
    weights = None if class_weights is None else dict(zip(data.label_names, class_weights.tolist()))
    run_config = {
        "config": config.to_dict(), "command": sys.argv,
        "source": {"name": source.name, "architecture": source.architecture, "pretrained": source.pretrained,
                   "hub_id": source.hub_id, "tag": source.tag, "license": source.license},
        "data": {"name": data.name, "eval_split": data.eval_split, "train_size": data.train_size, "streaming": data.streaming,
                 "eval_size": len(data.eval), "test_split": data.test_split,
                 "test_size": len(data.test) if data.test is not None else None},
        "task": parts.task.name, "label_names": data.label_names, "label_matches": parts.reused_rows,
        "param_groups": groups,
        "num_processes": parts.accelerator.num_processes, "per_device_batch_size": parts.per_device_batch_size,
        "mixed_precision": config.precision.mixed_precision, "mixed_precision_reason": config.precision.reason,
        "cpu": cpu_model(), "versions": library_versions(),
        "frozen": {"groups": config.freeze, "fraction": config.freeze_fraction, "num_params": total - trainable,
                   "head_warmup_epochs": config.freeze_epochs, "batchnorm_frozen": config.freeze_bn},
        "trainable_params": trainable, "total_params": total, "bad_files": data.bad_files,
        "recipe": {"name": config.recipe, "values": config.recipe_values, "adjusted": config.recipe_adjusted},
        "class_weights": weights,
    }
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "run_config.json", run_config)
    test = f" / {len(data.test)} {data.test_split}" if data.test is not None else ""
    train = (f"{len(data.train)} train" if not data.streaming else
             f"streamed train ({data.train_size or 'size unknown'}; {config.max_steps} steps, evaluated every "
             f"{config.checkpoint_every})")
    print(f"{data.name}: {train} / {len(data.eval)} {data.eval_split}{test} images, classes "
          f"{data.label_names}; {config.model}: {describe_learning_rates(groups)}")
    print(f"trainable parameters: {trainable:,} of {total:,}; precision {config.precision.describe()}")
    print(describe_recipe(config.recipe, config.recipe_values, config.recipe_adjusted))
    if weights:
        print("class weights (balanced): " + ", ".join(f"{name} {value:.3f}" for name, value in weights.items()))


def run_epoch(parts: TrainingParts, progress: TrainingProgress, epoch: int, guard: StopGuard,
              resume_point: Optional[ResumePoint]) -> None:
    """Train one epoch (stopping early on a SIGTERM), evaluate, record and checkpoint it."""
    config, accelerator = parts.config, parts.accelerator
    parts.train_loader.set_epoch(epoch)
    warming_up = epoch <= config.freeze_epochs
    set_requires_grad(unwrap(parts.model), parts.warmup_frozen, not warming_up)
    if config.freeze_epochs and epoch <= config.freeze_epochs + 1:
        accelerator.print(f"epoch {epoch}: " + ("head only, backbone frozen" if warming_up else "backbone unfrozen"))
    norms = frozen_batchnorms(unwrap(parts.model), all_of_them=config.freeze_bn)
    train = train_one_epoch(parts, epoch, guard, norms, resume_point)
    if train.stopped_at_step is not None:
        progress.step = train.stopped_at_step
        save_checkpoint(parts, progress, epoch_sums=train.sums)
        stop_for_sigterm(parts, progress)
    evaluation = evaluate_candidates(parts)
    improved = select_epoch(parts, progress, epoch, evaluation)
    row = epoch_row(epoch, train, evaluation, parts.optimizer, parts.task)
    progress.epoch, progress.step, progress.history = epoch, 0, progress.history + [row]
    accelerator.log({key: value for key, value in row.items() if isinstance(value, (int, float))}, step=epoch)
    accelerator.print(epoch_line(row, evaluation, progress, improved, parts.task))
    if improved and not config.save_last:
        save_best(parts, progress)  # before the checkpoint that names it, removed after the next one (selection.py)
    save_checkpoint(parts, progress)
    prune_best(parts, progress)
    if progress.stopped_early:
        accelerator.print(f"early stopping: no {config.select_metric} improvement > {config.min_delta:g} for "
                          f"{config.patience} epoch(s); best epoch {progress.best['epoch']}")
    elif epoch < config.epochs and guard.check(accelerator) == PREEMPTED:
        stop_for_sigterm(parts, progress)


def epoch_row(epoch: int, train: EpochStats, evaluation: dict[str, dict], optimizer, task: Task) -> dict:
    """One epoch's line of metrics.json: the trained weights' eval_* (and the EMA's ema_eval_*) columns."""
    row = {"epoch": epoch, "train_loss": train.loss, "train_acc": train.accuracy,
           **eval_columns(evaluation["trained"], task), "train_count": train.count,
           "examples_per_sec": train.examples_per_sec,
           "epoch_seconds": train.seconds + sum(result["seconds"] for result in evaluation.values()),
           "lr": {group["name"]: group["lr"] for group in optimizer.param_groups}}
    if "ema" in evaluation:
        row.update(eval_columns(evaluation["ema"], task, "ema_eval"))
    return row


def epoch_line(row: dict, evaluation: dict[str, dict], progress: TrainingProgress, improved: bool, task: Task) -> str:
    """The epoch's one line: the chapter's three numbers, then the eval metrics of each set of weights."""
    line = (f"epoch {row['epoch']}: loss {row['train_loss']:.3f}, train acc {row['train_acc']:.3f}, "
            f"test acc {row['eval_acc']:.3f} ({row['eval_count']} eval images) | "
            + task.summary_line(evaluation["trained"]))
    if "ema" in evaluation:
        line += " | EMA: " + task.summary_line(evaluation["ema"])
    return line + (f" | best ({progress.best['weights']})" if improved else "")


def stop_for_sigterm(parts: TrainingParts, progress: TrainingProgress) -> None:
    """After the checkpoint every process has written together: leave with TrainingStopped (exit code 75)."""
    parts.accelerator.end_training()
    raise TrainingStopped(f"stopped by SIGTERM after {progress.epoch} epoch(s) and {progress.step} batch(es); "
                          "checkpoint saved: run the same command again to resume")


def finish(parts: TrainingParts, progress: TrainingProgress) -> dict:
    """Save the model, metrics, curves and card on the main process, unless an earlier run of this command did;
    every process returns the final metrics."""
    from accelerate.utils import broadcast_object_list, gather_object

    accelerator, output_dir = parts.accelerator, Path(parts.config.output_dir)
    device = accelerator.device
    devices = gather_object([device.type if device.type == "cpu" else str(device)])
    # On every process: the selected weights go into the model and are evaluated (eval, test, TTA) together.
    report = None if progress.already_finished else final_evaluation(parts, progress)
    metrics = [None]
    if accelerator.is_main_process:
        if progress.already_finished:
            accelerator.print(f"{output_dir} already holds this finished run: nothing to train")
            metrics = [json.loads((output_dir / "metrics.json").read_text())]
        else:
            metrics = [final_metrics(progress.history, report, devices, accelerator.num_processes,
                                     len(parts.data.bad_files), parts.task)]
            save_results(parts, metrics[0])
        for line in summary_lines(metrics[0]["final"], metrics[0]["devices"]) + selection_lines(metrics[0], parts.task):
            accelerator.print(line)
    if accelerator.num_processes > 1:
        broadcast_object_list(metrics)
    return metrics[0]


def final_metrics(history: list[dict], report: dict, devices: list[str], num_processes: int, bad_files: int,
                  task: Task) -> dict:
    """metrics.json: the per-epoch history; "final", the selected epoch's row with the saved weights' eval numbers
    and the whole run's throughput and time; "selected", how it was selected and its full metrics per split
    (per class, confusion matrix; test and TTA when there are)."""
    train_seconds = sum(row["train_count"] / row["examples_per_sec"] for row in history)
    row = next(row for row in history if row["epoch"] == report["selected"]["epoch"])
    final = {**row, **eval_columns(report["eval"], task),
             "examples_per_sec": sum(row["train_count"] for row in history) / train_seconds,
             "total_seconds": sum(row["epoch_seconds"] for row in history),
             "selected_epoch": report["selected"]["epoch"], "selected_weights": report["selected"]["weights"]}
    return {"history": history, "final": final, "selected": report, "devices": devices,
            "num_processes": num_processes, "bad_files": bad_files}


def selection_lines(metrics: dict, task: Task) -> list[str]:
    """What was saved, and its numbers on each evaluated split."""
    report = metrics.get("selected")
    if not report:
        return []
    selected = report["selected"]
    lines = [f"saved: epoch {selected['epoch']}, {selected['weights']} weights ({selected['rule']})"]
    return lines + [f"{split.replace('_tta', ' +flip TTA')}: {task.summary_line(report[split])}"
                    for split in ("eval", "eval_tta", "test", "test_tta") if split in report] \
        + calibration_lines(report.get("calibration"))


def save_results(parts: TrainingParts, metrics: dict) -> None:
    output_dir = Path(parts.config.output_dir)
    save_classifier(unwrap(parts.model), output_dir, parts.task.saved_config())
    write_json(output_dir / "metrics.json", metrics)
    plot_training_curves(metrics["history"], output_dir / "training_curves.png", parts.task.accuracy_name)
    # The held-out test split when there is one: the eval split also chose the epoch.
    shown = metrics["selected"].get("test") or metrics["selected"]["eval"]
    if "confusion_matrix" in shown:  # single-label
        plot_confusion_matrix(shown["confusion_matrix"], shown["label_names"], output_dir / "confusion_matrix.png")
    else:  # multi-label: no confusion between labels an image can have together
        plot_per_label_ap(shown["per_label"], output_dir / "per_label_ap.png")
    if "calibration" in metrics["selected"]:  # the head already holds T: save_classifier saved calibrated weights
        plot_reliability_diagram(metrics["selected"]["calibration"], {"eval": parts.data.eval_split,
                                 "test": parts.data.test_split}, output_dir / "calibration.png")
    write_model_card(output_dir)
