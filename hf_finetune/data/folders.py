"""Class-per-folder trees: which folders are splits and classes (hidden and empty ones are neither)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from hf_finetune.config import EVAL_SPLIT_NAMES
from hf_finetune.errors import UserError

logger = logging.getLogger(__name__)

TEST_SPLIT = "test"
# The extensions datasets' imagefolder indexes; used to tell an empty class folder from a real one.
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def visible_dirs(folder: Path) -> list[Path]:
    # Hidden and special folders (.git, __MACOSX) are never classes or splits.
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") for p in folder.rglob("*"))


def find_splits(root: Path, train_split: str = "train",
                eval_split: Optional[str] = None) -> tuple[Path, Optional[Path]]:
    """Return (train folder, eval folder or None) of a class-per-folder tree."""
    if not root.is_dir():
        raise UserError(f"--data-dir {root}: no such folder")
    subdirs = {p.name: p for p in visible_dirs(root)}
    if train_split not in subdirs:
        if eval_split or any(name in subdirs for name in EVAL_SPLIT_NAMES):
            raise UserError(f"--data-dir {root} has no '{train_split}' folder; found {', '.join(subdirs)} "
                            "(name the training split with --train-split)")
        return root, None  # the folder itself is the class tree; eval will be a holdout
    if eval_split is not None:
        if eval_split not in subdirs:
            raise UserError(f"--eval-split {eval_split}: no such folder in {root}; found {', '.join(subdirs)}")
        return subdirs[train_split], subdirs[eval_split]
    found = next((subdirs[name] for name in EVAL_SPLIT_NAMES if name in subdirs), None)
    return subdirs[train_split], found


def test_split_name(split_names, eval_name: Optional[str]) -> Optional[str]:
    """"test" when the data has it beside another eval split (val, validation, valid): that one selects the
    epoch and the test split, untouched by the selection, scores the selected model."""
    return TEST_SPLIT if eval_name not in (None, TEST_SPLIT) and TEST_SPLIT in split_names else None


def find_classes(split_dir: Path) -> list[str]:
    """Class folder names that hold at least one image; warns about (and drops) empty ones."""
    classes, empty = [], []
    for folder in visible_dirs(split_dir):
        (classes if has_images(folder) else empty).append(folder.name)
    if empty:
        logger.warning("ignoring class folder(s) without images in %s: %s", split_dir, ", ".join(empty))
    if len(classes) < 2:
        raise UserError(f"{split_dir} has {len(classes)} class folder(s) with images "
                        f"({', '.join(classes) or 'none'}); a classifier needs at least two: "
                        "lay out the data as DIR/train/<class>/*.jpg")
    return classes
