"""The chapter's experiment as a command: the same data, epochs and seed, fine-tuned vs from scratch.

Each variant is an ordinary `python -m hf_finetune` run in its own process and output folder (a fresh
Accelerate state each; an installed wheel has no scripts/ folder); this module only chooses the flags and
tabulates.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hf_finetune.publish.card import write_model_card
from hf_finetune.config import DEFAULT_RECIPE, backbone_lr, parse_config
from hf_finetune.errors import UserError

# name -> (description, extra flags). Flags come after the user's, so they win.
VARIANTS = {
    "finetune": ("pretrained, new head at --head-lr-mult x LR", ["--pretrained", "--no-reuse-classifier"]),
    "scratch": ("random init, one parameter group at 10x LR (the chapter's baseline)",
                ["--no-pretrained", "--param-group", "false", "--no-reuse-classifier"]),
    "reuse": ("pretrained, head rows of matching source classes reused", ["--pretrained", "--reuse-classifier"]),
    "freeze": ("pretrained, bottom half of the backbone frozen",
               ["--pretrained", "--no-reuse-classifier", "--freeze-fraction", "0.5"]),
    "warmup": ("pretrained, head-only first epoch, then all layers",
               ["--pretrained", "--no-reuse-classifier", "--freeze-epochs", "1"]),
    # The row pair of issue 13: the chapter's recipe vs the default one, everything else as the user gave it.
    "d2l": ("the d2l chapter's recipe (--recipe d2l)", ["--pretrained", "--recipe", "d2l"]),
    "default": (f"the default recipe (--recipe {DEFAULT_RECIPE})", ["--pretrained", "--recipe", DEFAULT_RECIPE]),
}
COLUMNS = ("train_loss", "train_acc", "eval_acc", "examples_per_sec", "total_seconds")


def variant_args(name: str, user_args: list[str], output_dir: Path) -> list[str]:
    _, flags = VARIANTS[name]
    if name == "scratch":  # the chapter trains from scratch at 10x the fine-tuning LR (given, or the recipe's)
        flags = flags + ["--lr", repr(10 * backbone_lr(parse_config(user_args)))]
    return [*user_args, *flags, "--output-dir", str(output_dir / name)]


def run_comparison(user_args: list[str], output_dir: Path, variants: list[str]) -> dict:
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    results = {}
    for name in variants:
        print(f"== {name}: {VARIANTS[name][0]}", flush=True)
        run = subprocess.run([sys.executable, "-m", "hf_finetune", *variant_args(name, user_args, output_dir)])
        if run.returncode != 0:
            raise UserError(f"variant {name!r} failed (exit {run.returncode}); its output is in {output_dir / name}")
        metrics = json.loads((output_dir / name / "metrics.json").read_text())
        results[name] = {"description": VARIANTS[name][0], **{key: metrics["final"][key] for key in COLUMNS}}
    comparison = {"args": user_args, "variants": results}
    (output_dir / "comparison.json").write_text(json.dumps(comparison, indent=2))
    table = comparison_markdown(results)
    (output_dir / "comparison.md").write_text(table)
    for name in variants:  # each variant's model card shows the whole experiment
        (output_dir / name / "comparison.md").write_text(table)
        write_model_card(output_dir / name)
    return comparison


def comparison_markdown(results: dict) -> str:
    """A table in the chapter's terms, ready to include in a model card."""
    lines = ["## Fine-tuning vs training from scratch", "",
             "Same data, epochs and seed for every row (the d2l Fine-Tuning chapter's experiment).", "",
             "| variant | loss | train acc | test acc | examples/sec | wall time (s) | setup |",
             "|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        lines.append(f"| {name} | {row['train_loss']:.3f} | {row['train_acc']:.3f} | {row['eval_acc']:.3f} | "
                     f"{row['examples_per_sec']:.1f} | {row['total_seconds']:.0f} | {row['description']} |")
    return "\n".join(lines) + "\n"
