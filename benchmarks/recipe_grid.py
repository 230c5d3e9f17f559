"""The recipe grid behind ACCURACY.md: each (data, image size, epochs, variant, seed) cell is one ordinary run.

    python -m benchmarks.recipe_grid --data food101-30=../shared/data/food101-30 --img-size 64 --epochs 3 \
        --variant d2l="--recipe d2l" --variant default="" --seeds 0 1 2 --results grid.jsonl
    python -m benchmarks.recipe_grid --results grid.jsonl --table      # the markdown rows for ACCURACY.md
    python -m benchmarks.recipe_grid --results grid.jsonl --time-to-accuracy   # seconds to d2l's accuracy
    python -m benchmarks.recipe_grid --results grid.jsonl --replay-patience 2 3 25%   # early stopping, replayed

Every run is `python -m hf_finetune` from lite0's real ImageNet weights with the variant's flags, one at a time.
Each finished cell appends one JSON line (its command, the saved model's --metric and every epoch's, each
split's numbers, wall seconds, load average at start, CPU model, date) and is skipped when the results file
already has it, so an interrupted grid goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import REPO

LITE0 = REPO.parent / "shared" / "weights" / "tf_efficientnet_lite0.in1k"


def run_cell(data: str, root: str, img_size: int, epochs: int, variant: str, flags: str, seed: int, work: Path,
             metric: str) -> dict:
    from hf_finetune.hardware import cpu_model

    output = work / f"{data}-{img_size}-{epochs}-{variant}-{seed}"
    command = [sys.executable, "-m", "hf_finetune", "--model", f"local-dir:{LITE0}", "--data-dir", root,
               "--img-size", str(img_size), "--epochs", str(epochs), "--seed", str(seed), "--output-dir",
               str(output), "--cache-dir", str(work / "cache"), "--resume", "none", *shlex.split(flags)]
    load, start = os.getloadavg()[0], time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    metrics = json.loads((output / "metrics.json").read_text())
    run_config = json.loads((output / "run_config.json").read_text())
    selected = metrics["selected"]["selected"]["epoch"]
    return {"data": data, "img_size": img_size, "epochs": epochs, "variant": variant, "seed": seed,
            "flags": flags, "command": shlex.join(command[1:]), "selected_epoch": selected, "metric": metric,
            "score": next(row[metric] for row in metrics["history"] if row["epoch"] == selected),
            "epoch_scores": [row[metric] for row in metrics["history"]],
            "epoch_seconds": [row["epoch_seconds"] for row in metrics["history"]],  # train + eval pass
            # The saved model's numbers on each split (a test split's at the thresholds tuned on eval).
            "splits": {split: {name: value for name, value in numbers.items() if isinstance(value, float)}
                       for split, numbers in metrics["selected"].items() if split in ("eval", "test")},
            "recipe": run_config.get("recipe", {}).get("values"), "seconds": time.perf_counter() - start,
            "load_at_start": load, "cpu": cpu_model(), "date": datetime.now(timezone.utc).isoformat(timespec="minutes")}


def cell_key(row: dict) -> tuple:
    return row["data"], row["img_size"], row["epochs"], row["variant"], row["seed"]


def table(rows: list[dict]) -> str:
    """One markdown row per (data, size, epochs, variant): mean and per-seed score of the saved model."""
    cells = defaultdict(list)
    for row in rows:
        cells[cell_key(row)[:4]].append(row)
    lines = ["| data | px | epochs | variant | metric | mean | per seed (selected epoch) | seconds per run |",
             "|---|---|---|---|---|---|---|---|"]
    for (data, size, epochs, variant), runs in sorted(cells.items()):
        runs.sort(key=lambda row: row["seed"])
        seeds = " / ".join(f"{row['score']:.3f} ({row['selected_epoch']})" for row in runs)
        seconds = " / ".join(f"{row['seconds']:.0f}" for row in runs)
        lines.append(f"| {data} | {size} | {epochs} | {variant} | {runs[0]['metric']} | "
                     f"**{statistics.mean(r['score'] for r in runs):.3f}** | {seeds} | {seconds} |")
    return "\n".join(lines)


def time_to_accuracy(rows: list[dict]) -> str:
    """Per (data, size, epochs): wall seconds (train + eval, summed over epochs) until a variant's eval accuracy
    first reaches d2l's mean final accuracy, mean over the seeds that reach it."""
    cells = defaultdict(list)
    for row in rows:
        cells[cell_key(row)[:3]].append(row)
    lines = ["| data | px | epochs | target: d2l's mean final acc | variant | seeds reaching it | epochs to it "
             "(per seed) | seconds to it, mean | whole run, mean seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for (data, size, epochs), runs in sorted(cells.items()):
        baseline = [row["score"] for row in runs if row["variant"] == "d2l"]
        if not baseline:
            continue
        target = statistics.mean(baseline)
        for variant in sorted({row["variant"] for row in runs}):
            reached = []
            for row in (row for row in runs if row["variant"] == variant):
                first = next((i for i, acc in enumerate(row["epoch_scores"]) if acc >= target), None)
                reached.append(None if first is None else (first + 1, sum(row["epoch_seconds"][:first + 1])))
            hits = [hit for hit in reached if hit]
            whole = statistics.mean(sum(row["epoch_seconds"]) for row in runs if row["variant"] == variant)
            seconds = f"{statistics.mean(s for _, s in hits):.0f}" if hits else "-"
            lines.append(f"| {data} | {size} | {epochs} | {target:.3f} | {variant} | {len(hits)} of {len(reached)} | "
                         f"{' / '.join(str(hit[0]) if hit else '-' for hit in reached)} | {seconds} | {whole:.0f} |")
    return "\n".join(lines)


def patience_for(rule: str, epochs: int) -> int:
    """A --replay-patience rule: "N" epochs, or "P%" of the budget (rounded up, at least 2)."""
    return max(2, math.ceil(float(rule[:-1]) / 100 * epochs)) if rule.endswith("%") else int(rule)


def replay_patience(rows: list[dict], rules: list[str]) -> str:
    """What early stopping (`--patience`) would have done to each finished run, replayed from its metrics.json.

    Stopping a run early changes none of the epochs before the stop, so the model it would save is the best one
    by eval loss (the runs' --select-metric; a tie keeps the earlier epoch) among the epochs it ran: no run
    has to be repeated. Runs are grouped as d2l or lp-ft (every other variant) by budget."""
    groups = defaultdict(lambda: {"runs": 0, "epochs": 0, "saved": 0, "stopped": 0, "changed": [], "delta": 0.0})
    missing = 0
    for row in (row for row in rows if row["metric"] == "eval_acc"):
        argv = shlex.split(row["command"])
        metrics = Path(argv[argv.index("--output-dir") + 1]) / "metrics.json"
        if not metrics.exists():
            missing += 1
            continue
        history = json.loads(metrics.read_text())["history"]
        kept = history[row["selected_epoch"] - 1]  # the run's own saved model
        for rule in rules:
            patience, best, stop = patience_for(rule, row["epochs"]), history[0], row["epochs"]
            for epoch in history:
                best = epoch if epoch["eval_loss"] < best["eval_loss"] else best
                if epoch["epoch"] - best["epoch"] >= patience:
                    stop = epoch["epoch"]
                    break
            saved = min(history[:stop], key=lambda epoch: epoch["eval_loss"])  # the first of equals, as selection
            group = groups[rule, "d2l" if row["variant"] == "d2l" else "lp-ft", row["epochs"]]
            group["runs"] += 1
            group["epochs"] += row["epochs"]
            group["saved"] += row["epochs"] - stop
            group["stopped"] += stop < row["epochs"]
            group["delta"] += saved["eval_acc"] - kept["eval_acc"]
            if saved is not kept:
                group["changed"].append(f"{row['data']} {row['img_size']} px {row['variant']} seed {row['seed']} "
                                        f"{kept['eval_acc']:.3f} -> {saved['eval_acc']:.3f}")
    lines = ["| patience | recipe | epochs | runs | stopped early | epochs saved | saved model changed (acc before -> "
             "after) | mean acc change |", "|---|---|---|---|---|---|---|---|"]
    for (rule, recipe, epochs), group in sorted(groups.items()):
        lines.append(f"| {rule} | {recipe} | {epochs} | {group['runs']} | {group['stopped']} | {group['saved']} of "
                     f"{group['epochs']} ({group['saved'] / group['epochs']:.0%}) | "
                     f"{len(group['changed'])}{': ' + '; '.join(group['changed']) if group['changed'] else ''} | "
                     f"{100 * group['delta'] / group['runs']:+.2f} pts |")
    if missing:
        lines.append(f"\n{missing} finished runs left out: their run folders are gone")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", default=[], help="NAME=FOLDER (repeatable)")
    parser.add_argument("--img-size", type=int, nargs="+", default=[64])
    parser.add_argument("--epochs", type=int, nargs="+", default=[5])
    parser.add_argument("--variant", action="append", default=[], help='NAME="FLAGS" (repeatable)')
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--metric", default="eval_acc", help="the history column reported (e.g. eval_map)")
    parser.add_argument("--results", required=True, help="JSON lines file the cells are appended to")
    parser.add_argument("--work", default="/tmp/recipe_grid", help="run folders and the shared decode cache")
    parser.add_argument("--table", action="store_true", help="print the results file as markdown and stop")
    parser.add_argument("--time-to-accuracy", action="store_true",
                        help="print each variant's time to d2l's final accuracy as markdown and stop")
    parser.add_argument("--replay-patience", nargs="+", metavar="RULE",
                        help="print what early stopping after RULE epochs without improvement (N, or P%% of the "
                             "budget) would have done to each finished run, from its run folder, and stop")
    args = parser.parse_args()
    results = Path(args.results)
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    if args.replay_patience:
        print(replay_patience(rows, args.replay_patience))
        return
    if args.table or args.time_to_accuracy:
        print(table(rows) if args.table else time_to_accuracy(rows))
        return
    done = {cell_key(row) for row in rows}
    for data, root in (item.split("=", 1) for item in args.data):
        for size in args.img_size:
            for epochs in args.epochs:
                for seed in args.seeds:  # seeds outermost within a cell group: a cut-short grid has every variant
                    for variant, flags in (item.split("=", 1) for item in args.variant):
                        if (data, size, epochs, variant, seed) in done:
                            continue
                        row = run_cell(data, root, size, epochs, variant, flags, seed, Path(args.work), args.metric)
                        with results.open("a") as file:
                            file.write(json.dumps(row) + "\n")
                        print(f"{data} {size}px {epochs}ep {variant} seed {seed}: {row['score']:.3f} "
                              f"(epoch {row['selected_epoch']}, {row['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
