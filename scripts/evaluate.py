"""Evaluate a fine-tuned model on labelled images: `python scripts/evaluate.py out photos/val`."""

import argparse
from pathlib import Path

from hf_finetune.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="The model's metrics on labelled images, decoded, cropped and scored exactly as training's "
                    "evaluation: single-label, accuracy, top-5, macro-F1, balanced accuracy, per-class precision/"
                    "recall/F1 and the confusion matrix; multi-label, mAP, micro/macro-F1 at the model's "
                    "thresholds, exact match, hamming loss and per-label AP/precision/recall/F1. Writes "
                    "metrics.json, confusion_matrix.png (multi-label: per_label_ap.png), mistakes.png (the most "
                    "confident mistakes; multi-label: false positives and false negatives) and report.md. "
                    "Unreadable images are reported, skipped and counted.")
    parser.add_argument("model", help="A run's --output-dir, or a Hub id (me/model, hf-hub:me/model).")
    parser.add_argument("data", type=Path,
                        help="DATA/<class>/*.jpg (one split), or a tree with train/ and val/ (validation/, valid/, "
                             "test/): the first of those is evaluated; or a manifest (a .csv or .jsonl file, or a "
                             "folder with train.csv beside val.csv: the first eval split's), read as training reads "
                             "it.")
    parser.add_argument("--label-delimiter", default=None,
                        help="What separates several labels, as for training: in a manifest's label cell (default: "
                             "a space in CSV; JSONL takes a JSON list), or in a class folder's name ('_': red_dress/ "
                             "has the labels red and dress).")
    parser.add_argument("--output-dir", type=Path, default=Path("evaluation"),
                        help="Where metrics.json, the plot, mistakes.png and report.md go (default ./evaluation). "
                             "Files of those names that an earlier evaluation did not write (a run's) are kept: "
                             "the evaluation is refused.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Write over metrics.json, the plot, mistakes.png and report.md in --output-dir "
                             "whoever wrote them.")
    parser.add_argument("--tta", choices=["none", "flip"], default="none",
                        help="flip: average the logits of each image and its horizontal mirror image.")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
                        help="Autocast the forward (default fp32). A run evaluated under bf16 (its run_config.json's "
                             "mixed_precision) is reproduced with bf16.")
    parser.add_argument("--batch-size", type=int, default=32, help="Images per forward pass (default 32).")
    parser.add_argument("--mistakes", type=int, default=16,
                        help="How many confident mistakes to show (default 16); multi-label: this many false "
                             "positives and this many false negatives.")
    return parser


def parse_args() -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args()
    if args.batch_size < 1 or args.mistakes < 0:
        parser.error("--batch-size must be at least 1 and --mistakes at least 0")
    if args.label_delimiter == "":
        parser.error("--label-delimiter cannot be empty; e.g. ' ', ',', '|' or '_'")
    if not args.data.is_dir() and not (args.data.is_file() and args.data.suffix in (".csv", ".jsonl", ".json")):
        parser.error(f"{args.data}: no such folder or manifest; give a class-per-folder tree (DATA/<class>/*.jpg), "
                     "its root, or a .csv/.jsonl manifest")
    return args


def main() -> None:
    args = parse_args()
    import sys

    from hf_finetune.evaluate.evaluation import check_output_dir, describe, evaluate_folder
    from hf_finetune.evaluate.evaluation_report import write_evaluation
    from hf_finetune.serve.predict import load_classifier

    check_output_dir(args.output_dir, args.overwrite)
    classifier = load_classifier(args.model)
    result = evaluate_folder(classifier, args.data, args.tta == "flip", args.batch_size, args.mistakes,
                             args.mixed_precision, args.label_delimiter)
    for failure in result["unreadable"]:
        print(f"skipping {failure['path']}: {failure['reason']}", file=sys.stderr)
    summary = describe(result, classifier.task)
    written = write_evaluation(result, classifier, args.model, summary, args.output_dir)
    print(summary)
    print(f"written to {args.output_dir}: {', '.join(written)}")


if __name__ == "__main__":
    run_cli(main)
