"""Pull a fine-tuned classifier by name (Hub id, `hf-hub:` id or local folder) and classify images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from hf_finetune.errors import UserError, first_line
from hf_finetune.hardware import one_thread
from hf_finetune.data.images import BadImageError
from hf_finetune.serve.preprocess import EvalPreprocess, ImageInput
from hf_finetune.tasks import Task, task_of_saved_model


@dataclass
class Classifier:
    model: nn.Module  # in eval mode
    # Training's evaluation preprocessing (decoder, uint8 resize by crop_pct + center crop, Normalize):
    # transform(image) is one image's float input, transform.crop / transform.normalize the batched steps.
    transform: EvalPreprocess
    label_names: list[str]
    task: Task  # its activation and decision rule: what a prediction reports


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
    return Classifier(model=model, transform=EvalPreprocess.for_model(model), label_names=label_names,
                      task=task_of_saved_model(saved_config(name, cache_dir), label_names))


def saved_config(name: str, cache_dir: Optional[Path] = None) -> dict:
    """The model's config.json (timm keeps only its pretrained_cfg; the task's entries are top-level), from the
    folder or from the Hub cache timm just filled."""
    import json

    if name.startswith("local-dir:"):
        path = Path(name[len("local-dir:"):]) / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        repo_id, _, revision = name[len("hf-hub:"):].partition("@")  # timm's `hf-hub:user/model@revision`
        path = Path(hf_hub_download(repo_id, "config.json", revision=revision or None, cache_dir=cache_dir))
    return json.loads(path.read_text()) if path.is_file() else {}


def predict(classifier: Classifier, images: Sequence[ImageInput], top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each image (a path or a PIL image), the `top_k` (label, score) pairs, most likely first (its task's
    scores: softmax probabilities for a single-label model)."""
    if not images:
        return []
    return classifier.task.top_labels(image_logits(classifier, images), top_k)


def image_logits(classifier: Classifier, images: Sequence[ImageInput]) -> torch.Tensor:
    """The model's logits [images, labels] of the images' eval crops (its task turns them into scores and
    decisions)."""
    with one_thread():
        crops = [eval_crop(classifier.transform, image) for image in images]
    batch = classifier.transform.normalize(torch.stack(crops))
    with torch.no_grad():
        return classifier.model(batch)


def eval_crop(preprocess: EvalPreprocess, image: ImageInput) -> torch.Tensor:
    """The image's eval crop; a UserError naming the file when it cannot be read."""
    try:
        return preprocess.crop(image)
    except BadImageError as error:
        raise UserError(f"cannot read image {image}: {error}") from None


def open_rgb(image: ImageInput):
    """An upright RGB PIL image, decoded as training decodes it (`images.load_rgb`, full size)."""
    from PIL import Image

    from hf_finetune.data.images import load_rgb
    from hf_finetune.serve.preprocess import image_source

    try:
        return Image.fromarray(load_rgb(image_source(image)))
    except BadImageError as error:
        raise UserError(f"cannot read image {image}: {error}") from None
