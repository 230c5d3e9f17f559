"""Decode every image once, before training: the decode-once cache, or (with --no-cache) the bad-image scan.

One `datasets.map` pass per split fully decodes every file with `images.load_rgb`. With the cache on it
stores what the augmentation starts from (upright RGB, shorter side `ImageSettings.short_side`, raw uint8
bytes) in an Arrow file beside the split's own datasets cache, reused across epochs and runs. It is
memory-mapped: what it occupies in RAM is page cache the kernel drops under pressure, not memory the process
holds, so a cache larger than RAM works. With --no-cache the pass keeps only which files are bad.

datasets fingerprints the pass from the split's fingerprint (for a folder it covers every file's path and
mtime), the function and its settings, so a changed file, split, backbone data config or --img-size maps
again and anything unchanged is loaded without decoding a single image.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Optional

from torch import nn

from hf_finetune.data.sources import ImageData
from hf_finetune.errors import UserError
from hf_finetune.hardware import available_cpus, one_thread
from hf_finetune.data.images import BadImageError, ImageSettings, load_rgb

logger = logging.getLogger(__name__)

# Rows per map batch and per Arrow record batch: ~16 MB of 256-px images, so the build's RAM stays flat.
WRITER_BATCH_SIZE = 64
# Below this many images per process, one map process (decoding on a thread per core) beats a pool of
# processes, whose start-up and shard merging cost more than they save. Photos of 0.3 MP on 2 cores: 250
# photos 0.45 s on one process vs 0.85 s on two, 850 ~1.5 s both, 3250 6.4 s vs 5.05 s (there the
# processes' parallel Python and Arrow writing win).
MIN_IMAGES_PER_PROCESS = 500


def prepare_images(data: ImageData, model: nn.Module, cache: bool = True, max_bad_fraction: float = 0.01,
                   report: bool = True) -> ImageData:
    """Decode every image of both splits once; return the data with unreadable files skipped and listed in
    `bad_files` ({"split", "path" relative to data.root, "reason"}). With `cache` the splits become the
    decoded images (columns pixels, height, width, label) that `loaders.create_dataloaders` augments.
    Run it on one process first (main_process_first): the others then load the finished pass from disk.
    `report`: log one warning per bad file and a summary (the main process)."""
    settings = ImageSettings.from_model(model) if cache else None
    # A streamed train split is decoded as it is read (stream_loader.py); its eval split is cached like any other.
    train, train_bad = ((data.train, []) if data.streaming else
                        _prepare_split(data.train, "train", settings, data.root, max_bad_fraction, report))
    evaluation, eval_bad = _prepare_split(data.eval, data.eval_split, settings, data.root, max_bad_fraction, report)
    if settings and report:
        cached = (evaluation,) if data.streaming else (train, evaluation)
        files = {file["filename"] for split in cached for file in split.cache_files}
        logger.info("decode-once cache: %d images at %d px, %.1f MB in %s", sum(map(len, cached)),
                    settings.short_side, sum(os.path.getsize(file) for file in files) / 1e6,
                    os.path.dirname(min(files)) if files else "memory")
    test, test_bad = (None, [])
    if data.test is not None:
        test, test_bad = _prepare_split(data.test, data.test_split, settings, data.root, max_bad_fraction, report)
    return dataclasses.replace(data, train=train, eval=evaluation, test=test,
                               bad_files=train_bad + eval_bad + test_bad)


def _prepare_split(dataset, split: str, settings: Optional[ImageSettings], root, max_bad_fraction: float,
                   report: bool):
    decoded = decode_split(dataset, settings, split)
    reasons = decoded.data.column("bad_reason").to_pylist()
    bad = {index: reason for index, reason in enumerate(reasons) if reason is not None}
    kept = decoded.select_columns(["pixels", "height", "width", "label"]) if settings else dataset
    if not bad:
        return kept, []
    paths = _source_paths(dataset, bad, root, split)
    found = [{"split": split, "path": paths[index], "reason": reason} for index, reason in bad.items()]
    if report:
        for file in found:
            logger.warning("skipping unreadable image %s: %s", file["path"], file["reason"])
    if len(bad) > max_bad_fraction * len(dataset):
        raise UserError(f"{len(bad)} of {len(dataset)} {split} images are unreadable (listed above), more than "
                        f"--max-bad-fraction {max_bad_fraction:g}: fix or remove them, or raise --max-bad-fraction")
    if report:
        logger.warning("skipped %d unreadable of %d %s images", len(bad), len(dataset), split)
    return kept.select([index for index in range(len(dataset)) if index not in bad]), found


def data_fingerprint(dataset) -> str:
    """A split's identity for the resume check: its files (paths and modification times, through the datasets
    cache they were loaded into), labels and selected rows. datasets keeps its own fingerprint private
    (`Dataset._fingerprint`); its public `Hasher` hashes the dataset's whole state, that fingerprint included."""
    from datasets.fingerprint import Hasher

    return Hasher.hash(dataset)


def decode_split(dataset, settings: Optional[ImageSettings], split: str = "train"):
    """The map pass: per row a `bad_reason` (None when the image is fine) and, given settings, the decoded
    image as `pixels` (HWC uint8 bytes) with its `height` and `width`."""
    import datasets

    features = {"label": dataset.features["label"], "bad_reason": datasets.Value("string")}
    if settings is not None:
        features.update(pixels=datasets.Value("binary"), height=datasets.Value("int32"),
                        width=datasets.Value("int32"))
    # Only what changes the stored pixels goes into the function's arguments, and so into the fingerprint.
    resize = {"short_side": settings.short_side, "interpolation": settings.interpolation} if settings else {}
    processes = min(available_cpus(), len(dataset) // MIN_IMAGES_PER_PROCESS)
    with one_thread():  # the map's worker processes inherit it
        return (dataset.select_columns(["image", "label"])
                .cast_column("image", datasets.Image(decode=False))
                .map(_decode_batch, batched=True, batch_size=WRITER_BATCH_SIZE, writer_batch_size=WRITER_BATCH_SIZE,
                     input_columns=["image"], remove_columns=["image"], features=datasets.Features(features),
                     fn_kwargs={"resize": resize}, num_proc=processes if processes > 1 else None,
                     desc=f"{'Caching' if settings else 'Checking'} {split} images"))


def _decode_batch(images: list[dict], resize: dict) -> dict:
    keep_pixels = bool(resize)  # no resize settings: the --no-cache scan, which keeps only the verdict
    columns = {"bad_reason": [], **({"pixels": [], "height": [], "width": []} if keep_pixels else {})}
    # JPEG decoding and torch's resize release the GIL: threads use the cores without the start-up and shard
    # merging of more processes.
    with ThreadPoolExecutor(available_cpus()) as pool:
        decoded = list(pool.map(partial(_decode_one, resize=resize), images))
    for pixels, reason in decoded:
        columns["bad_reason"].append(reason)
        if keep_pixels:
            columns["pixels"].append(None if pixels is None else pixels.tobytes())
            columns["height"].append(None if pixels is None else pixels.shape[0])
            columns["width"].append(None if pixels is None else pixels.shape[1])
    return columns


def _decode_one(image: dict, resize: dict):
    try:
        return load_rgb(image, **resize), None
    except BadImageError as error:
        return None, str(error)


def _source_paths(dataset, indices, root, split: str) -> dict[int, str]:
    """Where the rows came from: relative to the data folder, else the Hub file name, else split[index]."""
    import datasets

    undecoded = dataset.cast_column("image", datasets.Image(decode=False))
    paths = {}
    for index in indices:
        path = undecoded[index]["image"].get("path")
        if path and root is not None and os.path.isabs(path):
            path = os.path.relpath(path, root)
        paths[index] = path or f"{split}[{index}]"
    return paths
