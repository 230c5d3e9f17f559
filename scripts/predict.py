"""Classify images with a fine-tuned model pulled by name: `python scripts/predict.py me/model img.jpg photos/`."""

import argparse
import sys
from pathlib import Path

from hf_finetune.cli import run_cli

OUTPUT_SUFFIXES = (".csv", ".jsonl")


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--int8", action="store_true", help="With --onnx: run model.int8.onnx (scripts/export.py "
                                                            "--quantize int8) instead of model.onnx.")
    return parser


def parse_args() -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args()
    if args.int8 and not args.onnx:
        parser.error("--int8 needs --onnx")
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be at least 1")
    if args.output and args.output.suffix not in OUTPUT_SUFFIXES:
        parser.error(f"--output must end in {' or '.join(OUTPUT_SUFFIXES)}")
    if args.output:  # made now, so that a bad path fails before the predictions rather than lose them
        try:
            args.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            parser.error(f"--output {args.output}: cannot create its folder ({error.strerror}); name another path")
        if args.output.is_dir():
            parser.error(f"--output {args.output} is a folder: name a {' or '.join(OUTPUT_SUFFIXES)} file")
    return args


def main() -> None:
    args = parse_args()
    from tqdm.auto import tqdm

    from hf_finetune.errors import UserError
    from hf_finetune.serve.batch_predict import Failure, TorchRunner, expand_inputs, predict_files, write_predictions

    paths, failures = expand_inputs(args.inputs)
    if not paths:
        raise UserError(f"no images in {', '.join(args.inputs)}: name image files, folders or quoted glob patterns")
    for failure in failures:
        print(f"skipping {failure.path}: {failure.reason}", file=sys.stderr)
    if args.onnx:
        from hf_finetune.serve.onnx_model import INT8_FILE, ONNX_FILE, load_onnx_classifier

        runner = load_onnx_classifier(args.model, INT8_FILE if args.int8 else ONNX_FILE)
    else:
        from hf_finetune.serve.predict import load_classifier

        runner = TorchRunner(load_classifier(args.model))
    predictions = []
    for result in predict_files(runner, paths, args.batch_size, args.top_k, None if args.tta == "none" else args.tta,
                                progress=args.output is not None):
        if isinstance(result, Failure):
            failures.append(result)
            tqdm.write(f"skipping {result.path}: {result.reason}", file=sys.stderr)  # on its own line, not the bar's
        elif args.output:
            predictions.append(result)
        else:
            decided = ("" if result.decided is None
                       else "\n  predicted: " + ", ".join(label for label, _ in result.decided))
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
