"""Hub-style datasets (`--dataset-name PATH`): every split encodes the same raw label to the same class index.

The datasets are parquet files in a local folder, loaded through the same `load_dataset` path as a Hub id.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from hf_finetune.config import FinetuneConfig
from hf_finetune.data.sources import load_image_data
from hf_finetune.errors import UserError


def _write_parquet_dataset(folder: Path, splits: dict[str, list], label_feature) -> Path:
    """One parquet file per split, columns image (PNG bytes) and label with `label_feature`."""
    import datasets
    from PIL import Image

    (folder / "data").mkdir(parents=True)
    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    for split, labels in splits.items():
        images = []
        for index in range(len(labels)):
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), (index * 40 % 255, 0, 0)).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
            str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def _load(folder: Path, tmp_path: Path, **options):
    return load_image_data(FinetuneConfig(dataset_name=str(folder), cache_dir=str(tmp_path / "cache"), **options))


def _names_of(data, split) -> list[str]:
    return [data.label_names[index] for index in split["label"]]


def test_integer_labels_keep_numeric_order_in_every_split(tmp_path):
    import datasets

    train = list(range(12)) * 2  # 12 classes: sorted as strings, 2 would come after 11
    validation, test = [2, 11, 10, 1, 0], [3, 2, 10]
    folder = _write_parquet_dataset(tmp_path / "ints", {"train": train, "validation": validation, "test": test},
                                    datasets.Value("int64"))
    data = _load(folder, tmp_path)
    assert data.label_names == [str(label) for label in range(12)]
    assert (data.train["label"], data.eval["label"], data.test["label"]) == (train, validation, test)
    for split in (data.train, data.eval, data.test):
        assert split.features["label"].names == data.label_names


def test_integer_labels_that_do_not_start_at_zero(tmp_path):
    import datasets

    folder = _write_parquet_dataset(tmp_path / "one_two", {"train": [1, 2, 2, 1, 2], "test": [2, 1, 2]},
                                    datasets.Value("int32"))
    data = _load(folder, tmp_path)
    assert data.label_names == ["1", "2"]
    assert _names_of(data, data.train) == ["1", "2", "2", "1", "2"]
    assert _names_of(data, data.eval) == ["2", "1", "2"]


def test_eval_integer_label_unknown_to_train_is_refused(tmp_path):
    import datasets

    folder = _write_parquet_dataset(tmp_path / "unknown", {"train": [0, 1, 0, 1], "test": [1, 7]},
                                    datasets.Value("int64"))
    with pytest.raises(UserError, match="has label\\(s\\) that train does not: 7"):
        _load(folder, tmp_path)


def test_string_labels_where_eval_lacks_a_class(tmp_path):
    import datasets

    folder = _write_parquet_dataset(tmp_path / "strings", {"train": ["cow", "ant", "bee", "ant", "cow", "bee"],
                                                           "validation": ["cow", "bee"], "test": ["bee", "bee"]},
                                    datasets.Value("string"))
    data = _load(folder, tmp_path)
    assert data.label_names == ["ant", "bee", "cow"]
    assert (data.eval["label"], data.test["label"]) == ([2, 1], [1, 1])
    assert _names_of(data, data.train) == ["cow", "ant", "bee", "ant", "cow", "bee"]


def test_class_label_names_and_indices_are_kept(tmp_path):
    import datasets

    names = ["zebra", "ant", "moth"]  # the dataset's own order, not sorted
    folder = _write_parquet_dataset(tmp_path / "classlabel", {"train": [0, 1, 2, 2, 1, 0], "test": [2, 0]},
                                    datasets.ClassLabel(names=names))
    data = _load(folder, tmp_path)
    assert data.label_names == names
    assert (data.train["label"], data.eval["label"]) == ([0, 1, 2, 2, 1, 0], [2, 0])


@pytest.mark.parametrize("label_feature, labels, message", [
    ("float32", [0.0, 1.0, 0.5, 1.0], "float32"),
    ("list", [[0.5], [1.0, 2.0], [2.0], [0.0, 1.0]], "List values, not classes"),  # lists of classes: multi-label
])
def test_label_column_that_is_not_a_class_is_refused(tmp_path, label_feature, labels, message):
    import datasets

    feature = datasets.List(datasets.Value("float32")) if label_feature == "list" else datasets.Value(label_feature)
    folder = _write_parquet_dataset(tmp_path / label_feature, {"train": labels, "test": labels}, feature)
    with pytest.raises(UserError, match=message) as refused:
        _load(folder, tmp_path)
    assert "--label-column" in str(refused.value) and "\n" not in str(refused.value)
