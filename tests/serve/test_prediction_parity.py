"""Prediction sees what evaluation saw: the same photo gets the same probabilities from `predict` as from
training's evaluation pass (the decode-once cache + the eval loader + Normalize), however odd the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from paths import HOTDOG_MINI, LITE0_WEIGHTS
from PIL import Image

from hf_finetune.data.cache import prepare_images
from hf_finetune.config import FinetuneConfig
from hf_finetune.data.sources import load_image_folder
from hf_finetune.data.loaders import create_dataloaders, create_normalize
from hf_finetune.serve.predict import load_classifier, predict

def _photo(size=(640, 480)) -> Image.Image:
    """A real photo, enlarged past the model's eval resize so that JPEG draft decoding and resizing matter."""
    return Image.open(sorted((HOTDOG_MINI / "val" / "hotdog").iterdir())[0]).convert("RGB").resize(size)


def _odd_images(folder: Path) -> list[Path]:
    """One file of each kind `convert("RGB")` and timm's PIL transform read differently from training."""
    folder.mkdir(parents=True)
    photo = _photo()
    photo.save(folder / "plain.jpg", quality=90)
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))  # transparent at the top: white there
    rgba.save(folder / "rgba.png")
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "palette.png", transparency=3)
    gray16 = (np.asarray(photo.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "gray16.png")  # convert("RGB") clips it to white
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown rotated 90 degrees clockwise
    photo.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", quality=90, exif=exif)
    photo.convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    photo.convert("L").save(folder / "gray.jpg", quality=90)
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    _odd_images(root / "val" / "a")
    _odd_images(root / "val" / "b")
    for label in ("a", "b"):
        (root / "train" / label).mkdir(parents=True)
        _photo((64, 48)).save(root / "train" / label / "x.jpg")
    return root


def _evaluation_probabilities(model, root: Path) -> tuple[list[str], torch.Tensor]:
    """The eval split's paths and probabilities exactly as training's evaluation computes them."""
    import datasets

    data = load_image_folder(root, FinetuneConfig(data_dir=str(root), cache_dir=str(root.parent / "cache")))
    paths = [row["path"] for row in data.eval.cast_column("image", datasets.Image(decode=False))["image"]]
    data = prepare_images(data, model, cache=True, report=False)
    assert not data.bad_files and len(data.eval) == len(paths)
    _, eval_loader = create_dataloaders(data, model, per_device_batch_size=4, num_workers=0)
    normalize = create_normalize(model)
    with torch.no_grad():  # engine.evaluate's forward: model(normalize(batch["pixel_values"]))
        logits = torch.cat([model(normalize(batch["pixel_values"])) for batch in eval_loader])
    return paths, logits.softmax(dim=-1)


def test_predict_gives_the_evaluation_probabilities_on_odd_files(odd_folder):
    # Real ImageNet weights (bicubic, mean = std = 0.5, 224 px at crop_pct 0.875): 1000 probabilities that
    # move with every pixel, where a random model's stay near uniform whatever it is shown.
    classifier = load_classifier(LITE0_WEIGHTS)
    paths, expected = _evaluation_probabilities(classifier.model, odd_folder)
    assert len(paths) == 14
    labels = classifier.label_names
    predicted = predict(classifier, paths, top_k=len(labels))
    # ImageNet repeats a few names ("crane"): compare the ranked probabilities, and the top-5 labels by index.
    actual = torch.tensor([[probability for _, probability in top] for top in predicted])
    ranked, indices = expected.sort(dim=-1, descending=True)
    # Same pixels and weights; only the batch composition differs: float32 rounding, probabilities within
    # ~1e-6. A decoding or resizing difference moves them by 1e-3 and more.
    for path, top, row_actual, row_expected, row_indices in zip(paths, predicted, actual, ranked, indices):
        difference = (row_actual - row_expected).abs().max().item()
        assert difference < 1e-5, f"{Path(path).name}: probabilities differ by up to {difference:.2g}"
        assert [label for label, _ in top[:5]] == [labels[index] for index in row_indices[:5]], Path(path).name
