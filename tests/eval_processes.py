"""Run engine.evaluate under torchrun (or alone) on a fixed model and fixed images; print its metrics as JSON.

Each process sees whole batches of 4 from the same sequence, so every image's logits come from the same batch
whatever the process count; 20 images over 2 processes leave rank 1 a padded last batch that
gather_for_metrics must drop.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import timm
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_finetune.train.engine import evaluate  # noqa: E402
from hf_finetune.data.loaders import create_normalize  # noqa: E402
from hf_finetune.tasks.single_label import SingleLabel  # noqa: E402

NAMES = ["a", "b", "c", "d", "e", "f"]


def main() -> None:
    # torchrun gives each process one thread; the same here alone, so each convolution sums in the same order.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=len(NAMES)).eval()
    images = torch.randint(0, 256, (20, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    samples = [{"pixel_values": image, "label": (index * 7) % len(NAMES)} for index, image in enumerate(images)]
    normalize = create_normalize(model)  # from the bare model's data config, as parts.py does before prepare
    accelerator = Accelerator(cpu=True)
    model, loader = accelerator.prepare(model, DataLoader(samples, batch_size=4))
    parts = SimpleNamespace(model=model, eval_loader=loader, normalize=normalize, accelerator=accelerator,
                            task=SingleLabel(NAMES))
    metrics = {"plain": evaluate(parts), "tta": evaluate(parts, tta=True)}
    for result in metrics.values():
        del result["seconds"]
    if accelerator.is_main_process:
        print("METRICS " + json.dumps(metrics))
    accelerator.end_training()  # leaves the process group before exiting


if __name__ == "__main__":
    main()
