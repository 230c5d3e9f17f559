"""Finished runs for the card, push, predict and export tests: real runs of scripts/finetune.py on generated
photos (a tiny timm model from scratch, 2 epochs, fp32 so that every CPU writes the same kind of run). Each
distinct run trains once per test session; every test gets its own copy of the output folder. Multi-label runs
train on manifests of generated images whose labels are the colour channels they show."""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

from conftest import HERMETIC_ROOT, make_image_folder, run_script

LABELS = ["hot dog", "not_hotdog", "taco|burrito"]  # a space and a `|` exercise the label table
# The card shows the command with local paths cut to their last component: `tiny` and `run`.
TRAINING_ARGS = ("--epochs", "2", "--batch-size", "8", "--recipe", "d2l", "--mixed-precision", "no")
_TRAINED: dict[tuple, Path] = {}
MULTI_LABELS = ("red", "green", "blue")
COMBINATIONS = ("red", "green", "blue", "red green", "green blue", "red blue", "red green blue", "")
MULTI_LABEL_TRAINING = ("--model", "test_resnet", "--no-pretrained", "--epochs", "2", "--batch-size", "8", "--recipe",
                        "d2l", "--mixed-precision", "no")


def make_multi_label_manifests(root: Path, per_split=(16, 8), splits=("train", "val")) -> Path:
    """train.csv / val.csv (and more `splits`) of 40x32 JPEGs that show one bright colour channel per label."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in zip(splits, per_split):
        rows = []
        for index in range(count):
            labels = COMBINATIONS[index % len(COMBINATIONS)].split()
            pixels = rng.normal(40, 20, (32, 40, 3))
            for label in labels:
                pixels[..., MULTI_LABELS.index(label)] += 160
            name = f"{split}/{index}.jpg"
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name, quality=90)
            rows.append((name, " ".join(labels)))
        with open(root / f"{split}.csv", "w", newline="") as file:
            csv.writer(file).writerows([("image", "labels"), *rows])
    return root


def make_finished_multi_label_run(output_dir: Path, *args) -> tuple[Path, Path]:
    """Copy the finished multi-label run (MULTI_LABEL_TRAINING and `args`) on the colour manifests (train, val and
    test splits) into output_dir; return (output_dir, the manifests' folder, shared by the session's runs)."""
    key = ("multi_label", *map(str, args))
    if key not in _TRAINED:
        workdir = Path(tempfile.mkdtemp(dir=HERMETIC_ROOT, prefix="finished-multi-label-"))
        data = make_multi_label_manifests(workdir / "colours", per_split=(16, 8, 8), splits=("train", "val", "test"))
        run_script("finetune.py", *MULTI_LABEL_TRAINING, "--data-dir", data, *args, "--output-dir", workdir / "run")
        _TRAINED[key] = workdir / "run"
    shutil.copytree(_TRAINED[key], output_dir, dirs_exist_ok=True)
    return output_dir, _TRAINED[key].parent / "colours"


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
