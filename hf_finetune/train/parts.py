"""Everything a run trains with, built from the config: Accelerator, data, model, optimizer, schedule, loaders.

`create_training_parts` is the run's set-up, top to bottom; what it builds travels as one `TrainingParts`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch

from hf_finetune.data.cache import data_fingerprint, prepare_images
from hf_finetune.config import FinetuneConfig, RunFacts, resolve_config
from hf_finetune.data.sources import ImageData, load_image_data
from hf_finetune.model.ema import create_ema
from hf_finetune.errors import UserError
from hf_finetune.model.freezing import backbone_parameters, count_parameters, parameters_to_freeze, set_requires_grad
from hf_finetune.train.identity import run_identity
from hf_finetune.train.guard import node_main_first
from hf_finetune.hardware import cpu_only_launch, machine_precision
from hf_finetune.data.images import ImageSettings
from hf_finetune.data.loaders import (Normalize, create_dataloaders, create_eval_loader, create_normalize,
                                      create_transforms, default_num_workers, leave_sigterm_to_the_main_process)
from hf_finetune.data.stream_loader import StreamLoader, create_stream_loader, round_batches
from hf_finetune.model.create import SourceModel, create_classifier
from hf_finetune.tasks import Task, create_task
from hf_finetune.model.optim import create_optimizer, create_param_groups, create_scheduler
from hf_finetune.model.reuse import reuse_classifier_rows


@dataclass
class TrainingParts:
    config: FinetuneConfig
    accelerator: "accelerate.Accelerator"  # noqa: F821
    data: ImageData
    source: SourceModel
    model: torch.nn.Module  # prepared: wrapped in DDP with several processes
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: torch.utils.data.DataLoader
    eval_loader: torch.utils.data.DataLoader
    normalize: Normalize  # the loaders' uint8 batch -> model input, on its device
    per_device_batch_size: int
    identity: dict  # what a checkpoint must have been made with to be resumed (identity.check_identity)
    parameter_counts: tuple[int, int]  # (trainable, total); the head warm-up's temporary freeze not counted
    reused_rows: list = field(default_factory=list)  # head rows copied from the source classifier
    warmup_frozen: set = field(default_factory=set)  # backbone parameters frozen during the head warm-up
    ema: object = None  # timm ModelEmaV3 with --model-ema (ema.py)
    test_loader: object = None  # the test split's, when the data has one beside its eval split (data/sources.py)
    task: Task = None  # targets, loss, metrics, decisions (tasks/); with the run's loss options


def create_accelerator(config: FinetuneConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    report_to = [name.strip() for name in config.report_to.split(",") if name.strip() not in ("", "none")]
    accelerator = Accelerator(
        cpu=cpu_only_launch(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        dynamo_backend="inductor" if config.compile else None,
        mixed_precision=config.precision.mixed_precision,
        log_with=report_to or None,
        project_config=ProjectConfiguration(project_dir=config.output_dir, logging_dir=config.output_dir),
        # No DataLoaderConfiguration: the shuffle order and augmentation come from sampling.py's seeded
        # sampler, which Accelerate leaves in place (it replaces only a plain RandomSampler).
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


def create_training_stream(data: ImageData, model: torch.nn.Module, config: FinetuneConfig, batch_per_device: int,
                           accelerator, encode_label) -> StreamLoader:
    """This process's loader of the streamed train split: the train transform of the map-style loaders, rounds of
    --checkpoint-every steps up to --max-steps."""
    settings = ImageSettings.from_model(model)
    return create_stream_loader(
        data.train, create_transforms(settings, config.auto_augment)[0], settings, batch_per_device,
        config.num_workers, config.seed, config.shuffle_buffer, config.max_bad_fraction, accelerator.process_index,
        accelerator.num_processes, accelerator.device,
        round_batches(config.max_steps, config.checkpoint_every, config.gradient_accumulation_steps),
        encode_label, leave_sigterm_to_the_main_process)


def create_training_parts(options: FinetuneConfig) -> TrainingParts:
    """Load the data and create the model, resolve the options into the run's record (`config.resolve_config`,
    once both are known), then build everything else from that record."""
    from accelerate import PartialState
    from accelerate.utils import set_seed

    processes = PartialState(cpu=cpu_only_launch())  # the process group, before the Accelerator exists
    set_seed(options.seed)
    # Once per machine (its local main process first): the download and the datasets cache are on its disk.
    data = node_main_first(processes, partial(load_image_data, options))
    model, source = create_classifier(options.model, data.label_names, options.pretrained, options.pretrained_path,
                                      options.img_size, options.drop_path)
    fingerprints = data.stream_fingerprint or data_fingerprint(data.train), data_fingerprint(data.eval)  # of the files
    # The decode-once cache, likewise per machine; the main process alone reports bad files.
    data = node_main_first(processes, partial(prepare_images, data, model, options.cache, options.max_bad_fraction,
                                              report=processes.is_main_process))
    plain_task = create_task(data.task, data.label_names)  # its defaults for the options left unset
    config = resolve_config(options, RunFacts(
        train_size=data.train_size, num_processes=processes.num_processes, pretrained=source.pretrained,
        layer_groups=hasattr(model, "group_matcher"), precision=machine_precision(options.mixed_precision),
        default_num_workers=default_num_workers(processes.num_processes),
        default_select_metric=plain_task.default_select_metric, default_loss=plain_task.default_loss))
    # A stream's labels cannot be counted (--class-weights is refused with --streaming).
    task = create_task(data.task, data.label_names, config, None if data.streaming else data.train["label"])
    task.check_select_metric(config.select_metric)
    accelerator = create_accelerator(config)
    batch_per_device = per_device_batch_size(config, accelerator.num_processes)
    reused_rows = (reuse_classifier_rows(model, source, data.label_names, config.label_map)
                   if config.reuse_classifier and source.pretrained else [])
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if data.streaming:  # the stream's own loader, per rank (data/stream_loader.py); the eval split stays map-style
        train_loader = create_training_stream(data, model, config, batch_per_device, accelerator, task.label_encoder)
        eval_loader = create_eval_loader(data.eval, model, batch_per_device, config.num_workers,
                                         accelerator.num_processes, task.label_encoder)
    else:
        train_loader, eval_loader = create_dataloaders(data, model, batch_per_device, config.num_workers,
                                                       accelerator.num_processes, config.seed, config.auto_augment,
                                                       task.label_encoder)
    normalize = create_normalize(model)
    test_loader = (None if data.test is None else create_eval_loader(data.test, model, batch_per_device,
                                                                     config.num_workers, accelerator.num_processes,
                                                                     task.label_encoder))
    frozen = parameters_to_freeze(model, config.freeze, config.freeze_fraction)
    set_requires_grad(model, frozen, False)  # before the optimizer: frozen parameters are not in it
    optimizer = create_optimizer(create_param_groups(model, config), config)
    # Head warm-up: the backbone is in the optimizer but gets no gradient until its epochs are over.
    warmup_frozen = backbone_parameters(model) - frozen if config.freeze_epochs else set()
    counts = count_parameters(model)
    if data.streaming:
        model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
        total_updates = config.max_steps
    else:
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
        total_updates = math.ceil(len(train_loader) / config.gradient_accumulation_steps) * config.epochs
    test_loader = accelerator.prepare(test_loader) if test_loader is not None else None
    scheduler = accelerator.prepare(create_scheduler(optimizer, config, total_updates))
    identity = run_identity(config, data.label_names, fingerprints, accelerator.num_processes)
    return TrainingParts(config, accelerator, data, source, model, optimizer, scheduler, train_loader,
                         eval_loader, normalize, batch_per_device, identity, counts, reused_rows, warmup_frozen,
                         create_ema(model, config), test_loader, task)
