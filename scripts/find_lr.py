"""LR range test: `python scripts/find_lr.py [--plot lr_find.png] [--steps N] -- FINETUNE OPTIONS`.

Takes the same data, model, recipe and regularizer options as scripts/finetune.py (after `--`), sweeps the
learning rate exponentially, writes the plot (default ./lr_find.png) and prints a suggested --lr and how it was
chosen. Nothing is written to --output-dir.
"""

import argparse
import sys

from hf_finetune.cli import run_cli


def main() -> None:
    from hf_finetune.cli import configure_logging
    from hf_finetune.config import parse_config
    from hf_finetune.train.lr_find import find_lr, plot_range_test

    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plot", default="lr_find.png", help="where the loss-vs-LR plot goes")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps of the sweep; default 200, or 5 epochs' worth (at least 30) if fewer")
    parser.add_argument("--start-lr", type=float, default=1e-7)
    parser.add_argument("--end-lr", type=float, default=1.0)
    args = parser.parse_args(argv[:split])
    config = parse_config(argv[split + 1:])
    configure_logging()
    test = find_lr(config, args.steps, args.start_lr, args.end_lr)
    path = plot_range_test(test, args.plot)
    print(f"swept {len(test.lrs)} steps from lr {test.lrs[0]:.2g} to {test.lrs[-1]:.2g}; plot: {path}")
    print(f"suggested --lr {test.suggestion:.2g}: {test.reason} (the minimum / 10 would be "
          f"{test.minimum_over_10:.2g})")


if __name__ == "__main__":
    run_cli(main)
