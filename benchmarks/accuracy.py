"""Accuracy: the fast settings against the plain ones, fine-tuning real pretrained weights over several seeds."""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks import REPO
from benchmarks.isolated import measure_isolated
from benchmarks.report import Report, median_after_first

LITE0 = REPO.parent / "shared" / "weights" / "tf_efficientnet_lite0.in1k"


def accuracy_section(report: Report, args, photos: Path, work: Path, base: dict, ours: int) -> None:
    """(e) the final eval accuracy per seed of each setting, and its median epoch time."""
    spec = {**base, "root": str(photos), "cache_dir": str(work / "cache_accuracy"), "model": f"local-dir:{LITE0}",
            "img_size": args.accuracy_img_size, "batch_size": 32, "epochs": args.accuracy_epochs}
    report.say(f"| accuracy: {LITE0.name} pretrained, {args.accuracy_img_size} px, {args.accuracy_epochs} epochs, "
               "batch 32, SGD momentum 0.9 | final eval accuracy per seed | mean | epoch seconds (median) |")
    report.say("|---|---|---|---|")
    # fp32 named explicitly for the plain runs: the default, `auto`, is bf16 on a CPU with native bf16.
    for label, overrides in (("fast: cache, channels_last, {precision} (auto)", {"mixed_precision": "auto"}),
                             ("plain: --no-cache, NCHW, {precision}", {"cache": False, "channels_last": False,
                                                                       "mixed_precision": "no"})):
        results = [measure_isolated({**spec, "seed": seed, "measure": "our_training",
                                     "overrides": {**overrides, "momentum": 0.9, "num_workers": ours}})
                   for seed in range(args.accuracy_seeds)]
        final = [result["epochs"][-1]["eval_acc"] for result in results]
        seconds = statistics.median(median_after_first([epoch["seconds"] for epoch in result["epochs"]])
                                    for result in results)
        name = label.format(precision="/".join(sorted({result["precision"] for result in results})))
        report.say(f"| {name} | {', '.join(f'{acc:.3f}' for acc in final)} | {statistics.mean(final):.3f} | "
                   f"{seconds:.1f} |")
    report.say()
