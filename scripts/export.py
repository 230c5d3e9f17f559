"""Export a fine-tuned classifier for serving: `python scripts/export.py out --format onnx [--push-to-hub me/model]`."""

import argparse
from pathlib import Path

from hf_finetune.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export the model to ONNX (dynamic batch axis, the model's own input size) with preprocessor.json "
                    "(input size, mean/std, interpolation, crop, label names, the exact preprocessing). onnxruntime's "
                    "logits are checked against PyTorch's before anything is kept. Needs the onnx extra: "
                    'pip install -e ".[onnx]".')
    parser.add_argument("source", help="A run's --output-dir, or a Hub id (me/model, hf-hub:me/model).")
    parser.add_argument("--format", choices=["onnx"], required=True, help="The export format (onnx).")
    parser.add_argument("--output-dir", type=Path,
                        help="Where model.onnx and preprocessor.json go (default: SOURCE when it is a folder).")
    parser.add_argument("--check-images", type=Path, nargs="+",
                        help="Real images to check the export on (default: the first 3 of the run's data folder).")
    parser.add_argument("--quantize", choices=["int8"],
                        help="Also write model.int8.onnx (onnxruntime static quantization, QDQ, per-channel int8 "
                             "weights) calibrated on 300 of the run's training images, and keep it only if its "
                             "top-1 label agrees with model.onnx's on >= 98%% of the run's eval split, or, for a "
                             "multi-label model, if its eval mAP is at most 1 point below model.onnx's "
                             "(model.int8.json records both accuracies or mAPs). SOURCE must be a run whose image "
                             "folder or manifests are here.")
    parser.add_argument("--push-to-hub", metavar="REPO",
                        help="Add model.onnx + preprocessor.json (and, from a run folder, the card with onnxruntime "
                             "usage) to this model repo in one commit. The token comes from HF_TOKEN or "
                             "`hf auth login`.")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.output_dir and args.output_dir.exists() and not args.output_dir.is_dir():
        parser.error(f"--output-dir {args.output_dir} is a file: name a folder")
    missing = [str(path) for path in args.check_images or () if not path.is_file()]
    if missing:
        parser.error(f"--check-images: no such file {', '.join(missing)}")

    from hf_finetune.publish.export import export_onnx

    if args.push_to_hub:
        from hf_finetune.publish.hub import check_push_possible

        check_push_possible(args.push_to_hub)  # a bad repo id or a missing token fails before the export
    if args.quantize:
        from hf_finetune.publish.quantize import run_images

        run_images(Path(args.source))  # a source without its image folder fails before the export
    result = export_onnx(args.source, args.output_dir, args.check_images)
    print(f"exported {result.onnx_path} and {result.preprocessor_path}: onnxruntime matches PyTorch on a fixed batch "
          f"and {result.checked_images} real image(s) (max abs logit difference {result.max_abs_difference:.2g})")
    if not result.checked_images:
        print("note: no real images were checked (pass --check-images)")
    if args.quantize:
        from hf_finetune.publish.quantize import quantize_int8

        int8 = quantize_int8(Path(args.source), result.onnx_path.parent)
        print(f"quantized {int8.int8_path}: {int8.summary()}; calibrated on {int8.calibration_images} training images")
    if args.push_to_hub:
        from hf_finetune.publish.hub import push_onnx
        from hf_finetune.serve.onnx_model import INT8_FILE, INT8_RECORD

        run_dir = Path(args.source) if (Path(args.source) / "run_config.json").is_file() else None
        # Only an int8 model quantized by this very command: one left by an earlier export may be of other weights.
        int8_files = (INT8_FILE, INT8_RECORD) if args.quantize else ()
        print(f"pushed: {push_onnx(result.onnx_path.parent, args.push_to_hub, run_dir, int8_files)}")


if __name__ == "__main__":
    run_cli(main)
