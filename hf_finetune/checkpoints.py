"""Crash-consistent checkpoints that load without unpickling code, and exact resume.

Hand-written rather than `Accelerator.save_state` because that writes in place (a kill mid-save
leaves a half folder that auto-resume then picks), its retention deletes the old checkpoint before
the new one exists, and it loads custom state and RNG pickles with `weights_only=False`. Here:
  * weights are safetensors; everything else is tensors/numbers loaded with `weights_only=True`;
  * each checkpoint is written into a staging folder, fsynced, and committed by one rename on the
    main process between barriers; old ones are removed only after that;
  * resume takes the newest checkpoint that is complete and says loudly which broken ones it skips.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch

from .errors import UserError, first_line
from .model import unwrap
from .rng import rng_state

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = re.compile(r"^epoch-(\d+)-step-(\d+)$")
STATE_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "progress.json")


class TrainingProgress:
    """Where training stands: completed epochs, batches done in the next one, and the metrics so far."""

    def __init__(self):
        self.epoch = 0  # completed epochs
        self.step = 0  # batches (micro-steps) of epoch + 1 already trained, for a mid-epoch resume
        self.history: list[dict] = []
        self.partial: dict = {}  # train loss/correct/count sums of the interrupted epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "history": self.history, "partial": self.partial}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history, self.partial = list(state["history"]), dict(state.get("partial") or {})


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


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def save_checkpoint(accelerator, output_dir: Path, model, optimizer, scheduler, progress: TrainingProgress,
                    identity: dict, keep: int) -> Path:
    """Write a checkpoint of the current state; every process calls this at the same step."""
    from safetensors.torch import save_file

    final = checkpoints_dir(output_dir) / checkpoint_name(progress.epoch, progress.step)
    staging = final.with_name(".staging-" + final.name)
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), staging / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
        save_file(state, staging / "model.safetensors")
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), staging / "scaler.pt")
        (staging / "identity.json").write_text(json.dumps(identity, indent=2))
        (staging / "progress.json").write_text(json.dumps(progress.state_dict(), indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync_tree(staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        _fsync_tree(final.parent)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


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


def check_identity(path: Path, identity: dict) -> None:
    """Refuse to resume a checkpoint made with other classes, data, model or process layout."""
    saved = json.loads((path / "identity.json").read_text())
    differences = [f"{key}: checkpoint {saved.get(key)!r}, now {value!r}" for key, value in identity.items()
                   if saved.get(key) != value]
    if differences:
        raise UserError(f"cannot resume {path}: it was made with other settings ({'; '.join(differences)}); "
                        "use the original settings, another --output-dir, or --resume none to start over")


def load_checkpoint(accelerator, path: Path, model, optimizer, scheduler, progress: TrainingProgress) -> dict:
    """Load a checkpoint into the prepared objects; returns this process's RNG state to restore."""
    from safetensors.torch import load_file

    unwrap(model).load_state_dict(load_file(path / "model.safetensors"))
    wanted = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    optimizer.load_state_dict(_load_tensors(path / "optimizer.pt"))
    restored = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    if not all(math.isclose(asked, kept) for asked, kept in zip(wanted, restored)):
        # As the HF Trainer does, a resumed run keeps its optimizer and schedule: say so rather than ignore it.
        logger.warning("resuming from %s with its own learning rates %s, not the %s this command asks for; "
                       "--resume none starts over with them", path.name, _rates(restored), _rates(wanted))
    scheduler.load_state_dict(_load_tensors(path / "scheduler.pt"))
    if accelerator.scaler is not None and (path / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(_load_tensors(path / "scaler.pt"))
    progress.load_state_dict(json.loads((path / "progress.json").read_text()))
    return _load_tensors(path / f"rng-{accelerator.process_index}.pt")


def _rates(rates: list[float]) -> str:
    return "/".join(f"{rate:g}" for rate in rates)


def _load_tensors(path: Path):
    """torch.load that only accepts tensors and plain data: a crafted pickle cannot run code here."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"refusing to load {path}: not plain tensor data ({first_line(error)[:160]}); delete that "
                        "checkpoint folder or pass --resume none") from None
