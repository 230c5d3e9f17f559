"""The uint8 v2 pipeline and Normalize against timm's transforms, cache on/off equivalence, finetune end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from conftest import REPO_ROOT, make_image_folder, run_script
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

from hf_finetune.data.cache import prepare_images
from hf_finetune.config import FinetuneConfig
from hf_finetune.data.sources import load_image_data
from hf_finetune.data.loaders import create_dataloaders, create_normalize

TINY = ["--model", "test_resnet", "--no-pretrained", "--batch-size", "4", "--epochs", "1", "--num-workers", "0"]


def _photo_like(path, size=(301, 217), seed=0):
    """Smooth gradients plus texture, like a photo (not noise, which every resampler treats differently)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]] / max(size)
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 200 + 20
    pixels = np.clip(base + 8 * np.sin(40 * x)[..., None] + rng.normal(0, 4, base.shape), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _model(name="test_efficientnet", **cfg):
    model = timm.create_model(name, num_classes=2)
    model.pretrained_cfg.update(cfg)
    return model


def _folder_of_photos(root, per_class=(3, 2)):
    for split, count in zip(("train", "val"), per_class):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                _photo_like(root / split / label / f"{index}.png", seed=index + 10 * (label == "b"))
    return root


def _first_batch(loader):
    return next(iter(loader))


# The cache stores timm's eval resize (torch's antialiased kernel instead of PIL's): square center crops are
# timm's tensors within one uint8 level (0.0175 at ImageNet's std), nearly all pixels exact. Other modes
# resample the cached copy once more: a few levels at worst, under one on average.
@pytest.mark.parametrize("name, cfg, max_error, mean_error", [
    ("test_efficientnet", {}, 0.02, 1e-3),  # ImageNet mean/std, bicubic, crop_pct 0.95
    ("test_resnet", {}, 0.02, 1e-3),  # mean = std = 0.5, bilinear
    ("test_efficientnet", {"crop_pct": 0.875, "input_size": (3, 128, 128)}, 0.02, 1e-3),
    ("test_efficientnet", {"crop_mode": "squash"}, 0.1, 0.01),
    ("test_resnet", {"input_size": (3, 128, 160)}, 0.1, 0.01),  # non-square: timm's ResizeKeepRatio
    ("test_resnet", {"crop_pct": 1.2}, 0.1, 0.01),  # eval resize smaller than the train crop
])
def test_eval_batches_match_timms_eval_transform(tmp_path, name, cfg, max_error, mean_error):
    model = _model(name, **cfg)
    root = _folder_of_photos(tmp_path / "photos")
    data = prepare_images(load_image_data(FinetuneConfig(data_dir=str(root))), model)
    _, eval_loader = create_dataloaders(data, model, per_device_batch_size=4, num_workers=0)
    images = create_normalize(model)(_first_batch(eval_loader)["pixel_values"])
    reference = create_transform(**resolve_model_data_config(model), is_training=False)
    paths = sorted((root / "val").glob("*/*.png"))[:4]
    expected = torch.stack([reference(Image.open(path).convert("RGB")) for path in paths])
    assert images.shape == expected.shape and images.is_contiguous()
    error = (images - expected).abs()
    assert error.max() < max_error and error.mean() < mean_error


def test_train_batches_are_random_crops_normalized_with_the_models_mean_and_std(tmp_path):
    model = _model("test_resnet")  # mean = std = 0.5: ImageNet statistics would give other values
    root = make_image_folder(tmp_path / "flat", per_class=(4, 2), size=(300, 200))
    for path in (root / "train").glob("*/*.jpg"):
        Image.new("RGB", (300, 200), (255, 255, 255) if "cat" in path.name else (0, 0, 0)).save(path)
    data = prepare_images(load_image_data(FinetuneConfig(data_dir=str(root))), model)
    train_loader, _ = create_dataloaders(data, model, 8, num_workers=0)
    batch = _first_batch(train_loader)
    assert batch["pixel_values"].dtype == torch.uint8  # a quarter of the bytes to the device; normalized there
    images, labels = create_normalize(model)(batch["pixel_values"]), batch["label"]
    assert images.shape == (8, 3, 160, 160) and images.dtype == torch.float32
    colours = torch.tensor([[1.0] * 3, [-1.0] * 3])[labels]  # white: (1 - 0.5) / 0.5; ImageNet's would be 2.25
    assert torch.allclose(images, colours[:, :, None, None].expand_as(images), atol=1e-5)
    # Crops differ from epoch to epoch (and only then: they are seeded by seed, epoch and index).
    photo = _photo_like(tmp_path / "photo.png")
    for path in (root / "train").glob("*/*.jpg"):
        path.write_bytes(photo.read_bytes())
    data = prepare_images(load_image_data(FinetuneConfig(data_dir=str(root))), model)
    train_loader, _ = create_dataloaders(data, model, 8, num_workers=0)
    first, again = _first_batch(train_loader)["pixel_values"], _first_batch(train_loader)["pixel_values"]
    train_loader.sampler.set_epoch(1)
    second = _first_batch(train_loader)["pixel_values"]
    assert first.shape == second.shape == (8, 3, 160, 160) and not torch.equal(first, second)
    assert torch.equal(first, again)


def test_cache_on_and_off_deliver_the_same_tensors(tmp_path):
    model = _model()
    root = _folder_of_photos(tmp_path / "photos")
    data = load_image_data(FinetuneConfig(data_dir=str(root)))
    batches = {}
    for cache in (True, False):
        train_loader, eval_loader = create_dataloaders(prepare_images(data, model, cache=cache), model, 6, 0)
        torch.manual_seed(0)
        batches[cache] = (_first_batch(train_loader), _first_batch(eval_loader))
    for cached, decoded in zip(batches[True], batches[False]):
        assert torch.equal(cached["pixel_values"], decoded["pixel_values"])
        assert torch.equal(cached["label"], decoded["label"])


def test_workers_deliver_every_image_once(tmp_path):
    model = _model()
    root = make_image_folder(tmp_path / "data", per_class=(10, 3))
    data = prepare_images(load_image_data(FinetuneConfig(data_dir=str(root))), model)
    train_loader, eval_loader = create_dataloaders(data, model, 4, num_workers=2)
    for _ in range(2):  # persistent workers serve a second epoch
        assert sum(len(batch["label"]) for batch in train_loader) == 20
    assert sorted(torch.cat([batch["label"] for batch in eval_loader]).tolist()) == [0, 0, 0, 1, 1, 1]


EXIT_WITH_WORKERS_ALIVE = """
import sys, timm
from hf_finetune.config import FinetuneConfig
from hf_finetune.data.cache import prepare_images
from hf_finetune.data.loaders import create_dataloaders
from hf_finetune.data.sources import load_image_data
model = timm.create_model("test_efficientnet", num_classes=2)
data = prepare_images(load_image_data(FinetuneConfig(data_dir=sys.argv[1])), model)
train_loader, _ = create_dataloaders(data, model, 4, num_workers=2)
batches = iter(train_loader)
next(batches)  # the iterator, and its workers, still alive at exit
"""


def test_a_process_exits_while_its_loader_workers_are_alive(tmp_path):
    """The workers ignore SIGTERM (leave_sigterm_to_the_main_process), which is how multiprocessing ends daemonic
    children at interpreter exit: a run whose loader iterator was still referenced then waited for them forever
    (seen after a resumed run had written everything)."""
    root = make_image_folder(tmp_path / "data", per_class=(10, 3))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-c", EXIT_WITH_WORKERS_ALIVE, str(root)], env=env,
                               start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the process did not exit: it waits for loader workers that ignore SIGTERM")
    assert process.returncode == 0, stderr[-2000:]


@pytest.mark.parametrize("cache_flag", [[], ["--no-cache"]])
def test_finetune_end_to_end_with_and_without_the_cache(tmp_path, cache_flag):
    folder = make_image_folder(tmp_path / "tiny")
    (folder / "train" / "cat" / "broken.jpg").write_text("a text file named .jpg")
    out = tmp_path / "out"
    refused = run_script("finetune.py", "--data-dir", folder, *TINY, *cache_flag, "--output-dir", out, check=False)
    assert refused.returncode == 2 and "1 of 17 train images are unreadable" in refused.stderr
    assert "--max-bad-fraction 0.01" in refused.stderr and "Traceback" not in refused.stderr
    result = run_script("finetune.py", "--data-dir", folder, *TINY, *cache_flag, "--max-bad-fraction", "0.1",
                        "--output-dir", out)
    assert "skipping unreadable image train/cat/broken.jpg: not an image PIL can read" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["train_count"] == 16 and metrics["final"]["eval_count"] == 8
