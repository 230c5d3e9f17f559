"""Streaming vs the decode-once cache: images/s delivered to the training step from the same photos.

    python -m benchmarks.streaming                  # ../shared/data/food101-30 (9,000 train photos)
    python -m benchmarks.streaming --limit 200      # a smoke check on 200 of them (not a measurement)

The folder's train split becomes parquet shards with `datasets` (imagefolder, shuffled once, image bytes embedded,
`.shard(n, i).to_parquet`), in a temporary folder or --shards-dir (kept, and reused when it already holds them).
Then each configuration runs in a fresh process (`python -m benchmarks.measure`), so its peak memory is its own:
- streamed: `load_dataset("parquet", data_files=shards, streaming=True)` through a torch DataLoader with 0, 1, 2
  workers; each worker reads its own shards, decodes, and crops to --img-size px with the cached loader's
  train transform (RandomResizedCrop + flip on uint8 tensors, hf_finetune.data.loaders);
- cached: the project's decode-once cache and train loader on the same photos (the loader benchmark's pipeline,
  `benchmarks.loader`), a fresh cache each time, so its time to the first batch includes the cache build (train
  and val photos, as a run builds it).
Reported: time to the first batch (imports excluded), images/s over the epochs after the first, peak RSS / PSS;
appended to BENCHMARKS.md with the command, date, machine and load.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from benchmarks import REPO
from benchmarks.isolated import measure_isolated
from benchmarks.memory import MEMORY_COLUMNS, memory_cells
from benchmarks.photos import photo_splits, replicated
from benchmarks.report import Report, append_section, load, median_after_first, section_header
from benchmarks.spec import finetune_config, settings_model

FOOD101_30 = REPO.parent / "shared" / "data" / "food101-30"


def streamed_loader(shards: list[str], transform, settings, batch_size: int, workers: int):
    """The project's streamed train loader (hf_finetune.data.stream_loader, what a --streaming run trains on):
    parquet shards -> batches of {"pixel_values": uint8 images, "label"}, decoded and transformed in the
    DataLoader workers, one pass over the shards per epoch."""
    import math

    import pyarrow.parquet as pq

    from hf_finetune.config import FinetuneConfig
    from hf_finetune.data.sources import load_image_data
    from hf_finetune.data.stream_loader import create_stream_loader

    pattern = str(Path(shards[0]).parent / "train-*.parquet")
    data = load_image_data(FinetuneConfig(streaming=True, data_files=pattern, eval_data_files=shards[0],
                                          max_eval_samples=2))
    images = sum(pq.ParquetFile(path).metadata.num_rows for path in shards)
    return create_stream_loader(data.train, transform, settings, batch_size, workers, seed=0, block_size=1000,
                                max_bad_fraction=0.01, rank=0, world_size=1, device="cpu",
                                batches=[math.ceil(images / batch_size)])


def measure_streamed(spec: dict) -> dict:
    """The stream through the same train transform as the cached loader's (RandomResizedCrop + flip, uint8)."""
    import datasets  # noqa: F401 (imported before the clock starts, as hf_finetune is for the cached loader)

    from hf_finetune.data.images import ImageSettings
    from hf_finetune.data.loaders import create_transforms

    settings = ImageSettings.from_model(settings_model(spec))
    transform = create_transforms(settings)[0]
    return _timed_epochs(lambda: streamed_loader(spec["shards"], transform, settings, spec["batch_size"],
                                                 spec["workers"]), spec["epochs"])


def measure_cached(spec: dict) -> dict:
    """The loader benchmark's "ours" (benchmarks.loader): listing, cache build (train and val, as a run builds it),
    train loader."""
    from hf_finetune.data.cache import prepare_images
    from hf_finetune.data.loaders import create_dataloaders
    from hf_finetune.data.sources import load_image_data

    model = settings_model(spec)

    def create_loader():
        data = prepare_images(load_image_data(finetune_config(spec)), model, report=False)
        return create_dataloaders(data, model, spec["batch_size"], spec["workers"])[0]
    return _timed_epochs(create_loader, spec["epochs"])


def _timed_epochs(create_loader, epochs: int) -> dict:
    """Seconds from no loader (and no cache) to the first batch, and images/s of each whole epoch."""
    started = time.perf_counter()
    loader = create_loader()
    first_batch, rates = None, []
    for _ in range(epochs):
        count, epoch_started = 0, time.perf_counter()
        for batch in loader:
            first_batch = first_batch or time.perf_counter() - started
            count += len(batch[1] if isinstance(batch, list) else batch["label"])
        rates.append(count / (time.perf_counter() - epoch_started))
    return {"first_batch": first_batch, "rates": rates, "images": count}


def write_parquet_shards(photos: Path, target: Path, num_shards: int, work: Path) -> list[Path]:
    """The train split of an image folder as `num_shards` parquet shards that stand alone (image bytes inside)."""
    from datasets import load_dataset
    from datasets.table import embed_table_storage

    train = load_dataset("imagefolder", data_dir=str(photos), split="train", cache_dir=str(work / "hf_datasets"))
    # Shuffled once, so that each shard mixes the classes (imagefolder lists them class by class).
    train = train.shuffle(seed=0).flatten_indices()
    # An imagefolder's image column holds file paths, and to_parquet writes them as they are: embed the bytes,
    # as push_to_hub does, or the shards are useless anywhere the photos are not.
    train = train.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
    target.mkdir(parents=True, exist_ok=True)
    paths = [target / f"train-{i:05d}-of-{num_shards:05d}.parquet" for i in range(num_shards)]
    for i, path in enumerate(paths):
        train.shard(num_shards, i, contiguous=True).to_parquet(str(path))
    return paths


def benchmark(args, work: Path) -> list[str]:
    photos, data = Path(args.data_dir), args.data_dir
    train, _ = photo_splits(photos)  # a wrong --data-dir fails now, with what it should hold
    if args.limit:
        per_class = math.ceil(args.limit / sum(1 for p in train.iterdir() if p.is_dir()))
        photos = replicated(photos, work / "photos", 1, limit=per_class)
        data = f"{data}, its first {per_class} train photos of each class"
    shards_dir = Path(args.shards_dir) if args.shards_dir else work / "shards"
    shards = sorted(shards_dir.glob("train-*.parquet"))
    started = time.perf_counter()
    if shards:
        conversion = f"the {len(shards)} shards already in {shards_dir}"
    else:
        shards = write_parquet_shards(photos, shards_dir, args.num_shards, work)
        conversion = (f"{len(shards)} parquet shards ({sum(p.stat().st_size for p in shards) / 2**20:.1f} MiB) "
                      f"written in {time.perf_counter() - started:.1f} s")
    settings = f"{args.img_size} px, batch {args.batch_size}, {args.epochs} epochs"
    report = Report([*section_header("benchmarks.streaming", "streaming vs the decode-once cache"),
                     f"- data: {data}; {conversion}; {settings}", ""])
    base = {"model": args.model, "img_size": args.img_size, "batch_size": args.batch_size, "epochs": args.epochs,
            "seed": 0}
    report.say("| loader | images | workers | time to first batch (s) | images/s (epochs >= 2) | " + MEMORY_COLUMNS)
    report.say("|---|---|---|---|---|---|---|---|")
    for workers in args.workers:
        _row(report, "streamed", workers, {**base, "measure": "streamed", "shards": list(map(str, shards))})
    for workers in args.workers:
        _row(report, "cached", workers, {**base, "measure": "cached", "root": str(photos),
                                         "cache_dir": str(work / f"cache_{workers}")})
    report.say()
    report.say(f"- load average (1/5/15 min) at end: {load()}")
    report.say()
    return report.lines


def _row(report: Report, name: str, workers: int, spec: dict) -> None:
    result = measure_isolated({**spec, "workers": workers})
    report.say(f"| {name} | {result['images']} | {workers} | {result['first_batch']:.2f} | "
               f"{median_after_first(result['rates']):.0f} | " + memory_cells(result))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(FOOD101_30), help="a photo folder DIR/train/<class>, DIR/val/<class>")
    parser.add_argument("--shards-dir", help="write the parquet shards here and keep them (reused if it holds "
                                             "train-*.parquet already); default: a temporary folder")
    parser.add_argument("--num-shards", type=int, default=16, help="a multiple of every worker count")
    parser.add_argument("--limit", type=int, default=0, help="only about this many train photos (a smoke check)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="resnet18", help="whose data config the cached loader follows")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"), help="append the table here ('' to skip)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="hf_finetune_benchmark_") as work:
        lines = benchmark(args, Path(work))
    append_section(args.output, lines)


if __name__ == "__main__":
    main()
