"""Benchmarks of hf_finetune against the d2l Fine-Tuning chapter's pipeline; results go to BENCHMARKS.md.

    python -m benchmarks.run [--data-dir PHOTOS] [--profile]    # loaders, cache build, training, accuracy
    python -m benchmarks.precision                              # one training step per number format
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
