"""Training epoch wall time: the chapter's loop against hf_finetune's own `finetune`, each worker count."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from benchmarks.isolated import measure_isolated
from benchmarks.memory import MEMORY_COLUMNS, memory_cells
from benchmarks.photos import replicated
from benchmarks.report import Report, median_after_first
from benchmarks.spec import finetune_config


def measure_our_training(spec: dict) -> dict:
    """hf_finetune's own run (`finetune`), with the settings in spec["overrides"], and the precision it trained in
    ("fp32", "bf16"), as its run_config.json records it."""
    from hf_finetune.run import finetune
    from hf_finetune.hardware import Precision

    with tempfile.TemporaryDirectory() as output_dir:
        config = finetune_config(spec, reuse_classifier=False, epochs=spec["epochs"], batch_size=spec["batch_size"],
                                 seed=spec["seed"], output_dir=output_dir, keep_checkpoints=1, **spec["overrides"])
        history = finetune(config)["history"]
        run = json.loads((Path(output_dir) / "run_config.json").read_text())
    return {"epochs": [{"seconds": row["epoch_seconds"], "train_images_per_sec": row["examples_per_sec"],
                        "eval_acc": row["eval_acc"]} for row in history],
            "precision": Precision(run["mixed_precision"], run["mixed_precision_reason"]).name}


def training_section(report: Report, args, photos: Path, work: Path, base: dict, ours: int) -> None:
    """(b) training: the chapter's loop vs hf_finetune's, ours with each worker count."""
    spec = {**base, "root": str(replicated(photos, work / "train_subset", 1, limit=args.train_images // 2)),
            "cache_dir": str(work / "cache_train"), "epochs": args.epochs, "lr": args.lr}
    report.say(f"| training: {args.model}, {args.epochs} epochs of {args.train_images} images | workers | epoch "
               "seconds (train + eval; median of epochs >= 2) | vs chapter | training images/s (data loading "
               "included; median of epochs >= 2) | vs chapter | eval accuracy per epoch | " + MEMORY_COLUMNS)
    report.say("|---|---|---|---|---|---|---|---|---|---|")
    runs = [("chapter-style: fp32, NCHW, decode every epoch", {"measure": "chapter_training"}, 0)]
    # Our defaults, precision included: `auto`, as in a run (bf16 only on a CPU with native bf16).
    fast = {"pretrained": False, "param_group": False, "lr": args.lr, "mixed_precision": "auto"}
    runs += [("hf_finetune: cache, channels_last, {precision} (auto)",
              {"measure": "our_training", "overrides": {**fast, "num_workers": workers}}, workers)
             for workers in [ours] + [w for w in args.workers if w != ours]]
    if args.compile:
        runs.append(("hf_finetune: the same + --compile (inductor; compiles in epoch 1)",
                     {"measure": "our_training", "overrides": {**fast, "num_workers": ours, "compile": True}}, ours))
    baseline = None
    for label, measure, workers in runs:
        result = measure_isolated({**spec, **measure})
        name = label.format(precision=result.get("precision"))  # the precision the run itself chose
        seconds = median_after_first([epoch["seconds"] for epoch in result["epochs"]])
        rate = median_after_first([epoch["train_images_per_sec"] for epoch in result["epochs"]])
        baseline = baseline or (seconds, rate)
        accuracies = ", ".join(f"{epoch['eval_acc']:.2f}" for epoch in result["epochs"])
        report.say(f"| {name} | {workers} | {seconds:.1f} | {seconds / baseline[0]:.2f}x | {rate:.1f} | "
                   f"{rate / baseline[1]:.2f}x | {accuracies} | " + memory_cells(result))
    report.say()
