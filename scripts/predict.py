"""Classify images with a fine-tuned model pulled by name: `python scripts/predict.py me/model img.jpg photos/`."""

import argparse
import sys
from pathlib import Path

from hf_finetune.cli import run_cli

OUTPUT_SUFFIXES = (".csv", ".jsonl")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The top-k labels and probabilities of each image, decoded and cropped exactly as training's "
                    "evaluation does. Without --output: the image path, then one '  PROBABILITY  LABEL' line per "
                    "label. Unreadable files are reported on stderr and skipped; the exit code is then 1.")
    parser.add_argument("model", help="Hub id (me/model), hf-hub:me/model, or a local model folder "
                                      "(the --output-dir of a run; with --onnx, a folder or repo with model.onnx).")
    parser.add_argument("inputs", nargs="+", help="Image files, folders (searched recursively) and glob patterns "
                                                  "(quote them: 'photos/**/*.jpg').")
    parser.add_argument("--top-k", type=int, default=5, help="How many labels per image (default 5).")
    parser.add_argument("--batch-size", type=int, default=32, help="Images per forward pass (default 32).")
    parser.add_argument("--output", type=Path, help="Write the predictions to this .csv (path, label_1, "
                                                    "probability_1, ...) or .jsonl file instead of printing them.")
    parser.add_argument("--tta", choices=["none", "flip"], default="none",
                        help="flip: average the logits of each image and its horizontal mirror image.")
    parser.add_argument("--onnx", action="store_true", help="Run the exported model.onnx (scripts/export.py) with "
                                                            "onnxruntime instead of PyTorch.")
    args = parser.parse_args()
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be at least 1")
    if args.output and args.output.suffix not in OUTPUT_SUFFIXES:
        parser.error(f"--output must end in {' or '.join(OUTPUT_SUFFIXES)}")
    return args


def main() -> None:
    args = parse_args()
    from tqdm.auto import tqdm

    from hf_finetune.serve.batch_predict import Failure, TorchRunner, expand_inputs, predict_files, write_predictions

    if args.onnx:
        from hf_finetune.serve.onnx_model import load_onnx_classifier

        runner = load_onnx_classifier(args.model)
    else:
        from hf_finetune.serve.predict import load_classifier

        runner = TorchRunner(load_classifier(args.model))
    paths, failures = expand_inputs(args.inputs)
    for failure in failures:
        print(f"skipping {failure.path}: {failure.reason}", file=sys.stderr)
    predictions = []
    for result in predict_files(runner, paths, args.batch_size, args.top_k, None if args.tta == "none" else args.tta,
                                progress=args.output is not None):
        if isinstance(result, Failure):
            failures.append(result)
            tqdm.write(f"skipping {result.path}: {result.reason}", file=sys.stderr)  # on its own line, not the bar's
        elif args.output:
            predictions.append(result)
        else:
            decided = "" if result.decided is None else "\n  predicted: " + ", ".join(label for label, _ in result.decided)
            print(result.path + "".join(f"\n  {probability:.4f}  {label}" for label, probability in result.top)
                  + decided)
    if args.output:
        write_predictions(args.output, predictions, args.top_k)
        print(f"{len(predictions)} predictions written to {args.output}")
    if failures:
        print(f"error: {len(failures)} input(s) could not be read (listed above); the others were predicted",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
