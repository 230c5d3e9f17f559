"""Finished runs for the card, push, predict and export tests: real runs of scripts/finetune.py on generated
photos (a tiny timm model from scratch, 2 epochs, fp32 so that every CPU writes the same kind of run). Each
distinct run trains once per test session; every test gets its own copy of the output folder."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from conftest import HERMETIC_ROOT, make_image_folder, run_script

LABELS = ["hot dog", "not_hotdog", "taco|burrito"]  # a space and a `|` exercise the label table
# The card shows the command with local paths cut to their last component: `tiny` and `run`.
TRAINING_ARGS = ("--epochs", "2", "--batch-size", "8", "--recipe", "d2l", "--mixed-precision", "no")
_TRAINED: dict[tuple, Path] = {}


def make_finished_run(output_dir: Path, model_name: str = "test_resnet", labels=LABELS, seed: int = 0) -> Path:
    """Copy the finished run of `model_name` (no pretrained weights) on a folder of `labels` into output_dir."""
    key = (model_name, tuple(labels), seed)
    if key not in _TRAINED:
        workdir = Path(tempfile.mkdtemp(dir=HERMETIC_ROOT, prefix="finished-run-"))
        photos = make_image_folder(workdir / "tiny", classes=tuple(labels))
        _TRAINED[key] = train_run(workdir / "run", "--model", model_name, "--no-pretrained", "--data-dir", photos,
                                  "--seed", seed)
    shutil.copytree(_TRAINED[key], output_dir, dirs_exist_ok=True)
    return output_dir


def train_run(output_dir: Path, *args, env=None) -> Path:
    """scripts/finetune.py with TRAINING_ARGS and `args` (later flags win), into output_dir."""
    run_script("finetune.py", *TRAINING_ARGS, *args, "--output-dir", output_dir, env=env)
    return output_dir
