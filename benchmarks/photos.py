"""The photos the benchmark reads: hotdog-mini upscaled to realistic sizes, and symlinked copies of a folder."""

from __future__ import annotations

import random
from pathlib import Path

from benchmarks import REPO

HOTDOG_MINI = REPO.parent / "shared" / "data" / "hotdog-mini"


def upscaled_photos(source: Path, target: Path, seed: int = 0) -> Path:
    """Real photos at realistic sizes: each image's shorter side drawn from 300-600 px, saved as JPEG q90."""
    from PIL import Image

    rng = random.Random(seed)
    for path in sorted(source.rglob("*.jpg")):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(path).convert("RGB")
        scale = rng.randint(300, 600) / min(image.size)
        image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC).save(out, quality=90)
    return target


def replicated(source: Path, target: Path, copies: int, limit: int = 0) -> Path:
    """`copies` symlinked copies of every train image (the first `limit` per class if given); val as is."""
    train, held_out = photo_splits(source)
    for class_dir in sorted(p for p in train.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())[: limit or None]
        (target / "train" / class_dir.name).mkdir(parents=True, exist_ok=True)
        for copy in range(copies):
            for file in files:
                (target / "train" / class_dir.name / f"{copy}_{file.name}").symlink_to(file.resolve())
    (target / "val").symlink_to(held_out.resolve(), target_is_directory=True)
    return target


def photo_splits(photos: Path) -> tuple[Path, Path]:
    """The train and held-out split folders of a DIR/train + DIR/<val|validation|valid|test> photo folder, found
    as a run finds them (`hf_finetune.data.sources.find_splits`). A benchmark needs both: a folder without a
    held-out split, which a run would carve a holdout out of, is refused."""
    from hf_finetune.config import EVAL_SPLIT_NAMES
    from hf_finetune.data.folders import find_splits
    from hf_finetune.errors import UserError

    expected = (f"--data-dir {photos}: expected train/<class>/ and one of {'/'.join(EVAL_SPLIT_NAMES)}/<class>/ "
                "folders of photos")
    try:
        train, held_out = find_splits(photos)
    except UserError:  # its advice names finetune's options (--train-split), which the benchmark has not
        raise SystemExit(expected) from None
    if held_out is None:
        raise SystemExit(expected)
    return train, held_out
