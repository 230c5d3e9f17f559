"""LR range test: `python scripts/find_lr.py [--plot lr_find.png] [--steps N] -- FINETUNE OPTIONS`.

Takes the same data, model, recipe and regularizer options as scripts/finetune.py (after `--`), sweeps the
learning rate exponentially, writes the plot (default ./lr_find.png) and prints a suggested --lr and how it was
chosen. Nothing is written to --output-dir.
"""

import argparse
import sys
from pathlib import Path

from hf_finetune.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plot", type=Path, default=Path("lr_find.png"), help="where the loss-vs-LR plot goes")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps of the sweep; default 200, or 5 epochs' worth (at least 30) if fewer")
    parser.add_argument("--start-lr", type=float, default=1e-7)
    parser.add_argument("--end-lr", type=float, default=1.0)
    return parser


def main() -> None:
    from hf_finetune.cli import configure_logging
    from hf_finetune.config import parse_config
    from hf_finetune.train.lr_find import find_lr, plot_range_test

    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    args = parser.parse_args(argv[:split])
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if not 0 < args.start_lr < args.end_lr:
        parser.error(f"need 0 < --start-lr < --end-lr, got {args.start_lr:g} and {args.end_lr:g}")
    check_plot_path(parser, args.plot)
    config = parse_config(argv[split + 1:])
    configure_logging()
    test = find_lr(config, args.steps, args.start_lr, args.end_lr)
    path = plot_range_test(test, args.plot)
    print(f"swept {len(test.lrs)} steps from lr {test.lrs[0]:.2g} to {test.lrs[-1]:.2g}; plot: {path}")
    print(f"suggested --lr {test.suggestion:.2g}: {test.reason} (the minimum / 10 would be "
          f"{test.minimum_over_10:.2g})")


def check_plot_path(parser: argparse.ArgumentParser, plot: Path) -> None:
    """A plot path matplotlib cannot write fails now, not after the sweep."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if plot.suffix.lstrip(".").lower() not in formats:
        parser.error(f"--plot {plot}: name a file ending in one of .{', .'.join(sorted(formats))}")
    try:
        plot.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--plot {plot}: cannot create its folder ({error.strerror}); name another path")


if __name__ == "__main__":
    run_cli(main)
