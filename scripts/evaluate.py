"""Evaluate a fine-tuned model on labelled images: `python scripts/evaluate.py out photos/val`."""

import argparse
from pathlib import Path

from hf_finetune.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Accuracy, top-5, macro-F1, balanced accuracy, per-class precision/recall/F1 and the confusion "
                    "matrix of a model on a class-per-folder tree, decoded, cropped and scored exactly as training's "
                    "evaluation. Writes metrics.json, confusion_matrix.png and mistakes.png (the most confident "
                    "mistakes). Unreadable images are reported, skipped and counted.")
    parser.add_argument("model", help="A run's --output-dir, or a Hub id (me/model, hf-hub:me/model).")
    parser.add_argument("data", type=Path, help="DATA/<class>/*.jpg (one split), or a tree with train/ and val/ "
                                                "(validation/, valid/, test/): the first of those is evaluated.")
    parser.add_argument("--output-dir", type=Path, default=Path("evaluation"),
                        help="Where metrics.json, confusion_matrix.png and mistakes.png go (default ./evaluation). "
                             "Files of those names that an earlier evaluation did not write (a run's) are kept: "
                             "the evaluation is refused.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Write over metrics.json, confusion_matrix.png and mistakes.png in --output-dir "
                             "whoever wrote them.")
    parser.add_argument("--tta", choices=["none", "flip"], default="none",
                        help="flip: average the logits of each image and its horizontal mirror image.")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
                        help="Autocast the forward (default fp32). A run evaluated under bf16 (its run_config.json's "
                             "mixed_precision) is reproduced with bf16.")
    parser.add_argument("--batch-size", type=int, default=32, help="Images per forward pass (default 32).")
    parser.add_argument("--mistakes", type=int, default=16, help="How many confident mistakes to show (default 16).")
    return parser


def parse_args() -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args()
    if args.batch_size < 1 or args.mistakes < 0:
        parser.error("--batch-size must be at least 1 and --mistakes at least 0")
    if not args.data.is_dir():
        parser.error(f"{args.data}: no such folder; give a class-per-folder tree (DATA/<class>/*.jpg) or its root")
    return args


def main() -> None:
    args = parse_args()
    import sys

    from hf_finetune.evaluate.evaluation import check_output_dir, describe, evaluate_folder, plot_mistake_grid
    from hf_finetune.files import write_json
    from hf_finetune.evaluate.plots import plot_confusion_matrix
    from hf_finetune.serve.predict import load_classifier

    check_output_dir(args.output_dir, args.overwrite)
    classifier = load_classifier(args.model)
    result = evaluate_folder(classifier, args.data, args.tta == "flip", args.batch_size, args.mistakes,
                             args.mixed_precision)
    for failure in result["unreadable"]:
        print(f"skipping {failure['path']}: {failure['reason']}", file=sys.stderr)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.output_dir / "metrics.json", result)
    plot_confusion_matrix(result["confusion_matrix"], result["label_names"], args.output_dir / "confusion_matrix.png")
    plot_mistake_grid(result["mistakes"], classifier, args.output_dir / "mistakes.png")
    print(describe(result, classifier.task))
    print(f"written to {args.output_dir}: metrics.json, confusion_matrix.png, mistakes.png")


if __name__ == "__main__":
    run_cli(main)
