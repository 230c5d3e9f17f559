"""Publish a finished run to the Hub (or re-try a failed push): `python scripts/push.py OUTPUT_DIR REPO_ID`."""

import argparse
import logging
from pathlib import Path

from hf_finetune.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Push config.json, model.safetensors, the model card (README.md, regenerated for REPO_ID) "
                    "and training_curves.png from a finished run's --output-dir to the Hub in one commit, then "
                    "pull the repo back by name and check its logits. The token comes from HF_TOKEN or "
                    "`hf auth login`; set HF_ENDPOINT for another Hub.")
    parser.add_argument("output_dir", type=Path, help="The --output-dir of a finished scripts/finetune.py run.")
    parser.add_argument("repo_id", help="Model repo to create or update, e.g. me/hotdog-resnet18.")
    parser.add_argument("--hub-public", action="store_true",
                        help="Create the repo public (default: private). An existing repo keeps its visibility.")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if not args.output_dir.is_dir():
        parser.error(f"{args.output_dir}: no such folder; give the --output-dir of a finished scripts/finetune.py run")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")  # retries are worth seeing

    from hf_finetune.publish.hub import push_to_hub

    print(f"pushed and verified {args.repo_id}: {push_to_hub(args.output_dir, args.repo_id, not args.hub_public)}")


if __name__ == "__main__":
    run_cli(main)
