"""The run, top to bottom: data, model, optimizer, Accelerate loop, checkpoints, saved model.

Side effects that must happen once (writing files, printing, pushing) sit behind
`accelerator.is_main_process` in this module only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from functools import partial
from pathlib import Path

import torch

from .cache import prepare_images
from .card import write_model_card
from .checkpoints import TrainingProgress, check_identity, find_checkpoint, load_checkpoint, save_checkpoint
from .config import FinetuneConfig
from .data import load_image_data
from .engine import ResumePoint, evaluate, train_one_epoch
from .errors import TrainingStopped, UserError
from .files import write_json
from .freezing import backbone_parameters, count_parameters, frozen_batchnorms, parameters_to_freeze, set_requires_grad
from .guard import PREEMPTED, StopGuard, leave_together, main_process_first
from .hardware import Precision, cpu_model, machine_precision
from .hub import check_push_possible, push_to_hub
from .loaders import create_dataloaders, create_normalize
from .model import create_classifier, save_classifier, unwrap
from .optim import create_optimizer, create_param_groups, create_scheduler, describe_param_groups
from .report import library_versions, plot_training_curves, summary_lines
from .reuse import reuse_classifier_rows
from .rng import restore_rng_state

logger = logging.getLogger(__name__)


def create_accelerator(config: FinetuneConfig, precision: Precision):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration

    report_to = [name.strip() for name in config.report_to.split(",") if name.strip() not in ("", "none")]
    # Launched by torch.distributed.run without a GPU, Accelerate only picks gloo when told it runs on CPU.
    multi_process_cpu = int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=multi_process_cpu,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        dynamo_backend="inductor" if config.compile else None,
        mixed_precision=precision.mixed_precision,
        log_with=report_to or None,
        project_config=ProjectConfiguration(project_dir=config.output_dir, logging_dir=config.output_dir),
        # The sampler's shuffle order then depends only on (seed, epoch): reproducible and resumable.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        # We step the schedule once per optimizer update ourselves (see engine.train_one_epoch).
        step_scheduler_with_optimizer=False,
        # During a head warm-up the backbone gets no gradient; DDP must then not wait for one.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.freeze_epochs > 0)],
    )
    # Accelerate drops a tracker whose package is missing with only a warning: refuse instead.
    active = {str(getattr(tracker, "value", tracker)) for tracker in accelerator.log_with}
    missing = [name for name in report_to if name not in active]
    if missing:
        raise UserError(f"--report-to {','.join(missing)}: tracker not available; pip install {' '.join(missing)}")
    return accelerator


def per_device_batch_size(config: FinetuneConfig, num_processes: int) -> int:
    """--batch-size is global: split it over processes and accumulation steps, exactly."""
    shares = num_processes * config.gradient_accumulation_steps
    if config.batch_size % shares:
        raise UserError(f"--batch-size {config.batch_size} is not divisible by {num_processes} process(es) x "
                        f"{config.gradient_accumulation_steps} accumulation step(s); pick a multiple of {shares}")
    return config.batch_size // shares


def finetune(config: FinetuneConfig) -> dict:
    """Fine-tune, save the model and metrics in config.output_dir, and return the final metrics."""
    from accelerate.utils import set_seed

    config.validate()
    if config.push_to_hub:
        check_push_possible(config.push_to_hub)  # a missing token fails now, not after hours of training
    precision = machine_precision(config.mixed_precision)
    accelerator = create_accelerator(config, precision)
    if accelerator.is_main_process and precision.slow_warning:
        logger.warning(precision.slow_warning)
    output_dir = Path(config.output_dir)
    batch_per_device = per_device_batch_size(config, accelerator.num_processes)
    set_seed(config.seed)

    # One process downloads and builds the datasets cache; the others then load it.
    data = main_process_first(accelerator, partial(load_image_data, config))
    model, source = create_classifier(config.model, data.label_names, config.pretrained, config.pretrained_path,
                                      config.img_size)
    reused_rows = (reuse_classifier_rows(model, source, data.label_names, config.label_map)
                   if config.reuse_classifier and source.pretrained else [])
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data_fingerprints = data.train._fingerprint, data.eval._fingerprint  # of the files, cached or not
    # One process decodes every image once; the others load its result.
    data = main_process_first(accelerator, partial(prepare_images, data, model, config.cache, config.max_bad_fraction,
                                                   report=accelerator.is_main_process))
    train_loader, eval_loader = create_dataloaders(data, model, batch_per_device, config.num_workers,
                                                   accelerator.num_processes, config.seed)
    normalize = create_normalize(model)
    frozen = parameters_to_freeze(model, config.freeze, config.freeze_fraction)
    set_requires_grad(model, frozen, False)  # before the optimizer: frozen parameters are not in it
    optimizer = create_optimizer(create_param_groups(model, config), config)
    # Head warm-up: the backbone is in the optimizer but gets no gradient until its epochs are over.
    warmup_frozen = backbone_parameters(model) - frozen if config.freeze_epochs else set()
    trainable, total = count_parameters(model)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    updates_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    scheduler = accelerator.prepare(create_scheduler(optimizer, config, updates_per_epoch * config.epochs))
    identity = {"model": config.model, "label_names": data.label_names, "train_data": data_fingerprints[0],
                "eval_data": data_fingerprints[1], "num_processes": accelerator.num_processes,
                "batch_size": config.batch_size, "gradient_accumulation_steps": config.gradient_accumulation_steps}
    progress, resume_point = TrainingProgress(), None
    checkpoint = find_checkpoint(output_dir, config.resume)
    if checkpoint is not None:
        check_identity(checkpoint, identity)
        rng_state = load_checkpoint(accelerator, checkpoint, model, optimizer, scheduler, progress)
        if progress.step:  # interrupted mid-epoch: the RNG state is restored once that epoch's batches flow
            resume_point = ResumePoint(progress.step, progress.partial["sums"], rng_state)
        else:
            restore_rng_state(rng_state)
        accelerator.print(f"resumed from {checkpoint}: {progress.epoch} epoch(s) and {progress.step} batch(es) done")

    run_config = {
        "config": config.to_dict(), "command": sys.argv, "source": _describe_source(source),
        "data": {"name": data.name, "eval_split": data.eval_split, "train_size": len(data.train),
                 "eval_size": len(data.eval)},
        "label_names": data.label_names, "label_matches": reused_rows, "param_groups": describe_param_groups(optimizer),
        "num_processes": accelerator.num_processes, "per_device_batch_size": batch_per_device,
        "mixed_precision": precision.mixed_precision, "mixed_precision_reason": precision.reason,
        "cpu": cpu_model(), "versions": library_versions(),
        "frozen": {"groups": config.freeze, "fraction": config.freeze_fraction, "num_params": total - trainable,
                   "head_warmup_epochs": config.freeze_epochs, "batchnorm_frozen": config.freeze_bn},
        "trainable_params": trainable, "total_params": total, "bad_files": data.bad_files,
    }
    finished = progress.epoch >= config.epochs and (output_dir / "metrics.json").is_file()
    if accelerator.is_main_process and not finished:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(output_dir / "run_config.json", run_config)
        accelerator.print(f"{data.name}: {len(data.train)} train / {len(data.eval)} {data.eval_split} images, "
                          f"classes {data.label_names}; {config.model}: "
                          + ", ".join(f"{g['name']} lr {g['lr']:g}" for g in run_config["param_groups"]))
        accelerator.print(f"trainable parameters: {trainable:,} of {total:,}; precision {precision.describe()}")
    accelerator.init_trackers("hf_finetune", config={k: v for k, v in config.to_dict().items() if v is not None})

    guard = StopGuard()
    try:
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            train_loader.set_epoch(epoch)
            warming_up = epoch <= config.freeze_epochs
            set_requires_grad(unwrap(model), warmup_frozen, not warming_up)
            if config.freeze_epochs and epoch <= config.freeze_epochs + 1:
                accelerator.print(f"epoch {epoch}: " + ("head only, backbone frozen" if warming_up
                                                        else "backbone unfrozen"))
            norms = frozen_batchnorms(unwrap(model), all_of_them=config.freeze_bn)
            train = train_one_epoch(model, train_loader, normalize, optimizer, scheduler, accelerator, epoch, guard,
                                    norms, resume_point)
            resume_point = None
            if train.stopped_at_step is not None:
                progress.step, progress.partial = train.stopped_at_step, {"sums": train.sums}
                _stop(accelerator, output_dir, model, optimizer, scheduler, progress, identity, config)
            evaluation = evaluate(model, eval_loader, normalize, accelerator)
            row = {"epoch": epoch, "train_loss": train.loss, "train_acc": train.accuracy,
                   "eval_loss": evaluation.loss, "eval_acc": evaluation.accuracy, "train_count": train.count,
                   "eval_count": evaluation.count, "examples_per_sec": train.examples_per_sec,
                   "epoch_seconds": train.seconds + evaluation.seconds,
                   "lr": {group["name"]: group["lr"] for group in optimizer.param_groups}}
            progress.epoch, progress.step, progress.partial = epoch, 0, {}
            progress.history = progress.history + [row]
            accelerator.log({k: v for k, v in row.items() if k != "lr"}, step=epoch)
            accelerator.print(f"epoch {epoch}: loss {train.loss:.3f}, train acc {train.accuracy:.3f}, "
                              f"test acc {evaluation.accuracy:.3f} ({evaluation.count} eval images)")
            save_checkpoint(accelerator, output_dir, model, optimizer, scheduler, progress, identity,
                            config.keep_checkpoints)
            if epoch < config.epochs and guard.check(accelerator) == PREEMPTED:
                _stop(accelerator, output_dir, model, optimizer, scheduler, progress, identity, config, save=False)
    finally:
        guard.close()
    metrics = _finish(accelerator, config, output_dir, model, progress, finished, len(data.bad_files))
    leave_together(accelerator)
    accelerator.end_training()
    if accelerator.is_main_process and config.push_to_hub:  # needs no other process: they need not wait
        _push_once(accelerator, output_dir, config)
    return metrics


def _stop(accelerator, output_dir, model, optimizer, scheduler, progress, identity, config, save=True):
    if save:
        save_checkpoint(accelerator, output_dir, model, optimizer, scheduler, progress, identity,
                        config.keep_checkpoints)
    accelerator.end_training()
    raise TrainingStopped(f"stopped by SIGTERM after {progress.epoch} epoch(s) and {progress.step} batch(es); "
                          "checkpoint saved: run the same command again to resume")


def _finish(accelerator, config: FinetuneConfig, output_dir: Path, model, progress, finished: bool,
            bad_files: int) -> dict:
    """Save the model, metrics, curves and card, unless an earlier run of this command did."""
    from accelerate.utils import gather_object

    if finished:
        accelerator.print(f"{output_dir} already holds this finished run: nothing to train")
        metrics = json.loads((output_dir / "metrics.json").read_text())
    else:
        history = progress.history
        train_seconds = sum(row["train_count"] / row["examples_per_sec"] for row in history)
        final = {**history[-1], "examples_per_sec": sum(row["train_count"] for row in history) / train_seconds,
                 "total_seconds": sum(row["epoch_seconds"] for row in history)}
        device = accelerator.device
        devices = gather_object([device.type if device.type == "cpu" else str(device)])
        metrics = {"history": history, "final": final, "devices": devices, "num_processes": accelerator.num_processes,
                   "bad_files": bad_files}
    if accelerator.is_main_process:
        if not finished:
            save_classifier(unwrap(model), output_dir)
            write_json(output_dir / "metrics.json", metrics)
            plot_training_curves(metrics["history"], output_dir / "training_curves.png")
            write_model_card(output_dir)
        for line in summary_lines(metrics["final"], metrics["devices"]):
            accelerator.print(line)
    return metrics


def _push_once(accelerator, output_dir: Path, config: FinetuneConfig) -> None:
    """Push, unless this exact model already went to this repo (a re-run pushes nothing twice)."""
    record_path = output_dir / "push.json"
    model_digest = hashlib.sha256((output_dir / "model.safetensors").read_bytes()).hexdigest()
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get(config.push_to_hub) == model_digest:
        accelerator.print(f"already pushed to {config.push_to_hub}: nothing to push")
        return
    accelerator.print(f"pushed: {push_to_hub(output_dir, config.push_to_hub, private=not config.hub_public)}")
    write_json(record_path, {**record, config.push_to_hub: model_digest})


def _describe_source(source) -> dict:
    return {"name": source.name, "architecture": source.architecture, "pretrained": source.pretrained,
            "hub_id": source.hub_id, "tag": source.tag, "license": source.license}
