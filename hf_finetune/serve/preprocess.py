"""An image file made into the model's input exactly as training's evaluation makes it.

Evaluation decodes with `images.load_rgb` at `ImageSettings.short_side` (what the decode-once cache stores),
applies the uint8 eval transform of `loaders.create_transforms` (timm's resize by crop_pct + center crop) and
normalizes whole batches with `loaders.Normalize`. Prediction, the ONNX export's check and `--onnx`
prediction reuse those three pieces, so a photo gets the answer it got in evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from hf_finetune.hardware import one_thread
from hf_finetune.data.images import ImageSettings, decode_for_model
from hf_finetune.data.loaders import Normalize, create_transforms

ImageInput = Union[str, Path, "PIL.Image.Image"]  # noqa: F821 (PIL is imported lazily)


class EvalPreprocess:
    """`crop(image)`: CHW uint8 eval crop; `normalize(batch)`: NCHW uint8 -> the model's float input;
    calling it on one image gives its CHW float input (timm's eval transform, the training pipeline's way)."""

    def __init__(self, settings: ImageSettings):
        self.settings = settings
        self.eval_transform = create_transforms(settings)[1]
        self.normalize = Normalize(settings)

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> "EvalPreprocess":
        return cls(ImageSettings.from_model(model))

    def crop(self, image: ImageInput) -> torch.Tensor:
        """The eval crop of a file path or PIL image; BadImageError (with the reason) when it is unusable.
        Per-image work: run it under hardware.one_thread(), as the eval loader does (callers decoding on
        several threads set it once around them all: torch's thread count is global to the process)."""
        pixels = decode_for_model(image_source(image), self.settings)
        return self.eval_transform(torch.from_numpy(pixels).permute(2, 0, 1))

    def __call__(self, image: ImageInput) -> torch.Tensor:
        with one_thread():
            crop = self.crop(image)
        return self.normalize(crop.unsqueeze(0))[0]


def image_source(image: ImageInput):
    """What `images.load_rgb` reads: a datasets-style {"path", "bytes"} for a file, or the PIL image itself."""
    if isinstance(image, (str, Path)):
        return {"path": str(image), "bytes": None}
    return image

