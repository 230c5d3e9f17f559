"""Where a run starts: afresh, or from the checkpoint the main process finds, checks and sends to every process.

Only the main process looks at the output folder (on node 0 of a multi-node run; the other machines need not
see it): it finds the newest complete checkpoint, refuses one made with other settings, and broadcasts the
whole state, so every process resumes from the same weights, optimizer, schedule and progress, and from its
own RNG state and metric sums of an interrupted epoch.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from hf_finetune.data.stream_loader import StreamLoader
from hf_finetune.train.checkpoints import TrainingProgress, checkpoints_dir, find_checkpoint, read_checkpoint
from hf_finetune.train.engine import ResumePoint
from hf_finetune.errors import UserError
from hf_finetune.train.guard import leave_together
from hf_finetune.train.identity import check_identity
from hf_finetune.model.create import unwrap
from hf_finetune.train.rng import restore_rng_state
from hf_finetune.train.selection import carry_best_weights

if TYPE_CHECKING:
    from hf_finetune.train.parts import TrainingParts

logger = logging.getLogger(__name__)

# What a finished run leaves in its output folder besides checkpoints/, moved aside with them by --resume none:
# its results, its push record and its ONNX export (serve.onnx_model.EXPORT_FILES, of these weights only).
RUN_RESULTS = ("config.json", "model.safetensors", "README.md", "metrics.json", "training_curves.png",
               "confusion_matrix.png", "calibration.png", "run_config.json", "push.json", "model.onnx",
               "preprocessor.json", "model.int8.onnx", "model.int8.json")


def resume_training(parts: TrainingParts) -> tuple[TrainingProgress, Optional[ResumePoint]]:
    """The progress to start from, and where an interrupted epoch stopped (None: start at an epoch boundary)."""
    from accelerate.utils import broadcast_object_list

    accelerator = parts.accelerator
    start = [_find_start(parts) if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(start)
    start = start[0]
    if "error" in start:
        leave_together(accelerator)
        raise UserError(start["error"])
    progress = TrainingProgress()
    checkpoint = start.get("checkpoint")
    if checkpoint is None:
        return progress, None
    rng_state = apply_checkpoint(parts, checkpoint, progress)
    progress.already_finished = start["finished"]
    accelerator.print(f"resumed from {checkpoint['path']}: {progress.epoch} epoch(s) and {progress.step} "
                      "batch(es) done")
    if not progress.step:
        restore_rng_state(rng_state)
        return progress, None
    if len(progress.partial_sums) != accelerator.num_processes:
        leave_together(accelerator)
        raise UserError(f"{checkpoint['path']} was saved mid-epoch by an older hf_finetune without every process's "
                        "metric sums; resume from an epoch's checkpoint (--resume PATH) or start over (--resume none)")
    # Interrupted mid-epoch: the RNG state is restored once that epoch's batches flow (engine.train_one_epoch).
    return progress, ResumePoint(progress.step, progress.partial_sums[accelerator.process_index], rng_state)


def _find_start(parts: TrainingParts) -> dict:
    """On the main process: {"checkpoint": read checkpoint or None, "finished": bool} or {"error": message}."""
    config = parts.config
    output_dir = Path(config.output_dir)
    try:
        if config.resume == "none":
            aside = move_previous_run_aside(output_dir)
            if aside is not None:
                logger.warning("--resume none: moved the previous run's checkpoints and results to %s", aside)
        path = find_checkpoint(output_dir, config.resume)
        if path is None:
            return {"checkpoint": None}
        check_identity(path, parts.identity)
        checkpoint = read_checkpoint(path)
        if not config.save_last:  # the same as the checkpoint's run: its identity says so
            carry_best_weights(path, checkpoint["progress"], output_dir)
    except UserError as error:
        return {"error": str(error)}
    done = checkpoint["progress"]["epoch"] >= config.epochs or checkpoint["progress"].get("stopped_early")
    finished = done and (output_dir / "metrics.json").is_file()
    return {"checkpoint": checkpoint, "finished": finished}


def move_previous_run_aside(output_dir: Path) -> Optional[Path]:
    """Move an earlier run's checkpoints and results into OUTPUT_DIR/previous-run-<UTC time>/, so a fresh start
    owns the folder: its checkpoints are the only ones retention ranks and `--resume auto` finds. Nothing is
    deleted. Returns where they went, or None when there was nothing to move."""
    present = [path for path in (checkpoints_dir(output_dir), *(output_dir / name for name in RUN_RESULTS))
               if path.exists()]
    if not present:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside, suffix = output_dir / f"previous-run-{stamp}", 1
    while aside.exists():
        suffix += 1
        aside = output_dir / f"previous-run-{stamp}-{suffix}"
    aside.mkdir()
    for path in present:
        os.replace(path, aside / path.name)
    return aside


def apply_checkpoint(parts: TrainingParts, checkpoint: dict, progress: TrainingProgress) -> dict:
    """Load a read checkpoint into the prepared objects; returns this process's RNG state to restore."""
    unwrap(parts.model).load_state_dict(checkpoint["model"])
    if getattr(parts, "ema", None) is not None:  # its presence is part of the checkpoint's identity
        parts.ema.module.load_state_dict(checkpoint["ema"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])  # the same options: the same parameter groups
    parts.scheduler.load_state_dict(checkpoint["scheduler"])
    if parts.accelerator.scaler is not None and checkpoint["scaler"] is not None:
        parts.accelerator.scaler.load_state_dict(checkpoint["scaler"])
    progress.load_state_dict(checkpoint["progress"])
    if isinstance(parts.train_loader, StreamLoader):  # its identity says --streaming, so it has every rank's state
        parts.train_loader.load_state_dict(checkpoint["loader"][parts.accelerator.process_index])
    return checkpoint["rng"][parts.accelerator.process_index]


def check_output_dir_is_ours(config) -> None:
    """Refuse a run into a folder holding files of the names a run writes (`--output-dir .` in a repository: its
    README.md, config.json) that no earlier run wrote there, before writing over them. Every process checks the
    same folder before any of them writes (the first write follows the processes' first meeting)."""
    output_dir = Path(config.output_dir)
    if config.resume == "none" or (output_dir / "run_config.json").is_file() or checkpoints_dir(output_dir).is_dir():
        return  # --resume none moves them aside; a run_config.json or checkpoints/: an earlier run's folder
    foreign = [name for name in RUN_RESULTS if (output_dir / name).exists()]
    if foreign:
        raise UserError(f"{output_dir} holds {', '.join(foreign)}, which no hf_finetune run wrote there: choose an "
                        f"empty --output-dir, or pass --resume none to move them aside into "
                        f"{output_dir / 'previous-run-<time>'}/")
