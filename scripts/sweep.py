"""Hyper-parameter search with Optuna (TPE, median pruning): each trial is an ordinary finetune run.

    python scripts/sweep.py --n-trials 20 --timeout 1h --storage sqlite:///sweep.db --output-dir sweep \\
        -- --data-dir photos --model resnet18

Everything after `--` is passed to every trial (as to scripts/finetune.py); the trial's searched values come
after it. Run the same command again to resume the study after a crash, or on other machines sharing the
storage to search together. The sweep folder gets trial-N/ (the runs), best.yaml (`finetune --config`),
trials.csv / trials.md, optimization_history.png and param_importances.png. Multi-GPU: `accelerate launch
scripts/sweep.py ...` trains each trial on all processes. Needs `pip install "hf_finetune[sweep]"`.
"""

import argparse
import re
import sys
from pathlib import Path

from hf_finetune.cli import configure_logging, run_cli


def duration(text: str) -> float:
    """Seconds from '90', '90s', '30m' or '1.5h'."""
    match = re.fullmatch(r"([0-9.]+)\s*([smh]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 3600, 45m or 1h, got {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-trials", type=int, default=20,
                        help="finished (complete or pruned) trials the study should hold, counting every process's")
    parser.add_argument("--timeout", type=duration, help="start no trial after this long (e.g. 1h, 45m, 600)")
    parser.add_argument("--storage", help="Optuna storage URL (any SQLAlchemy URL: sqlite:///sweep.db, "
                                          "postgresql://...); default: sqlite in the output folder")
    parser.add_argument("--study-name", default="sweep", help="the study in the storage")
    parser.add_argument("--output-dir", default="sweep", help="trial-N/ run folders and the results")
    parser.add_argument("--space", help="YAML file replacing options of the default search space (see README)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    parser.add_argument("--prune-startup-trials", type=int, default=5,
                        help="the median pruner prunes nothing until this many trials finished")
    parser.add_argument("--prune-warmup-epochs", type=int, default=0,
                        help="the median pruner prunes no trial within its first this many epochs")
    parser.add_argument("--heartbeat", type=int, default=60,
                        help="seconds between a running trial's heartbeats; one silent for twice as long (its "
                             "process died) is failed and run again, from its last checkpoint")
    return parser


def parse_args(argv: list[str]):
    split = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    args = parser.parse_args(argv[:split])
    if args.n_trials < 1 or args.heartbeat < 1:
        parser.error("--n-trials and --heartbeat must be at least 1")
    if args.prune_startup_trials < 0 or args.prune_warmup_epochs < 0:
        parser.error("--prune-startup-trials and --prune-warmup-epochs cannot be negative")
    if args.space and not Path(args.space).is_file():
        parser.error(f"--space {args.space}: no such file")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output-dir {args.output_dir} is a file: name a folder")
    return args, argv[split + 1:]


def main() -> None:
    args, finetune_args = parse_args(sys.argv[1:])
    configure_logging()
    from hf_finetune.sweep.search import SweepSettings, sweep

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(output_dir / 'sweep.db').resolve()}"
    sweep(finetune_args, args.space, SweepSettings(
        storage=storage, study_name=args.study_name, output_dir=output_dir, n_trials=args.n_trials,
        timeout=args.timeout, seed=args.seed, prune_startup_trials=args.prune_startup_trials,
        prune_warmup_epochs=args.prune_warmup_epochs, heartbeat=args.heartbeat))


if __name__ == "__main__":
    run_cli(main)
