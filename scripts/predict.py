"""Classify images with a fine-tuned model pulled by name: `python scripts/predict.py me/model img.jpg`."""

import argparse

from hf_finetune.cli import run_cli


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Print the top-k labels and probabilities of each image, using the model's own eval "
                    "transforms. Output: the image path, then one '  PROBABILITY  LABEL' line per label.")
    parser.add_argument("model", help="Hub id (me/model), hf-hub:me/model, or a local model folder "
                                      "(the --output-dir of a run).")
    parser.add_argument("images", nargs="+", help="Image files (any format Pillow reads).")
    parser.add_argument("--top-k", type=int, default=5, help="How many labels to print per image (default 5).")
    args = parser.parse_args()
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")

    from hf_finetune.predict import load_classifier, predict

    classifier = load_classifier(args.model)
    # predict decodes every file (as training's evaluation does) before any output.
    for path, top in zip(args.images, predict(classifier, args.images, args.top_k)):
        print(path)
        for label, probability in top:
            print(f"  {probability:.4f}  {label}")


if __name__ == "__main__":
    run_cli(main)
