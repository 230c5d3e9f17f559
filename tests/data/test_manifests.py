"""Manifests (CSV/JSONL per split), label-combination folders and Hub list columns: the splits, the class indices,
the task inferred (or forced) and the pre-flight lines, on small generated data and on ../shared food-mosaics."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from conftest import SHARED, make_image_folder

from hf_finetune.config import FinetuneConfig
from hf_finetune.data.sources import load_image_data
from hf_finetune.errors import UserError

TRAIN = [("a.jpg", "cat"), ("b.jpg", "cat dog"), ("c.jpg", "dog"), ("d.jpg", "bird cat dog"), ("e.jpg", "bird")]
VAL = [("f.jpg", "dog"), ("g.jpg", "bird cat")]


def _images(folder: Path, names) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.new("RGB", (12, 10), (index * 30 % 255, 90, 0)).save(folder / name)


def write_csv(path: Path, rows, header=("image", "labels"), image_dir="imgs") -> Path:
    """A manifest of `rows` (file name, labels cell) whose images are generated in image_dir beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _images(path.parent / image_dir, [name for name, _ in rows])
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows((f"{image_dir}/{name}", labels) for name, labels in rows)
    return path


def _load(tmp_path, **options):
    return load_image_data(FinetuneConfig(cache_dir=str(tmp_path / "cache"), **options).validate())


def _names(data, split) -> list:
    return [[data.label_names[index] for index in row] for row in split["label"]]


def test_csv_manifests_found_by_split_name_give_label_indices_per_row(tmp_path, caplog):
    import datasets

    root = tmp_path / "set"
    write_csv(root / "train.csv", TRAIN)
    write_csv(root / "val.csv", VAL)
    write_csv(root / "test.csv", [("h.jpg", "cat")])
    with caplog.at_level(logging.INFO):
        data = _load(tmp_path, data_dir=str(root))
    assert data.label_names == ["bird", "cat", "dog"]
    assert data.train.features["label"] == datasets.Sequence(datasets.ClassLabel(names=["bird", "cat", "dog"]))
    assert data.train["label"] == [[1], [1, 2], [2], [0, 1, 2], [0]]
    assert _names(data, data.eval) == [["dog"], ["bird", "cat"]] and _names(data, data.test) == [["cat"]]
    assert (data.eval_split, data.test_split, data.task) == ("val", "test", "multi-label")
    assert "task: multi-label (2 of 5 train rows have several labels)" in caplog.text
    assert data.train[0]["image"].size == (12, 10)  # the relative path resolved against the manifest's folder


def test_jsonl_lists_and_csv_delimiter_through_train_and_eval_file(tmp_path):
    train = tmp_path / "lists" / "train.jsonl"
    _images(train.parent, ["a.png", "b.png", "c.png"])
    train.write_text("\n".join(json.dumps(row) for row in [{"path": "a.png", "tags": ["x", "y"]},
                                                            {"path": "b.png", "tags": ["y"]},
                                                            {"path": "c.png", "tags": []}]))
    evaluation = write_csv(tmp_path / "other" / "eval.csv", [("d.jpg", "y|x"), ("e.jpg", "x")],
                           header=("image", "tags"))
    data = _load(tmp_path, train_file=str(train), eval_file=str(evaluation), label_delimiter="|",
                 label_column="tags")
    assert data.label_names == ["x", "y"] and data.train["label"] == [[0, 1], [1], []]
    assert data.eval["label"] == [[0, 1], [0]] and data.eval_split == "eval"
    assert data.task_reason == "1 of 3 train rows have several labels, 1 of 3 have no label"


def test_single_label_manifest_is_todays_classlabel_column(tmp_path):
    import datasets

    root = tmp_path / "single"
    write_csv(root / "train.csv", [("a.jpg", "2"), ("b.jpg", "10"), ("c.jpg", "2")], header=("file", "label"))
    write_csv(root / "validation.csv", [("d.jpg", "10")], header=("file", "label"))
    data = _load(tmp_path, data_dir=str(root))
    assert data.task == "single-label" and data.task_reason == "every one of 3 train rows has exactly one label"
    assert data.train.features["label"] == datasets.ClassLabel(names=["2", "10"])  # integers in numeric order
    assert data.train["label"] == [0, 1, 0] and data.eval["label"] == [1]
    forced = _load(tmp_path, data_dir=str(root), task="multi-label")
    assert forced.task == "multi-label" and forced.train["label"] == [[0], [1], [0]]
    assert forced.task_reason == "forced by --task multi-label"


def test_task_single_label_refuses_rows_with_several_labels(tmp_path):
    root = tmp_path / "multi"
    write_csv(root / "train.csv", TRAIN)
    with pytest.raises(UserError, match="--task single-label, but 2 of 5 train rows have several labels"):
        _load(tmp_path, data_dir=str(root), task="single-label")


def test_several_labels_in_an_eval_row_make_the_task_multi_label(tmp_path):
    root = tmp_path / "eval-multi"
    write_csv(root / "train.csv", [("a.jpg", "cat"), ("b.jpg", "dog")])
    write_csv(root / "val.csv", [("c.jpg", "cat dog"), ("d.jpg", "dog")])
    data = _load(tmp_path, data_dir=str(root))  # single-label would have to drop "dog" from c.jpg
    assert data.task == "multi-label" and data.task_reason == "1 of 2 val rows have several labels"
    assert data.eval["label"] == [[0, 1], [1]]


def test_preflight_refuses_labels_only_in_eval(tmp_path):
    root = tmp_path / "unknown"
    write_csv(root / "train.csv", TRAIN)
    write_csv(root / "val.csv", [("f.jpg", "dog fish")])
    with pytest.raises(UserError, match="split val has label\\(s\\) that train does not: fish"):
        _load(tmp_path, data_dir=str(root))


def test_preflight_warns_about_rows_without_labels_duplicates_and_images_shared_with_train(tmp_path, caplog):
    root = tmp_path / "warn"
    write_csv(root / "train.csv", [*TRAIN, ("a.jpg", "cat"), ("z.jpg", "")])
    write_csv(root / "val.csv", [("a.jpg", "cat"), ("g.jpg", "dog")])
    with caplog.at_level(logging.WARNING):
        data = _load(tmp_path, data_dir=str(root))
    assert len(data.train) == 7 and data.train["label"][-1] == []
    assert "1 duplicate row(s) (an image listed again with the same labels)" in caplog.text
    assert "1 of 7 train rows have no label: they train and score as negatives for every label" in caplog.text
    assert "1 image(s) of val are also in train" in caplog.text


def test_preflight_refuses_conflicting_duplicates_missing_images_and_unlabelled_single_label_rows(tmp_path):
    conflict = tmp_path / "conflict"
    write_csv(conflict / "train.csv", [*TRAIN, ("a.jpg", "dog")])
    with pytest.raises(UserError, match="1 image\\(s\\) are listed with different labels, e.g. imgs/a.jpg"):
        _load(tmp_path, data_dir=str(conflict))
    missing = tmp_path / "missing"
    write_csv(missing / "train.csv", TRAIN)
    (missing / "imgs" / "c.jpg").unlink()
    with pytest.raises(UserError, match="1 image file\\(s\\) do not exist, e.g. imgs/c.jpg"):
        _load(tmp_path, data_dir=str(missing))
    unlabelled = tmp_path / "unlabelled"
    write_csv(unlabelled / "train.csv", [("a.jpg", "cat"), ("b.jpg", "dog"), ("c.jpg", "")])
    with pytest.raises(UserError, match="--task single-label, but 1 of 3 train rows have no label"):
        _load(tmp_path, data_dir=str(unlabelled), task="single-label")


def test_label_combination_folders_give_every_label_in_the_name(tmp_path):
    root = make_image_folder(tmp_path / "clothes", classes=("black_jeans", "red_dress"), per_class=(3, 2))
    make_image_folder(root, classes=("red_jeans",), per_class=(2,), splits=("val",))
    data = _load(tmp_path, data_dir=str(root), label_delimiter="_")
    assert data.label_names == ["black", "dress", "jeans", "red"]
    assert sorted(map(tuple, _names(data, data.train))) == [("black", "jeans")] * 3 + [("dress", "red")] * 3
    assert sorted(map(tuple, _names(data, data.eval))) == [("black", "jeans"), ("black", "jeans"), ("dress", "red"),
                                                           ("dress", "red"), ("jeans", "red"), ("jeans", "red")]
    assert data.task == "multi-label" and data.task_reason == "6 of 6 train rows have several labels"
    with pytest.raises(UserError, match="split val has label\\(s\\) that train does not: red_jeans"):
        _load(tmp_path, data_dir=str(root), task="multi-label")  # no delimiter: a folder name is one label
    nested = make_image_folder(tmp_path / "nested", classes=("red_dress", "blue_dress"), per_class=(2, 1))
    (nested / "train" / "red_dress" / "extra").mkdir()
    (nested / "train" / "red_dress" / "red_dress_0.jpg").rename(nested / "train" / "red_dress" / "extra" / "0.jpg")
    with pytest.raises(UserError, match="images must sit directly in the label folders \\(found subfolders extra"):
        _load(tmp_path, data_dir=str(nested), label_delimiter="_")
    forced = _load(tmp_path, data_dir=str(make_image_folder(tmp_path / "plain", per_class=(2, 1))), task="multi-label")
    assert forced.label_names == ["cat", "dog"] and forced.task_reason == "forced by --task multi-label"
    assert sorted(map(tuple, forced.train["label"])) == [(0,), (0,), (1,), (1,)]


def test_manifest_without_eval_split_holds_out_and_subsets_multi_label_rows(tmp_path):
    root = tmp_path / "holdout"
    rows = [(f"{index}.jpg", "cat dog" if index % 2 else "cat") for index in range(20)]
    write_csv(root / "train.csv", rows)
    data = _load(tmp_path, data_dir=str(root), val_fraction=0.25, max_train_samples=6)
    assert (len(data.train), len(data.eval), data.eval_split) == (6, 5, "holdout")
    assert set(map(tuple, list(data.train["label"]) + list(data.eval["label"]))) <= {(0,), (0, 1)}


def test_manifest_options_are_validated_early():
    for options, message in [({"eval_file": "val.csv"}, "--eval-file needs --train-file"),
                             ({"train_file": "/no/such.csv"}, "--train-file /no/such.csv: no such file"),
                             ({"train_file": __file__}, "a manifest is a .csv or .jsonl file"),
                             ({"data_dir": "x", "train_file": __file__}, "give one of --data-dir"),
                             ({"label_delimiter": ""}, "--label-delimiter cannot be empty"),
                             ({"task": "multilabel"}, "--task multilabel: use auto, single-label or multi-label")]:
        with pytest.raises(UserError, match=message):
            FinetuneConfig(**options).validate()


def test_hub_list_columns_are_multi_label_and_labels_without_train_positives_are_reported(tmp_path, caplog):
    import datasets
    from test_labels import _write_parquet_dataset

    names = ["bird", "cat", "dog", "fish"]
    folder = _write_parquet_dataset(tmp_path / "seq", {"train": [[1, 2], [0], [2]], "validation": [[], [1]]},
                                    datasets.Sequence(datasets.ClassLabel(names=names)))
    with caplog.at_level(logging.WARNING):
        data = _load(tmp_path, dataset_name=str(folder))
    assert data.label_names == names and data.train["label"] == [[1, 2], [0], [2]] and data.eval["label"] == [[], [1]]
    assert data.task == "multi-label" and "label(s) with no positive in train: fish" in caplog.text
    strings = _write_parquet_dataset(tmp_path / "strings", {"train": [["b", "a"], ["b"]], "test": [["a"]]},
                                     datasets.Sequence(datasets.Value("string")))
    data = _load(tmp_path, dataset_name=str(strings))
    assert data.label_names == ["a", "b"] and data.train["label"] == [[0, 1], [1]] and data.eval["label"] == [[0]]
    integers = _write_parquet_dataset(tmp_path / "ints", {"train": [[10], [2, 10], [2]], "test": [[2]]},
                                      datasets.Sequence(datasets.Value("int64")))
    data = _load(tmp_path, dataset_name=str(integers))  # integer labels in numeric order, as single-label ones
    assert data.label_names == ["2", "10"] and data.train["label"] == [[1], [0, 1], [0]]


def test_food_mosaics_manifests(tmp_path, caplog):
    root = SHARED / "data" / "food-mosaics"
    with open(root / "train.csv", newline="") as file:
        several = sum(len(row["labels"].split()) > 1 for row in csv.DictReader(file))
    with caplog.at_level(logging.INFO):
        data = _load(tmp_path, data_dir=str(root))
    assert (len(data.train), len(data.eval), len(data.label_names)) == (800, 200, 12)
    assert data.task == "multi-label" and f"task: multi-label ({several} of 800 train rows have several labels)" \
        in caplog.text
    assert all(1 <= len(labels) <= 3 for labels in list(data.train["label"]) + list(data.eval["label"]))
    first = next(csv.DictReader(open(root / "train.csv", newline="")))
    assert _names(data, data.train)[0] == sorted(first["labels"].split())


TINY_RUN = ["--model", "test_resnet", "--no-pretrained", "--batch-size", "4", "--num-workers", "0", "--epochs", "1"]


def test_single_label_manifest_trains_end_to_end(tmp_path):
    from conftest import run_script

    root = tmp_path / "single"
    write_csv(root / "train.csv", [(f"{index}.jpg", ["cat", "dog"][index % 2]) for index in range(8)])
    write_csv(root / "val.csv", [("v0.jpg", "cat"), ("v1.jpg", "dog"), ("v2.jpg", "cat")])
    (root / "imgs" / "v2.jpg").write_bytes((root / "imgs" / "v0.jpg").read_bytes()[:60])  # truncated: unreadable
    out = tmp_path / "out"
    result = run_script("finetune.py", "--data-dir", root, *TINY_RUN, "--max-bad-fraction", "0.5",
                        "--output-dir", out)
    assert "task: single-label (every one of 8 train rows has exactly one label)" in result.stderr
    assert "skipping unreadable image imgs/v2.jpg" in result.stderr  # as for folders: reported and skipped
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["eval_count"] == 2 and metrics["bad_files"] == 1
    assert json.loads((out / "config.json").read_text())["label_names"] == ["cat", "dog"]


def test_a_changed_image_behind_an_unchanged_manifest_changes_the_fingerprint(tmp_path):
    import os

    from hf_finetune.data.cache import data_fingerprint

    root = tmp_path / "changed"
    write_csv(root / "train.csv", TRAIN)
    before = data_fingerprint(_load(tmp_path, data_dir=str(root)).train)
    assert data_fingerprint(_load(tmp_path, data_dir=str(root)).train) == before  # unchanged: the cache is reused
    image = root / "imgs" / "c.jpg"
    image.write_bytes((root / "imgs" / "a.jpg").read_bytes())  # the decode-once cache must not keep the old pixels
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert data_fingerprint(_load(tmp_path, data_dir=str(root)).train) != before


def test_unreadable_images_of_a_multi_label_manifest_are_skipped_and_the_label_lists_kept(tmp_path):
    from hf_finetune.data.cache import prepare_images
    from hf_finetune.model.create import create_classifier

    root = tmp_path / "bad"
    write_csv(root / "train.csv", TRAIN)
    write_csv(root / "val.csv", VAL)
    (root / "imgs" / "b.jpg").write_bytes(b"not an image")
    data = _load(tmp_path, data_dir=str(root))
    model = create_classifier("test_resnet", data.label_names, pretrained=False, img_size=32)[0]
    cached = prepare_images(data, model, max_bad_fraction=0.5)
    assert [(file["split"], file["path"]) for file in cached.bad_files] == [("train", "imgs/b.jpg")]
    assert cached.train["label"] == [[1], [2], [0, 1, 2], [0]] and cached.eval["label"] == [[2], [0, 1]]
    assert cached.train.features["label"] == data.train.features["label"]  # still a Sequence(ClassLabel)
