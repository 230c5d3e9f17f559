"""The run, top to bottom: data, model, optimizer, Accelerate loop, checkpoints, saved model.

Side effects that must happen once (writing files, printing, pushing) sit behind
`accelerator.is_main_process` in this module only.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import torch

from .cache import prepare_images
from .card import write_model_card
from .checkpoints import TrainingProgress, resolve_checkpoint, save_checkpoint
from .config import FinetuneConfig
from .data import load_image_data
from .engine import evaluate, train_one_epoch
from .errors import UserError
from .hub import check_push_possible, push_to_hub
from .layers import (backbone_parameters, count_parameters, frozen_batchnorms, parameters_to_freeze,
                     set_requires_grad)
from .loaders import create_dataloaders
from .model import create_classifier, save_classifier
from .optim import create_optimizer, create_param_groups, create_scheduler, describe_param_groups
from .reuse import reuse_classifier_rows
from .report import library_versions, plot_training_curves, summary_lines, write_json

logger = logging.getLogger(__name__)


def create_accelerator(config: FinetuneConfig):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration

    report_to = [name.strip() for name in config.report_to.split(",") if name.strip() not in ("", "none")]
    # Launched by torch.distributed.run without a GPU, Accelerate only picks gloo when told it runs on CPU.
    multi_process_cpu = int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=multi_process_cpu,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=report_to or None,
        project_config=ProjectConfiguration(project_dir=config.output_dir, logging_dir=config.output_dir),
        # The sampler's shuffle order then depends only on (seed, epoch): reproducible and resumable.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
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
    from accelerate.utils import gather_object, set_seed

    config.validate()
    if config.push_to_hub:
        check_push_possible(config.push_to_hub)  # a missing token fails now, not after hours of training
    accelerator = create_accelerator(config)
    output_dir = Path(config.output_dir)
    batch_per_device = per_device_batch_size(config, accelerator.num_processes)
    set_seed(config.seed)

    with accelerator.main_process_first():  # one process downloads and builds the datasets cache
        data = load_image_data(config)
    model, source = create_classifier(config.model, data.label_names, config.pretrained, config.pretrained_path,
                                      config.img_size)
    reused_rows = (reuse_classifier_rows(model, source, data.label_names, config.label_map)
                   if config.reuse_classifier and source.pretrained else [])
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    with accelerator.main_process_first():  # one process decodes every image once; the others load its result
        data = prepare_images(data, model, config.cache, config.max_bad_fraction, report=accelerator.is_main_process)
    train_loader, eval_loader = create_dataloaders(data, model, batch_per_device, config.num_workers,
                                                   accelerator.num_processes, config.channels_last)
    frozen = parameters_to_freeze(model, config.freeze, config.freeze_fraction)
    set_requires_grad(model, frozen, False)  # before the optimizer: frozen parameters are not in it
    optimizer = create_optimizer(create_param_groups(model, config), config)
    # Head warm-up: the backbone is in the optimizer but gets no gradient until its epochs are over.
    warmup_frozen = backbone_parameters(model) - frozen if config.freeze_epochs else set()
    trainable, total = count_parameters(model)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    updates_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    scheduler = accelerator.prepare(create_scheduler(optimizer, config, updates_per_epoch * config.epochs))
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)

    checkpoint = resolve_checkpoint(output_dir, config.resume)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"resumed from {checkpoint} after epoch {progress.epoch}")

    run_config = {
        "config": config.to_dict(), "command": sys.argv, "source": _describe_source(source),
        "data": {"name": data.name, "eval_split": data.eval_split, "train_size": len(data.train),
                 "eval_size": len(data.eval)},
        "label_names": data.label_names, "label_matches": reused_rows, "param_groups": describe_param_groups(optimizer),
        "num_processes": accelerator.num_processes, "per_device_batch_size": batch_per_device,
        "mixed_precision": config.mixed_precision, "versions": library_versions(),
        "frozen": {"groups": config.freeze, "fraction": config.freeze_fraction, "num_params": total - trainable,
                   "head_warmup_epochs": config.freeze_epochs, "batchnorm_frozen": config.freeze_bn},
        "trainable_params": trainable, "total_params": total,
    }
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(output_dir / "run_config.json", run_config)
        accelerator.print(f"{data.name}: {len(data.train)} train / {len(data.eval)} {data.eval_split} images, "
                          f"classes {data.label_names}; {config.model}: "
                          + ", ".join(f"{g['name']} lr {g['lr']:g}" for g in run_config["param_groups"]))
        accelerator.print(f"trainable parameters: {trainable:,} of {total:,}")
    accelerator.init_trackers("hf_finetune", config={k: v for k, v in config.to_dict().items() if v is not None})

    for epoch in range(progress.epoch + 1, config.epochs + 1):
        train_loader.set_epoch(epoch)
        warming_up = epoch <= config.freeze_epochs
        set_requires_grad(accelerator.unwrap_model(model), warmup_frozen, not warming_up)
        if config.freeze_epochs and epoch <= config.freeze_epochs + 1:
            accelerator.print(f"epoch {epoch}: " + ("head only, backbone frozen" if warming_up else "backbone unfrozen"))
        norms = frozen_batchnorms(accelerator.unwrap_model(model), all_of_them=config.freeze_bn)
        train = train_one_epoch(model, train_loader, optimizer, scheduler, accelerator, epoch, norms)
        evaluation = evaluate(model, eval_loader, accelerator)
        row = {"epoch": epoch, "train_loss": train.loss, "train_acc": train.accuracy, "eval_loss": evaluation.loss,
               "eval_acc": evaluation.accuracy, "train_count": train.count, "eval_count": evaluation.count,
               "examples_per_sec": train.count / train.seconds, "epoch_seconds": train.seconds + evaluation.seconds,
               "lr": {group["name"]: group["lr"] for group in optimizer.param_groups}}
        progress.epoch, progress.history = epoch, progress.history + [row]
        accelerator.log({k: v for k, v in row.items() if k != "lr"}, step=epoch)
        accelerator.print(f"epoch {epoch}: loss {train.loss:.3f}, train acc {train.accuracy:.3f}, "
                          f"test acc {evaluation.accuracy:.3f} ({evaluation.count} eval images)")
        save_checkpoint(accelerator, output_dir, epoch, config.keep_checkpoints)

    history = progress.history
    train_seconds = sum(row["train_count"] / row["examples_per_sec"] for row in history)
    final = {**history[-1], "examples_per_sec": sum(row["train_count"] for row in history) / train_seconds,
             "total_seconds": sum(row["epoch_seconds"] for row in history)}
    device = accelerator.device
    devices = gather_object([device.type if device.type == "cpu" else str(device)])
    metrics = {"history": history, "final": final, "devices": devices, "num_processes": accelerator.num_processes}
    if accelerator.is_main_process:
        save_classifier(accelerator.unwrap_model(model), output_dir)
        write_json(output_dir / "metrics.json", metrics)
        plot_training_curves(history, output_dir / "training_curves.png")
        write_model_card(output_dir)
        for line in summary_lines(final, devices):
            accelerator.print(line)
        if config.push_to_hub:
            accelerator.print(f"pushed: {push_to_hub(output_dir, config.push_to_hub, private=not config.hub_public)}")
    accelerator.end_training()
    return metrics


def _describe_source(source) -> dict:
    return {"name": source.name, "architecture": source.architecture, "pretrained": source.pretrained,
            "hub_id": source.hub_id, "tag": source.tag, "license": source.license}
