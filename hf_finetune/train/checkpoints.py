"""Crash-consistent checkpoints that load without unpickling code, and exact resume.

Hand-written rather than `Accelerator.save_state` because that writes in place (a kill mid-save
leaves a half folder that auto-resume then picks), its retention deletes the old checkpoint before
the new one exists, and it loads custom state and RNG pickles with `weights_only=False`. Here:
  * weights are safetensors; everything else is tensors/numbers loaded with `weights_only=True`;
  * the main process alone writes (every process sends it its RNG state and metric sums through a
    collective, so nodes need no shared filesystem): into a staging folder, fsynced, committed by one
    rename, and old ones are removed only after that;
  * resume takes the newest checkpoint that is complete and says loudly which broken ones it skips.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from hf_finetune.data.stream_loader import StreamLoader
from hf_finetune.model.ema import ema_state
from hf_finetune.errors import UserError, first_line
from hf_finetune.model.create import unwrap
from hf_finetune.train.rng import rng_state

if TYPE_CHECKING:
    from hf_finetune.train.parts import TrainingParts

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = re.compile(r"^epoch-(\d+)-step-(\d+)$")
STATE_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "progress.json")
LOADER_FILE_PREFIX = "loader-"  # loader-<rank>.pt: with --streaming, where each rank's stream continues
EMA_FILE = "ema.safetensors"  # with --model-ema (its identity then says so, and resume requires it)


class TrainingProgress:
    """Where training stands: completed epochs, batches done in the next one, and the metrics so far."""

    def __init__(self):
        self.epoch = 0  # completed epochs
        self.step = 0  # batches (micro-steps) of epoch + 1 already trained, for a mid-epoch resume
        self.history: list[dict] = []
        # Per process, in rank order: [loss sum, correct, count] of the interrupted epoch's batches so far.
        self.partial_sums: list[list[float]] = []
        # Model selection and early stopping (selection.py), so a resumed run selects and stops as an
        # uninterrupted one: the best epoch, its score, which weights ("trained" or "ema"), and the epochs
        # since it (the patience counter).
        self.best: Optional[dict] = None  # {"epoch", "score", "weights"}
        self.epochs_without_improvement = 0
        self.stopped_early = False
        self.already_finished = False  # not saved: an earlier run of this command saved the final model

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "history": self.history, "partial_sums": self.partial_sums,
                "best": self.best, "epochs_without_improvement": self.epochs_without_improvement,
                "stopped_early": self.stopped_early}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step, self.history = int(state["epoch"]), int(state["step"]), list(state["history"])
        self.best = state.get("best")  # checkpoints before model selection have none of these three
        self.epochs_without_improvement = int(state.get("epochs_without_improvement", 0))
        self.stopped_early = bool(state.get("stopped_early", False))
        # Checkpoints before per-process sums kept the main process's only, under "partial".
        legacy = (state.get("partial") or {}).get("sums")
        self.partial_sums = state.get("partial_sums") or ([legacy] if legacy else [])


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_name(epoch: int, step: int) -> str:
    return f"epoch-{epoch:04d}-step-{step:06d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Committed checkpoint folders, oldest first."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(tuple(map(int, match.groups())), path) for path in folder.iterdir()
             if (match := CHECKPOINT_NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def fsync_tree(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def save_checkpoint(parts: TrainingParts, progress: TrainingProgress,
                    epoch_sums: Optional[list[float]] = None) -> None:
    """Every process calls this at the same step, with its own metric sums when the epoch is unfinished. Each
    sends its RNG state and sums to the main process through a collective, and the main process alone writes:
    no other process needs to see its disk (multi-node without a shared filesystem)."""
    from accelerate.utils import gather_object

    accelerator = parts.accelerator
    # A stream's loader state (where each rank's stream continues) travels the same way.
    loader = parts.train_loader.state_dict() if isinstance(parts.train_loader, StreamLoader) else None
    rank_states = gather_object([{"rng": rng_state(), "sums": epoch_sums, "loader": loader}])  # in rank order
    if accelerator.is_main_process:
        progress.partial_sums = [state["sums"] for state in rank_states] if epoch_sums is not None else []
        _write_checkpoint(parts, progress, [state["rng"] for state in rank_states],
                          [state["loader"] for state in rank_states])
    accelerator.wait_for_everyone()  # nobody goes on, or exits on a SIGTERM, while the main process writes


def _write_checkpoint(parts: TrainingParts, progress: TrainingProgress, rng_states: list[dict],
                      loader_states: list[Optional[dict]]) -> Path:
    from safetensors.torch import save_file

    output_dir, keep = Path(parts.config.output_dir), parts.config.keep_checkpoints
    final = checkpoints_dir(output_dir) / checkpoint_name(progress.epoch, progress.step)
    staging = final.with_name(".staging-" + final.name)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for rank, state in enumerate(rng_states):
        torch.save(state, staging / f"rng-{rank}.pt")
    for rank, state in enumerate(loader_states):
        if state is not None:  # --streaming only: a map-style run's loader is a function of (seed, epoch, step)
            torch.save(state, staging / f"{LOADER_FILE_PREFIX}{rank}.pt")
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(parts.model).state_dict().items()}
    save_file(state, staging / "model.safetensors")
    ema = ema_state(parts.ema)
    if ema is not None:
        save_file(ema, staging / EMA_FILE)
    torch.save(parts.optimizer.state_dict(), staging / "optimizer.pt")
    torch.save(parts.scheduler.state_dict(), staging / "scheduler.pt")
    if parts.accelerator.scaler is not None:
        torch.save(parts.accelerator.scaler.state_dict(), staging / "scaler.pt")
    (staging / "identity.json").write_text(json.dumps(parts.identity, indent=2))
    (staging / "progress.json").write_text(json.dumps(progress.state_dict(), indent=2))
    fsync_tree(staging)
    remove_checkpoint(final)
    os.replace(staging, final)
    fsync_tree(final.parent)
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        remove_checkpoint(old)
    for leftover in final.parent.glob(".deleting-*"):  # of a run killed while it removed one
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def remove_checkpoint(checkpoint: Path) -> None:
    """Delete a checkpoint folder so that a kill at any moment leaves it whole or gone: first a rename out of
    the names `list_checkpoints` knows (atomic), then the slow recursive delete."""
    if checkpoint.exists():
        doomed = checkpoint.with_name(".deleting-" + checkpoint.name)
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(checkpoint, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why `path` is not a complete checkpoint, or None if it is."""
    missing = [name for name in (*STATE_FILES, "identity.json") if not (path / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), framework="pt"):
            pass
        json.loads((path / "progress.json").read_text())
        processes = json.loads((path / "identity.json").read_text())["num_processes"]
        missing = [f"rng-{rank}.pt" for rank in range(processes) if not (path / f"rng-{rank}.pt").is_file()]
        identity = json.loads((path / "identity.json").read_text())
        if identity.get("model_ema") and not (path / EMA_FILE).is_file():
            missing.append(EMA_FILE)
        if identity.get("streaming"):
            missing += [f"{LOADER_FILE_PREFIX}{rank}.pt" for rank in range(processes)
                        if not (path / f"{LOADER_FILE_PREFIX}{rank}.pt").is_file()]
        if missing:
            return f"missing {', '.join(missing)}"
    except Exception as error:  # a torn write shows up as any parse error
        return f"unreadable ({first_line(error)})"
    return None


def find_checkpoint(output_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """The checkpoint to resume from: `auto`/`latest` -> the newest complete one (or None); a path -> it."""
    if resume in (None, "none"):
        return None
    if resume not in ("auto", "latest"):
        path = Path(resume)
        problem = checkpoint_problem(path) if path.is_dir() else "no such folder"
        if problem:
            raise UserError(f"--resume {resume}: not a usable checkpoint ({problem})")
        return path
    for path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("SKIPPING BROKEN CHECKPOINT %s: %s", path, problem)
    return None


def read_checkpoint(path: Path) -> dict:
    """Everything in a checkpoint, as plain data (tensors, numbers), on the main process; `resume.py` sends it
    to the others and each applies it with `apply_checkpoint`."""
    from safetensors.torch import load_file

    processes = json.loads((path / "identity.json").read_text())["num_processes"]
    scaler = path / "scaler.pt"
    ema = path / EMA_FILE
    return {"path": str(path), "model": load_file(path / "model.safetensors"),
            "ema": load_file(ema) if ema.is_file() else None,
            "optimizer": _load_tensors(path / "optimizer.pt"), "scheduler": _load_tensors(path / "scheduler.pt"),
            "scaler": _load_tensors(scaler) if scaler.is_file() else None,
            "progress": json.loads((path / "progress.json").read_text()),
            "rng": [_load_tensors(path / f"rng-{rank}.pt") for rank in range(processes)],
            "loader": [_load_tensors(file) if (file := path / f"{LOADER_FILE_PREFIX}{rank}.pt").is_file() else None
                       for rank in range(processes)]}


def _load_tensors(path: Path):
    """torch.load that only accepts tensors and plain data: a crafted pickle cannot run code here."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"refusing to load {path}: not plain tensor data ({first_line(error)[:160]}); delete that "
                        "checkpoint folder or pass --resume none") from None
