"""Pull a fine-tuned classifier by name (Hub id, `hf-hub:` id or local folder) and classify images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from .errors import UserError, first_line

ImageInput = Union[str, Path, "PIL.Image.Image"]  # noqa: F821 (PIL is imported lazily)


@dataclass
class Classifier:
    model: nn.Module  # in eval mode
    transform: Callable  # the model's own eval transform: resize by crop_pct, center crop, normalize
    label_names: list[str]


def timm_model_name(name_or_path: Union[str, Path]) -> str:
    """The `local-dir:` / `hf-hub:` name timm loads for a local folder, a Hub id or an `hf-hub:` id."""
    name = str(name_or_path)
    if name.startswith(("hf-hub:", "local-dir:")):
        return name
    if Path(name).is_dir():
        return f"local-dir:{name}"
    if Path(name).expanduser().is_absolute() or name.startswith(".") or name.count("/") != 1:
        raise UserError(f"{name}: no such model folder, and not a Hub id of the form 'user/model'")
    return f"hf-hub:{name}"


def load_classifier(name_or_path: Union[str, Path], cache_dir: Optional[Path] = None) -> Classifier:
    """The model with its eval transform and label names; `cache_dir` forces a download into that folder."""
    import timm
    from huggingface_hub.errors import RepositoryNotFoundError
    from timm.data import create_transform, resolve_model_data_config

    name = timm_model_name(name_or_path)
    try:
        model = timm.create_model(name, pretrained=True, cache_dir=cache_dir)
    except RepositoryNotFoundError:  # the Hub answers the same for a private repo without a token
        raise UserError(f"no model repo {name[len('hf-hub:'):]} on the Hub, or it is private: for a private repo "
                        "set HF_TOKEN or run `hf auth login`") from None
    except Exception as error:  # hub (missing, private, offline), timm (bad config) and IO errors alike
        hint = ("check the name, and for a private repo set HF_TOKEN or run `hf auth login`"
                if name.startswith("hf-hub:") else "point at the --output-dir of a finished run")
        raise UserError(f"could not load {name}: {first_line(error)}; {hint}") from None
    model.eval()
    label_names = list(model.pretrained_cfg.get("label_names") or [])
    if len(label_names) != model.num_classes:
        label_names = [str(index) for index in range(model.num_classes)]  # a model saved without its labels
    transform = create_transform(**resolve_model_data_config(model), is_training=False)
    return Classifier(model=model, transform=transform, label_names=label_names)


def predict(classifier: Classifier, images: Sequence[ImageInput], top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each image, the `top_k` (label, probability) pairs, most likely first."""
    if not images:
        return []
    batch = torch.stack([classifier.transform(open_rgb(image)) for image in images])
    with torch.no_grad():
        probabilities = classifier.model(batch).softmax(dim=-1)
    values, indices = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
    return [[(classifier.label_names[index], float(value)) for value, index in zip(row_values, row_indices)]
            for row_values, row_indices in zip(values.tolist(), indices.tolist())]


def open_rgb(image: ImageInput):
    """An RGB PIL image, upright per its EXIF orientation as `datasets` decodes training images."""
    from PIL import Image, ImageOps

    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image).convert("RGB")
    try:
        with Image.open(image) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"cannot read image {image}: {first_line(error)}") from None

