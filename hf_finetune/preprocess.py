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

from .hardware import one_thread
from .images import ImageSettings, decode_for_model
from .loaders import Normalize, create_transforms

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
        """The eval crop of a file path or PIL image; BadImageError (with the reason) when it is unusable."""
        pixels = decode_for_model(image_source(image), self.settings)
        with one_thread():  # per-image work, as in the eval loader
            return self.eval_transform(torch.from_numpy(pixels).permute(2, 0, 1))

    def batch(self, images: list) -> torch.Tensor:
        """The model's float input for `images` (their crops stacked and normalized)."""
        return self.normalize(torch.stack([self.crop(image) for image in images]))

    def __call__(self, image: ImageInput) -> torch.Tensor:
        return self.normalize(self.crop(image).unsqueeze(0))[0]


def image_source(image: ImageInput):
    """What `images.load_rgb` reads: a datasets-style {"path", "bytes"} for a file, or the PIL image itself."""
    if isinstance(image, (str, Path)):
        return {"path": str(image), "bytes": None}
    return image

