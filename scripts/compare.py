"""The chapter's fine-tune vs scratch experiment (plus reuse, freeze, warm-up, and the d2l vs default recipe pair)

    python scripts/compare.py --output-dir cmp [--variants finetune,scratch] -- --data-dir photos --epochs 5

Everything after `--` is passed to every scripts/finetune.py run; the table is printed and written to
OUTPUT_DIR/comparison.json and OUTPUT_DIR/comparison.md.
"""

import argparse
import sys
from pathlib import Path

from hf_finetune.cli import run_cli
from hf_finetune.compare import VARIANTS, run_comparison, variant_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="comparison", help="one sub-folder per variant, plus the table")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    return parser


def main() -> None:
    from hf_finetune.config import parse_config

    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    args = parser.parse_args(argv[:split])
    output_dir, variants, user_args = Path(args.output_dir), args.variants.split(","), argv[split + 1:]
    if output_dir.exists() and not output_dir.is_dir():
        parser.error(f"--output-dir {output_dir} is a file: name a folder")
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    for name in variants:  # a bad training option fails now, not after the first variants have trained
        parse_config(variant_args(name, user_args, output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    run_comparison(user_args, output_dir, variants)
    print((output_dir / "comparison.md").read_text())
    print(f"written: {output_dir / 'comparison.json'}, {output_dir / 'comparison.md'}")


if __name__ == "__main__":
    run_cli(main)
