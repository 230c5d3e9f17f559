"""What one image file becomes before augmentation: upright 8-bit RGB, resized for the model's transforms.

Real folders hold files that PIL half-reads. It decodes lazily, so a truncated JPEG opens fine and fails
mid-epoch; `convert("RGB")` clips 16-bit PNGs to white and shows the colour hidden under transparent
pixels; phone photos lie on their side until EXIF is applied. `load_rgb` handles each case or raises
`BadImageError` with a one-line reason, and is the only decoder the cache, `--no-cache` and prediction use.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from hf_finetune.errors import UserError

# Transparent pixels are composited on white, the background most cut-outs and logos are drawn for.
BACKGROUND = (255, 255, 255)
CROP_MODES = ("center", "squash")


class BadImageError(Exception):
    """A file that cannot be used as an image; the message is the reason, for one line of a report."""


@dataclass(frozen=True)
class ImageSettings:
    """The backbone's data config (resolved by timm) in the terms the uint8 pipeline needs."""

    input_size: tuple[int, int]  # (height, width) fed to the model
    scale_size: tuple[int, int]  # the eval resize before the center crop: input_size / crop_pct, as timm
    crop_mode: str  # timm's eval crop mode
    interpolation: str  # timm's name: 'bicubic', 'bilinear', ...
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_model(cls, model: nn.Module) -> "ImageSettings":
        from timm.data import resolve_model_data_config

        return cls.from_data_config(resolve_model_data_config(model))

    @classmethod
    def from_data_config(cls, config: dict) -> "ImageSettings":
        """From timm's data config keys: input_size (C, H, W), crop_pct, crop_mode, interpolation, mean, std."""
        crop_mode = config.get("crop_mode") or "center"
        if crop_mode not in CROP_MODES:
            raise UserError(f"the model's data config has crop_mode {crop_mode!r}; supported: {', '.join(CROP_MODES)}")
        input_size = tuple(config["input_size"][1:])
        scale_size = tuple(math.floor(side / config["crop_pct"]) for side in input_size)
        return cls(input_size=input_size, scale_size=scale_size, crop_mode=crop_mode,
                   interpolation=config["interpolation"], mean=tuple(config["mean"]), std=tuple(config["std"]))

    @property
    def short_side(self) -> int:
        """The shorter side images are stored at: the larger of the train crop and the eval resize.

        Eval then center-crops what timm's eval transform would (the same resize), and a
        RandomResizedCrop covering most of the image is a downscale. Crops of scale s below
        ~(train size / short side)^2 (0.77 at 224/256) are upscaled from this copy rather than from the
        original; serving even the smallest (s = 0.08) at full detail would need a 3.5x larger side,
        ~12x the storage and resize work per epoch, for detail only the most zoomed-in crops would see.
        """
        return max(*self.input_size, *self.scale_size)


def load_rgb(image: Union[dict, Image.Image], short_side: Optional[int] = None,
             interpolation: str = "bicubic") -> np.ndarray:
    """Fully decode an undecoded datasets image ({"bytes", "path"}) or a PIL image into HWC uint8 RGB, upright,
    its shorter side reduced to `short_side` (never enlarged). Raises BadImageError for anything unusable."""
    try:
        with _open(image) as opened:
            if short_side:
                # JPEG only: libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below the requested size;
                # every byte is still decoded, so truncation is still found.
                scale = short_side / min(opened.size)
                opened.draft(opened.mode, (math.ceil(opened.width * scale), math.ceil(opened.height * scale)))
            opened.load()
            ImageOps.exif_transpose(opened, in_place=True)
            pixels = np.array(_to_rgb(opened))  # a writable copy: torch.from_numpy warns on read-only arrays
    except (BadImageError, MemoryError):
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error... for broken files
        raise BadImageError(f"{type(error).__name__}: {error}") from None
    if short_side and min(pixels.shape[:2]) > short_side:
        from timm.data.transforms import str_to_interp_mode
        from torchvision.transforms.v2 import functional as F

        # timm's eval resize (torchvision Resize of the shorter side, the same filter), with torch's
        # antialiased uint8 kernel on the channels-last view: ~5x faster than PIL's, within one level of it.
        resized = F.resize(torch.from_numpy(pixels).permute(2, 0, 1), [short_side],
                           interpolation=str_to_interp_mode(interpolation), antialias=True)
        pixels = np.ascontiguousarray(resized.permute(1, 2, 0).numpy())
    return pixels


def decode_for_model(image: Union[dict, Image.Image], settings: ImageSettings) -> np.ndarray:
    """What the decode-once cache stores (and --no-cache and prediction decode): `load_rgb` at the size the
    model's transforms start from."""
    return load_rgb(image, settings.short_side, settings.interpolation)


def _open(image: Union[dict, Image.Image]) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.copy()  # load_rgb transposes and closes what it opens: the caller's image stays as it is
    data, path = image.get("bytes"), image.get("path")
    if data is None and path is None:
        raise BadImageError("no image data")
    try:
        opened = Image.open(io.BytesIO(data) if data is not None else path)  # reads the header only
    except Image.DecompressionBombError as error:  # more than 2x MAX_IMAGE_PIXELS
        raise _refused_as_bomb(str(error)) from None
    except UnidentifiedImageError:
        empty = len(data) == 0 if data is not None else os.path.getsize(path) == 0
        raise BadImageError("empty file" if empty else "not an image PIL can read") from None
    except FileNotFoundError:
        raise BadImageError("file not found") from None
    # Between 1x and 2x PIL only warns. Refused here on the header, not by making that warning an error:
    # warning filters are process-wide, and images are decoded on threads that would undo each other's.
    pixels = opened.width * opened.height
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        opened.close()
        raise _refused_as_bomb(f"image size ({pixels} pixels) exceeds limit of {Image.MAX_IMAGE_PIXELS} pixels")
    return opened


def _refused_as_bomb(detail: str) -> BadImageError:
    return BadImageError(f"refused as a possible decompression bomb ({detail}); the limit is "
                         "PIL.Image.MAX_IMAGE_PIXELS")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):
        # 16-bit grayscale (I;16*, and PNGs read as 32-bit I): convert() would clip to 255, i.e. white.
        scaled = np.round(np.asarray(image, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(scaled)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
