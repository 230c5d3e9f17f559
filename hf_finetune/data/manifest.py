"""Manifests: one CSV or JSONL file per split, an image path column (relative to the manifest's folder, or
its images/ subfolder) and a label column of one label or several (the layout of most Kaggle sets and of
fastai's `from_csv`).

Loaded with datasets' own `csv` / `json` builders; each row's labels become a list of names (label_sets.py
then picks the task and encodes them) and the path column becomes an `Image()` column of resolved paths.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional

from hf_finetune.config import EVAL_SPLIT_NAMES
from hf_finetune.data.folders import TEST_SPLIT, test_split_name
from hf_finetune.errors import UserError, first_line

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")
IMAGE_COLUMNS = ("image", "image_path", "path", "file_name", "filename", "file", "img")
LABEL_COLUMNS = ("label", "labels", "tags", "target")


def find_manifest(folder: Path, split: str) -> Optional[Path]:
    """`folder/<split>.csv` (or .jsonl, .json) when there is one."""
    return next((path for path in (folder / f"{split}{suffix}" for suffix in MANIFEST_SUFFIXES) if path.is_file()),
                None)


def load_manifest(path: Path, image_column: Optional[str], label_column: Optional[str],
                  delimiter: Optional[str], cache_dir: Optional[str]):
    """The manifest as a Dataset of `image` (the resolved path, checked to exist) and `label` (a list of names);
    the caller makes `image` an Image() column (image_column) once the splits are compared (warn_shared_images)."""
    import datasets

    is_csv = path.suffix == ".csv"
    # CSV: every cell a string (labels "1" and "01" stay what they are; an empty cell is no label).
    options = {"features": _string_columns(path), "keep_default_na": False} if is_csv else {}
    try:
        table = datasets.load_dataset("csv" if is_csv else "json", data_files=str(path), split="train",
                                      cache_dir=cache_dir, **options)
    except Exception as error:  # the builders raise pandas/pyarrow errors of many types on a malformed file
        raise UserError(f"{path}: cannot read it as {'CSV' if is_csv else 'JSON lines'}: {first_line(error)}") \
            from None
    image = _column(table, image_column, IMAGE_COLUMNS, "image", path)
    label = _column(table, label_column, LABEL_COLUMNS, "label", path)
    table = table.select_columns([image, label]).rename_columns({image: "path", label: "label"})
    if isinstance(table.features["label"], datasets.Value) and table.features["label"].dtype != "string":
        table = table.cast_column("label", datasets.Value("string"))  # JSON numbers: names like the CSV's
    table = table.map(_resolved_rows, batched=True, input_columns=["path", "label"], remove_columns=["path"],
                      fn_kwargs={"folder": str(_image_root(path, table["path"])),
                                 "delimiter": delimiter if delimiter else (" " if is_csv else None)},
                      features=datasets.Features({"image": datasets.Value("string"),
                                                  "label": datasets.Sequence(datasets.Value("string"))}),
                      desc=f"Reading {path.name}")
    check_rows(table["image"], table["label"], path)
    return table


def image_column(table):
    """`image` as datasets Image() of the paths, the fingerprint (which keys the decode-once cache and the
    resume identity) covering every image file's size and modification time, as imagefolder's does: a
    manifest's own fingerprint covers only the manifest, and a replaced image must be decoded again."""
    import datasets
    from datasets.fingerprint import Hasher

    stamps = [(path, stat.st_size, stat.st_mtime_ns) for path in table["image"] for stat in [os.stat(path)]]
    return table.cast_column("image", datasets.Image(), new_fingerprint=Hasher.hash((Hasher.hash(table), stamps)))


def _string_columns(path: Path):
    """datasets.Features of a CSV's header, every column a string (the csv builder would infer numbers)."""
    import csv
    import datasets

    with open(path, newline="", encoding="utf-8") as file:
        header = next(csv.reader(file), None)
    if not header:
        raise UserError(f"{path} is empty: a manifest needs a header row (e.g. image,labels) and one row per image")
    return datasets.Features({name: datasets.Value("string") for name in header})


def _column(table, given: Optional[str], candidates, what: str, path: Path) -> str:
    name = given or next((c for c in candidates if c in table.column_names), None)
    if name not in table.column_names:
        raise UserError(f"{path} has no {what} column {name or ' or '.join(candidates)}; columns: "
                        f"{', '.join(table.column_names)} (use --{what}-column)")
    return name


def _image_root(path: Path, images: list) -> Path:
    """What the image paths are relative to: the manifest's folder, or its images/ subfolder when every path is
    there and none beside the manifest (a common layout: train.csv naming files in images/)."""
    relative = [str(image) for image in images if image and not os.path.isabs(str(image))]
    beside, inside = path.parent, path.parent / "images"
    if relative and inside.is_dir() and not any((beside / image).is_file() for image in relative[:100]) \
            and all((inside / image).is_file() for image in relative):
        logger.info("%s: image paths are relative to %s", path, inside)
        return inside
    return beside


def _resolved_rows(paths: list, labels: list, folder: str, delimiter: Optional[str]) -> dict:
    return {"image": [os.path.normpath(os.path.join(folder, str(p))) if p else "" for p in paths],
            "label": [_names(cell, delimiter) for cell in labels]}


def _names(cell, delimiter: Optional[str]) -> list[str]:
    """A cell's label names: a JSON list as it is, a string split by the delimiter (none: one label)."""
    if cell is None:
        return []
    if isinstance(cell, list):
        return [str(name).strip() for name in cell if str(name).strip()]
    parts = cell.split(delimiter) if delimiter else [cell]
    return [part.strip() for part in parts if part.strip()]


def check_rows(images: list[str], labels: list[list[str]], path: Path) -> None:
    """Rows without an image, images that do not exist (errors: the manifest is wrong), and duplicate rows:
    the same image listed twice with the same labels (warning: it counts twice) or with different labels (error:
    which labels does it have?)."""
    blank = [index + 2 for index, image in enumerate(images) if not image]  # file line numbers, after the header
    if blank:
        raise UserError(f"{path}: {len(blank)} row(s) have no image path (e.g. row {blank[0]})")
    missing = [image for image in dict.fromkeys(images) if not os.path.isfile(image)]
    if missing:
        shown = ", ".join(os.path.relpath(image, path.parent) for image in missing[:3])
        raise UserError(f"{path}: {len(missing)} image file(s) do not exist, e.g. {shown} (paths are relative "
                        "to the manifest's folder, or to its images/ subfolder when all are there)")
    rows_of = defaultdict(list)
    for image, names in zip(images, labels):
        rows_of[image].append(tuple(sorted(set(names))))
    conflicting = [image for image, rows in rows_of.items() if len(set(rows)) > 1]
    if conflicting:
        raise UserError(f"{path}: {len(conflicting)} image(s) are listed with different labels, e.g. "
                        f"{os.path.relpath(conflicting[0], path.parent)}: give each image one row with all its "
                        "labels")
    repeated = sum(count - 1 for count in Counter(images).values())
    if repeated:
        logger.warning("%s: %d duplicate row(s) (an image listed again with the same labels): each counts as "
                       "often as it is listed", path, repeated)


def warn_shared_images(splits: dict, split_names: dict[str, str]) -> None:
    """An image in train and in an evaluated split makes that split's numbers optimistic: a warning. (Of splits
    whose `image` is still the path.)"""
    train = set(splits["train"]["image"])
    for key in ("eval", "test"):
        if key in splits:
            shared = train & set(splits[key]["image"])
            if shared:
                logger.warning("%d image(s) of %s are also in train (e.g. %s): its numbers will be optimistic",
                               len(shared), split_names[key], sorted(shared)[0])


def manifest_files(config, root: Optional[Path]) -> Optional[tuple[dict[str, Path], dict[str, str]]]:
    """({split key: manifest}, {split key: split name}) from --train-file/--eval-file/--test-file, or from the
    manifests named after the splits in `root` (train.csv, val.csv, test.csv, or .jsonl); None when there are
    none. Without an eval manifest, eval is held out of train (--val-fraction)."""
    if config.train_file:
        given = {"train": config.train_file, "eval": config.eval_file, "test": config.test_file}
        files = {key: Path(file).expanduser() for key, file in given.items() if file}
        return files, {key: path.stem for key, path in files.items()}
    train = find_manifest(root, config.train_split) if root is not None and root.is_dir() else None
    if train is None:
        return None
    if config.eval_split and find_manifest(root, config.eval_split) is None:
        raise UserError(f"--eval-split {config.eval_split}: no {config.eval_split}.csv or .jsonl in {root}")
    eval_name = config.eval_split or next((name for name in EVAL_SPLIT_NAMES if find_manifest(root, name)), None)
    test_name = test_split_name([TEST_SPLIT] if find_manifest(root, TEST_SPLIT) else [], eval_name)
    names = {key: name for key, name in (("train", config.train_split), ("eval", eval_name), ("test", test_name))
             if name}
    return {key: find_manifest(root, name) for key, name in names.items()}, names


def recorded_manifest_rows(config: dict, keys=("train", "eval")) -> Optional[dict[str, list[tuple[Path, list]]]]:
    """{split key: [(image path, label names)]} of a finished run's manifests, found from its run_config.json's
    `config` as the run found them; None for a run without manifests; a missing split key is absent."""
    from types import SimpleNamespace

    root = Path(config["data_dir"]).expanduser() if config.get("data_dir") else None
    options = SimpleNamespace(**{key: config.get(key) for key in ("train_file", "eval_file", "test_file",
                                                                 "eval_split")},
                              train_split=config.get("train_split") or "train")
    found = manifest_files(options, root)
    if found is None:
        return None
    rows = {}
    for key in keys:
        if key in found[0]:
            table = load_manifest(found[0][key], config.get("image_column"), config.get("label_column"),
                                  config.get("label_delimiter"), None)
            rows[key] = [(Path(image), list(labels)) for image, labels in zip(table["image"], table["label"])]
    return rows
