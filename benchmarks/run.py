"""Loader and training throughput, side by side with the d2l Fine-Tuning chapter's pipeline, on one machine.

    python -m benchmarks.run                       # hotdog-mini upscaled to 300-600 px photos
    python -m benchmarks.run --data-dir PHOTOS     # any DIR/train/<class>/*.jpg (+ val/) folder

Every configuration runs in its own subprocess, so its peak RSS is its own. Reported:
(a) images/sec the loader delivers at epoch >= 2: the chapter's (torchvision ImageFolder, RandomResizedCrop
    + flip + ToTensor + Normalize(ImageNet), batch 128) with no workers and with ours, vs ours (decode-once
    cache + uint8 v2 augmentation, uint8 batches), also counting the float conversion + normalization our
    training step does on the batch's device; the one-time cache build;
(b) training epoch wall time (train + eval pass): chapter-style (fp32, NCHW, decode every epoch) vs
    hf_finetune's own `finetune` (cache, channels_last, and the precision `--mixed-precision auto` picks here:
    bf16 autocast on a CPU with native bf16, fp32 elsewhere), also with --compile;
(c) peak RSS of each configuration's process tree, and its anonymous (non file-backed) part;
(d) ours with 0/1/2 workers, and both pipelines at 1x/4x/16x the images (symlinked copies).
Results print as ratios and are appended to BENCHMARKS.md with the command, machine, date and load.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks import REPO
from benchmarks.accuracy import accuracy_section
from benchmarks.loader import loader_section
from benchmarks.photos import HOTDOG_MINI, photo_splits, upscaled_photos
from benchmarks.report import Report, append_section, load, section_header
from benchmarks.training import training_section


def benchmark(args, work: Path) -> list[str]:
    from hf_finetune.data.loaders import default_num_workers

    ours = default_num_workers(1)
    photos = Path(args.data_dir) if args.data_dir else upscaled_photos(HOTDOG_MINI, work / "photos")
    photo_splits(photos)  # a wrong --data-dir fails now, with what it should hold
    base = dict(model=args.model, img_size=args.img_size, batch_size=args.batch_size, seed=0)
    report = Report([*section_header("benchmarks.run"),
                     f"- data: {photos if args.data_dir else 'hotdog-mini upscaled to 300-600 px shorter sides'}; "
                     f"model {args.model} at {args.img_size} px, batch {args.batch_size}; our default workers: {ours}",
                     ""])
    loader_section(report, args, photos, work, base, ours)
    if args.epochs:
        training_section(report, args, photos, work, base, ours)
    if args.accuracy_seeds:
        accuracy_section(report, args, photos, work, base, ours)
    report.say(f"- load average (1/5/15 min) at end: {load()}")
    report.say()
    return report.lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="a real photo folder DIR/train/<class>, DIR/val/<class> (or validation, "
                                           "valid, test); default: "
                                           "../shared/data/hotdog-mini upscaled to 300-600 px")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="worker counts for our loader at 1x and our training runs")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16], help="dataset sizes, in copies")
    parser.add_argument("--loader-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per run (0: skip training)")
    parser.add_argument("--train-images", type=int, default=200, help="train images for the training runs")
    parser.add_argument("--lr", type=float, default=6.4e-3)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also train ours with --compile (about a minute of compiling)")
    parser.add_argument("--accuracy-seeds", type=int, default=3, help="seeds per setting for (e) (0: skip)")
    parser.add_argument("--accuracy-epochs", type=int, default=5)
    parser.add_argument("--accuracy-img-size", type=int, default=160)
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"), help="append the tables here ('' to skip)")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of one epoch of each loader")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Upscaled and replicated photos plus their caches take ~1-2 GB: gone when the run ends, however it ends.
    with tempfile.TemporaryDirectory(prefix="hf_finetune_benchmark_") as work:
        lines = benchmark(args, Path(work))
    append_section(args.output, lines)


if __name__ == "__main__":
    main()
