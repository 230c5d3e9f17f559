"""Prediction throughput: batched scripts/predict.py-style prediction vs one file per forward pass.

    python benchmarks/predict_throughput.py [--model local-dir:../shared/weights/tf_efficientnet_lite0.in1k]
        [--data-dir ../shared/data/hotdog-mini] [--files 1000] [--batch-size 32]

The data folder's images are replicated by symlink into a temporary folder until there are --files of them;
both ways predict every file with the same decoder and eval transform and print images/s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def replicate(source: Path, count: int, folder: Path) -> list[str]:
    originals = sorted(path for path in source.rglob("*.jpg"))
    links = []
    for index in range(count):
        link = folder / f"{index:05d}_{originals[index % len(originals)].name}"
        os.symlink(originals[index % len(originals)], link)
        links.append(str(link))
    return links


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=f"local-dir:{SHARED / 'weights' / 'tf_efficientnet_lite0.in1k'}")
    parser.add_argument("--data-dir", type=Path, default=SHARED / "data" / "hotdog-mini")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    from hf_finetune.serve.batch_predict import TorchRunner, predict_files
    from hf_finetune.serve.predict import load_classifier, predict

    classifier = load_classifier(args.model)
    with tempfile.TemporaryDirectory(prefix="predict_throughput_") as folder:
        paths = replicate(args.data_dir, args.files, Path(folder))
        runner = TorchRunner(classifier)
        list(predict_files(runner, paths[: args.batch_size], args.batch_size, progress=False))  # warm-up
        started = time.perf_counter()
        batched = list(predict_files(runner, paths, args.batch_size, progress=False))
        batched_rate = len(batched) / (time.perf_counter() - started)
        started = time.perf_counter()
        for path in paths:
            predict(classifier, [path])  # one file per forward pass: the old scripts/predict.py way
        single_rate = len(paths) / (time.perf_counter() - started)
    print(f"{args.model} on {runner.device}, {len(paths)} files, {torch.get_num_threads()} torch threads")
    print(f"batched (--batch-size {args.batch_size}): {batched_rate:.1f} images/s")
    print(f"one file at a time: {single_rate:.1f} images/s  ({batched_rate / single_rate:.2f}x)")


if __name__ == "__main__":
    main()
