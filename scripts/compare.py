"""The chapter's fine-tune vs scratch experiment (plus reuse, freeze, warm-up, and the d2l vs default recipe pair)

    python scripts/compare.py --output-dir cmp [--variants finetune,scratch] -- --data-dir photos --epochs 5

Everything after `--` is passed to every scripts/finetune.py run; the table is printed and written to
OUTPUT_DIR/comparison.json and OUTPUT_DIR/comparison.md.
"""

import argparse
import sys
from pathlib import Path

from hf_finetune.cli import run_cli
from hf_finetune.compare import VARIANTS, run_comparison


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="comparison", help="one sub-folder per variant, plus the table")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    args = parser.parse_args(argv[:split])
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run_comparison(argv[split + 1:], output_dir, args.variants.split(","))
    print((output_dir / "comparison.md").read_text())
    print(f"written: {output_dir / 'comparison.json'}, {output_dir / 'comparison.md'}")


if __name__ == "__main__":
    run_cli(main)
