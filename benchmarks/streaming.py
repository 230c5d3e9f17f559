"""Streaming vs the decode-once cache: images/s each loader delivers to the training step, time to the first
batch and peak memory, on the same photos (food101-30, converted once to parquet shards the README's way), with
0, 1 and 2 workers; then the worked estimate of what an 8-GPU node needs.

    python -m benchmarks.streaming [--images 3000] [--workers 0 1 2] [--output BENCHMARKS.md]

Each configuration runs in a fresh interpreter (`--measure SPEC`), so its peak memory is its own. The cache is
built before its configurations are timed (a run builds it once; benchmarks.loader times the build): its first
batch includes listing the folder and opening the built cache; the stream's, opening the stream, reading the
first shuffle block and decoding a batch. Both include creating the model whose data config they follow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import REPO
from benchmarks.memory import MEMORY_COLUMNS, PeakMemory, memory_cells
from benchmarks.report import Report, append_section, section_header

PHOTOS = REPO.parent / "shared" / "data" / "food101-30"
# An assumed training rate to size the loaders for: resnet50 at 224 px with bf16 on one A100-class GPU trains
# ~2,500 images/s (an order of magnitude; a newer GPU or a smaller model needs more).
GPU_IMAGES_PER_SECOND = 2500


def convert_to_parquet(photos: Path, shards_dir: Path, shards: int = 8) -> Path:
    """The README's snippet: imagefolder -> image bytes embedded -> `shards` parquet files per split (once)."""
    import datasets
    from datasets.table import embed_table_storage

    if (shards_dir / "done").is_file():
        return shards_dir
    loaded = datasets.load_dataset("imagefolder", data_dir=str(photos), cache_dir=str(shards_dir / "hf_cache"))
    for split, rows in loaded.items():
        for index in range(shards if split == "train" else 1):
            shard = rows.shard(shards if split == "train" else 1, index, contiguous=True).with_format("arrow")
            shard = shard.map(embed_table_storage, batched=True).with_format(None)
            shard.to_parquet(str(shards_dir / f"{split}-{index:05d}.parquet"))
    (shards_dir / "done").write_text("")
    return shards_dir


def _loader(spec: dict):
    from hf_finetune.config import FinetuneConfig
    from hf_finetune.data.cache import prepare_images
    from hf_finetune.data.images import ImageSettings
    from hf_finetune.data.loaders import create_dataloaders, create_transforms
    from hf_finetune.data.sources import load_image_data
    from hf_finetune.data.stream_loader import create_stream_loader
    from hf_finetune.model.create import create_classifier

    model = create_classifier(spec["model"], ["a", "b"], pretrained=False, img_size=spec["img_size"])[0]
    if spec["pipeline"] == "cache":
        config = FinetuneConfig(data_dir=spec["photos"], cache_dir=spec["cache_dir"])
        data = prepare_images(load_image_data(config), model, report=False)
        return create_dataloaders(data, model, spec["batch_size"], spec["workers"])[0]
    shards = Path(spec["shards"])
    config = FinetuneConfig(streaming=True, data_files=str(shards / "train-*.parquet"),
                            eval_data_files=str(shards / "validation-*.parquet"), max_eval_samples=2)
    settings = ImageSettings.from_model(model)
    return create_stream_loader(load_image_data(config).train, create_transforms(settings)[0], settings,
                                spec["batch_size"], spec["workers"], 0, 1000, 0.01, 0, 1, "cpu", [10**9])


def measure(spec: dict) -> dict:
    """Seconds to the first batch (from creating the loader), then images/s over the next spec["images"]."""
    started = time.perf_counter()
    batches = iter(_loader(spec))
    next(batches)
    first = time.perf_counter() - started
    count, started = 0, time.perf_counter()
    for batch in batches:
        count += len(batch["label"])
        if count >= spec["images"]:
            break
    else:
        raise SystemExit(f"--images {spec['images']} is more than one epoch of {spec['photos']}: ask for fewer")
    return {"first_batch": first, "rate": count / (time.perf_counter() - started), "images": count}


def measure_isolated(spec: dict) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": path}
    process = subprocess.run([sys.executable, "-m", "benchmarks.streaming", "--measure", json.dumps(spec)],
                             capture_output=True, text=True, env=environment)
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise SystemExit(f"configuration {spec} failed:\n{process.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="images timed per configuration (< 9000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", default="/tmp/hf_finetune_streaming_bench", help="shards and cache go here")
    parser.add_argument("--output", default="BENCHMARKS.md", help="append the section here ('' = print only)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        with PeakMemory() as memory:
            result = measure(json.loads(args.measure))
        memory_fields = {"peak_rss": memory.rss, "peak_pss": memory.pss, "peak_anon": memory.anon}
        print("RESULT " + json.dumps({**result, **memory_fields}))
        return
    work = Path(args.work)
    shards = convert_to_parquet(PHOTOS, work / "shards")
    report = Report(section_header("benchmarks.streaming", "streaming vs the decode-once cache"))
    report.say(f"- food101-30 (9,000 train photos, 64 px JPEG) as 8 parquet shards; {args.model} data config at "
               f"{args.img_size} px, batch {args.batch_size}, {args.images} images timed after the first batch")
    report.say()
    report.say("| loader | workers | images/s | first batch (s) | " + MEMORY_COLUMNS)
    report.say("|---|---|---|---|---|---|---|")
    base = {"photos": str(PHOTOS), "shards": str(shards), "cache_dir": str(work / "cache"), "model": args.model,
            "img_size": args.img_size, "batch_size": args.batch_size, "images": args.images}
    measure_isolated({**base, "pipeline": "cache", "workers": 0, "images": 1})  # builds the cache, untimed
    rates = {}
    for pipeline in ("cache", "stream"):
        for workers in args.workers:
            result = measure_isolated({**base, "pipeline": pipeline, "workers": workers})
            rates[pipeline, workers] = result["rate"]
            report.say(f"| {pipeline} | {workers} | {result['rate']:.0f} | {result['first_batch']:.1f} | "
                       + memory_cells(result))
    report.say()
    report.say(_estimate(rates))
    append_section(args.output, report.lines + [""])


def _estimate(rates: dict) -> str:
    """What an 8-GPU node needs, in streaming loader workers at the measured per-worker rate."""
    per_worker = max(rate / workers for (pipeline, workers), rate in rates.items() if pipeline == "stream" and workers)
    needed = 8 * GPU_IMAGES_PER_SECOND
    workers = math.ceil(needed / per_worker)
    return (f"8-GPU node estimate: 8 x ~{GPU_IMAGES_PER_SECOND:,} images/s (resnet50, 224 px, bf16, an A100-class GPU: "
            f"an assumption, not measured here) = {needed:,} images/s. At the best measured streaming rate per worker "
            f"here, {per_worker:.0f} images/s (these 64 px photos decode fast; full-size JPEGs cost several times "
            f"more), that is {workers} workers, {math.ceil(workers / 8)} per GPU process.")


if __name__ == "__main__":
    main()
