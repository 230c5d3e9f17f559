"""Per-epoch checkpoints through `Accelerator.save_state`, committed by one rename.

Accelerate writes a state folder in place and its own retention can delete the old checkpoint
before the new one is complete; here every checkpoint is written under a temporary name and
renamed by the main process once all processes have written their part, so a folder named
`epoch-N` is always complete, and older ones are removed only after that.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from .errors import UserError

logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^epoch-(\d+)$")


class TrainingProgress:
    """Completed epochs and their metrics, saved inside each checkpoint (registered with Accelerate)."""

    def __init__(self):
        self.epoch = 0
        self.history: list[dict] = []

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.history = int(state["epoch"]), list(state["history"])


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Committed checkpoints, oldest first."""
    folder = checkpoints_dir(output_dir)
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))] \
        if folder.is_dir() else []
    return [path for _, path in sorted(found)]


def save_checkpoint(accelerator, output_dir: Path, epoch: int, keep: int) -> Path:
    final = checkpoints_dir(output_dir) / f"epoch-{epoch}"
    staging = checkpoints_dir(output_dir) / f".staging-epoch-{epoch}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_checkpoint(output_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """`--resume latest` -> the newest committed checkpoint (None if there is none yet); a path -> itself."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.warning("--resume latest: no checkpoint in %s yet; starting from scratch",
                           checkpoints_dir(output_dir))
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise UserError(f"--resume {resume}: no such checkpoint folder (or use --resume latest)")
    return path
