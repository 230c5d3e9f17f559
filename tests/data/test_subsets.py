"""--max-train-samples / --max-eval-samples: stratified, seeded, and only the chosen images are cached."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest
from conftest import make_image_folder

from hf_finetune.data.cache import prepare_images
from hf_finetune.config import FinetuneConfig
from hf_finetune.data.sources import load_image_data
from hf_finetune.model.create import create_classifier
from hf_finetune.data.subsets import stratified_indices


@pytest.mark.parametrize("size, expected", [(10, {0: 6, 1: 3, 2: 1}), (3, {0: 1, 1: 1, 2: 1}), (2, {0: 1, 1: 1})])
def test_each_class_keeps_its_share(size, expected):
    labels = [0] * 60 + [1] * 30 + [2] * 10
    chosen = stratified_indices(labels, size, seed=0)
    assert len(chosen) == size and Counter(labels[i] for i in chosen) == expected


def test_the_choice_is_seeded():
    labels = [0] * 50 + [1] * 50
    assert stratified_indices(labels, 10, seed=1) == stratified_indices(labels, 10, seed=1)
    assert stratified_indices(labels, 10, seed=1) != stratified_indices(labels, 10, seed=2)


def test_only_the_selected_images_are_decoded_and_cached(tmp_path):
    folder = make_image_folder(tmp_path / "photos", per_class=(12, 6))
    config = FinetuneConfig(data_dir=str(folder), cache_dir=str(tmp_path / "cache"), max_train_samples=6,
                            max_eval_samples=4, seed=3)
    data = load_image_data(config)
    assert Counter(data.train["label"]) == {0: 3, 1: 3} and Counter(data.eval["label"]) == {0: 2, 1: 2}
    model = create_classifier("test_resnet", data.label_names, pretrained=False, img_size=32)[0]
    cached = prepare_images(data, model)
    assert cached.train.cache_files and cached.train.num_rows == 6 and cached.eval.num_rows == 4
    train_files = [file["filename"] for file in cached.train.cache_files]
    rows = sum(pa.ipc.open_stream(name).read_all().num_rows for name in train_files)
    assert rows == 6  # the Arrow file on disk holds the subset, not the 24 training images
    assert _paths(load_image_data(config).train) == _paths(data.train)  # the same images on a re-run


def _paths(split) -> list[str]:
    import datasets

    return [image["path"] for image in split.cast_column("image", datasets.Image(decode=False))["image"]]


def test_max_eval_samples_limits_the_test_split_too(tmp_path):
    folder = make_image_folder(tmp_path / "photos", per_class=(6, 5, 7), splits=("train", "validation", "test"))
    data = load_image_data(FinetuneConfig(data_dir=str(folder), cache_dir=str(tmp_path / "cache"),
                                          max_eval_samples=4, seed=3))
    assert (data.eval_split, data.test_split) == ("validation", "test")
    assert Counter(data.eval["label"]) == {0: 2, 1: 2} and Counter(data.test["label"]) == {0: 2, 1: 2}
