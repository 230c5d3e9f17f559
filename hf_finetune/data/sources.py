"""Resolve the data source into a train and an eval `datasets.Dataset` plus the label names.

Every source ends as columns `image` (datasets Image) and `label`: the hotdog archive and local folders
through the `imagefolder` builder, Hub datasets through `load_dataset`, manifests (CSV/JSONL) through its
csv/json builders (manifest.py). `label` is a ClassLabel for a single-label task, a Sequence(ClassLabel) of
class indices per row for a multi-label one (label_sets.py chooses). The ClassLabel order (sorted folder names
for folders) is the label order saved with the model.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional

from hf_finetune.config import EVAL_SPLIT_NAMES, FinetuneConfig
from hf_finetune.data.download import default_cache_dir, hotdog_dir
from hf_finetune.data.folders import find_classes, find_splits, has_images, test_split_name, visible_dirs
from hf_finetune.data.label_sets import MULTI_LABEL, SINGLE_LABEL, encode_label_sets
from hf_finetune.data.labels import class_encoded, class_names, is_label_list, label_set_rows
from hf_finetune.data.manifest import image_column, load_manifest, manifest_files, warn_shared_images
from hf_finetune.data.stream import (encoded_record, eval_dataset, label_encoder, nested, open_streams, stream_columns,
                                     stream_fingerprint, stream_labels)
from hf_finetune.errors import UserError, first_line
from hf_finetune.data.subsets import select_samples

logger = logging.getLogger(__name__)


@dataclass
class ImageData:
    train: "datasets.Dataset"  # noqa: F821
    eval: "datasets.Dataset"  # noqa: F821
    label_names: list[str]
    name: str  # how the card names the data: a Hub id or a folder's name, never a local path
    eval_split: str  # the split name, or "holdout" when carved out of train
    root: Optional[Path] = None  # the local folder the images came from; bad-file paths are relative to it
    # Filled by cache.prepare_images: {"split", "path", "reason"} of every unreadable file it skipped.
    bad_files: list[dict] = field(default_factory=list)
    # A held-out test split beside the eval split (which selects the epoch): scored once, for the selected model.
    test: Optional["datasets.Dataset"] = None  # noqa: F821
    test_split: Optional[str] = None
    task: str = SINGLE_LABEL  # or MULTI_LABEL: `label` is then a list of class indices per row
    task_reason: str = "one class folder or label per image"  # the start-up line: "task: <task> (<reason>)"
    # --streaming: `train` is a datasets IterableDataset of undecoded images and encoded labels (stream.py), whose
    # size is known only when its dataset info gives it.
    streaming: bool = False
    stream_size: Optional[int] = None
    stream_fingerprint: Optional[str] = None  # the resume check's identity of the stream (stream.stream_fingerprint)

    @property
    def train_size(self) -> Optional[int]:
        """Training images: None for a stream of unknown size."""
        return self.stream_size if self.streaming else len(self.train)


def load_image_folder(root: Path, config: FinetuneConfig) -> ImageData:
    import datasets

    train_dir, eval_dir = find_splits(root, config.train_split, config.eval_split)
    classes = find_classes(train_dir)
    data_files = {"train": [str(train_dir / name / "**") for name in classes]}
    test_name = test_split_name([p.name for p in visible_dirs(root)], eval_dir.name if eval_dir else None)
    for key, folder in (("eval", eval_dir), ("test", root / test_name if test_name else None)):
        if folder is not None:
            data_files[key] = _split_files(folder, classes, train_dir)
    # drop_labels=False: imagefolder would otherwise skip labels for a single-class split;
    # drop_metadata=True: a stray metadata.csv must not replace the folder labels.
    loaded = datasets.load_dataset("imagefolder", data_files=data_files, drop_labels=False, drop_metadata=True,
                                   cache_dir=_datasets_cache(config))
    label_names = loaded["train"].features["label"].names
    if label_names != classes:
        raise UserError(f"{train_dir}: images must sit directly in the class folders "
                        f"(found labels {label_names[:5]}..., expected {classes})")
    train, evaluation, split_name = loaded["train"], loaded.get("eval"), eval_dir.name if eval_dir else "holdout"
    if evaluation is None:
        train, evaluation = _holdout(train, config)
    return ImageData(train, evaluation, label_names, name=root.name, eval_split=split_name, root=root,
                     test=loaded.get("test"), test_split=test_name)


def _split_files(folder: Path, classes: list[str], train_dir: Path) -> list[str]:
    """imagefolder's file patterns of an evaluated split, whose classes must all be training classes."""
    found = [path.name for path in visible_dirs(folder) if has_images(path)]
    if not found:
        raise UserError(f"split {folder} has no images in class folders")
    unknown = sorted(set(found) - set(classes))
    if unknown:
        others = [path.name for path in visible_dirs(folder.parent) if path not in (train_dir, folder)]
        hint = (f"; other folders here: {', '.join(others)} (choose the eval split with --eval-split NAME)"
                if others else "")
        raise UserError(f"{folder} has class folder(s) that train does not: {', '.join(unknown)}{hint}")
    return [str(folder / name / "**") for name in found]


def load_hub_dataset(config: FinetuneConfig) -> ImageData:
    import datasets

    try:
        loaded = datasets.load_dataset(config.dataset_name, config.dataset_config, cache_dir=_datasets_cache(config))
    except Exception as error:  # load_dataset raises many types: offline, missing, gated, bad config
        raise UserError(f"could not load Hub dataset {config.dataset_name!r}: {first_line(error)}; "
                        "check the id (and HF_HUB_OFFLINE), or use --data-dir PATH") from None
    if config.train_split not in loaded:
        raise UserError(f"dataset {config.dataset_name} has no split {config.train_split!r}; "
                        f"splits: {', '.join(loaded)} (use --train-split)")
    eval_name = config.eval_split or next((name for name in EVAL_SPLIT_NAMES if name in loaded), None)
    if eval_name is not None and eval_name not in loaded:
        raise UserError(f"dataset {config.dataset_name} has no split {eval_name!r}; splits: {', '.join(loaded)}")
    splits = {"train": loaded[config.train_split]}
    if eval_name:
        splits["eval"] = loaded[eval_name]
    test_name = test_split_name(list(loaded), eval_name)
    if test_name:
        splits["test"] = loaded[test_name]
    splits = {key: _canonical_columns(split, config) for key, split in splits.items()}
    names = {"train": config.train_split, "eval": eval_name, "test": test_name}
    if is_label_list(splits["train"].features["label"]) or config.task == MULTI_LABEL:
        feature = splits["train"].features["label"]
        rows = {key: label_set_rows(split) for key, split in splits.items()}
        given = getattr(getattr(feature, "feature", feature), "names", None)  # a (Sequence of) ClassLabel's names
        return _label_set_data(rows, names, config, config.dataset_name, None, given)
    label_names = class_names(splits["train"], config.label_column or "label")
    splits = {key: class_encoded(split, label_names, f"split {names[key]} of {config.dataset_name}")
              for key, split in splits.items()}
    train = splits["train"]
    evaluation = splits.get("eval")
    if evaluation is None:
        train, evaluation = _holdout(train, config)
    return ImageData(train, evaluation, label_names, name=config.dataset_name, eval_split=eval_name or "holdout",
                     test=splits.get("test"), test_split=test_name)


def _canonical_columns(split, config: FinetuneConfig):
    """Rename the image/label columns to `image`/`label`, with a ClassLabel label."""
    import datasets

    def pick(given, candidates, what):
        name = given or next((c for c in candidates if c in split.column_names), None)
        if name not in split.column_names:
            raise UserError(f"dataset has no {what} column {name or ' or '.join(candidates)}; columns: "
                            f"{', '.join(split.column_names)} (use --{what}-column)")
        return name

    image, label = pick(config.image_column, ("image", "img"), "image"), pick(config.label_column,
                                                                             ("label", "labels"), "label")
    split = split.select_columns([image, label]).rename_columns({image: "image", label: "label"})
    if not isinstance(split.features["image"], datasets.Image):
        split = split.cast_column("image", datasets.Image())
    return split


def load_label_combination_folder(root: Path, config: FinetuneConfig) -> ImageData:
    """Class folders named by label combination (`red_dress/`): with --label-delimiter each folder gives its
    images every label in its name; without one (--task multi-label), its one name. Evaluated splits may hold
    combinations train does not, as long as each of their labels is in train."""
    import datasets

    train_dir, eval_dir = find_splits(root, config.train_split, config.eval_split)
    test_name = test_split_name([p.name for p in visible_dirs(root)], eval_dir.name if eval_dir else None)
    dirs = {"train": train_dir, "eval": eval_dir, "test": root / test_name if test_name else None}
    data_files = {"train": [str(train_dir / name / "**") for name in find_classes(train_dir)]}
    for key in ("eval", "test"):
        if dirs[key] is not None:
            data_files[key] = [str(path / "**") for path in visible_dirs(dirs[key]) if has_images(path)]
    loaded = datasets.load_dataset("imagefolder", data_files=data_files, drop_labels=False, drop_metadata=True,
                                   cache_dir=_datasets_cache(config))
    nested = set(loaded["train"].features["label"].names) - {p.name for d in dirs.values() if d
                                                             for p in visible_dirs(d)}
    if nested:  # imagefolder names an image by its innermost folder
        raise UserError(f"{root}: images must sit directly in the label folders (found subfolders "
                        f"{', '.join(sorted(nested)[:5])})")
    rows = {key: label_set_rows(split, config.label_delimiter) for key, split in loaded.items()}
    names = {"train": train_dir.name, "eval": eval_dir.name if eval_dir else None, "test": test_name}
    return _label_set_data(rows, names, config, root.name, root)


def load_manifest_data(files: dict[str, Path], split_names: dict[str, str], config: FinetuneConfig,
                       name: str) -> ImageData:
    """The splits of manifests (CSV/JSONL), their labels encoded for the task they show (label_sets.py)."""
    splits = {key: load_manifest(path, config.image_column, config.label_column, config.label_delimiter,
                                 _datasets_cache(config)) for key, path in files.items()}
    warn_shared_images(splits, split_names)
    splits = {key: image_column(split) for key, split in splits.items()}
    return _label_set_data(splits, split_names, config, name, files["train"].parent)


def _label_set_data(splits: dict, split_names: dict, config: FinetuneConfig, name: str, root: Optional[Path],
                    label_names: Optional[list[str]] = None) -> ImageData:
    """ImageData of splits whose `label` is a list of names per row: the task chosen, the pre-flight run."""
    encoded = encode_label_sets(splits, split_names, config.task, label_names)
    train, evaluation = encoded.splits["train"], encoded.splits.get("eval")
    if evaluation is None:
        train, evaluation = _holdout(train, config)
    return ImageData(train, evaluation, encoded.label_names, name=name, eval_split=split_names.get("eval") or "holdout",
                     root=root, test=encoded.splits.get("test"), test_split=split_names.get("test"),
                     task=encoded.task, task_reason=encoded.task_reason)


def _holdout(train, config: FinetuneConfig):
    import datasets

    if not isinstance(train.features["label"], datasets.ClassLabel):  # multi-label: a seeded random holdout
        parts = train.train_test_split(test_size=config.val_fraction, seed=config.seed)
        return parts["train"], parts["test"]
    counts = Counter(train["label"])
    if min(counts.values(), default=0) < 2:
        raise UserError("no eval split, and too few images per class to hold some out: add a val/ folder")
    parts = train.train_test_split(test_size=config.val_fraction, stratify_by_column="label", seed=config.seed)
    return parts["train"], parts["test"]


def _datasets_cache(config: FinetuneConfig) -> Optional[str]:
    return str(Path(config.cache_dir) / "datasets") if config.cache_dir else None


def load_stream_data(config: FinetuneConfig) -> ImageData:
    """--streaming: the train split as a stream of undecoded images with encoded labels, the eval split map-style
    (stream.py)."""
    import datasets

    streams, split_names, source = open_streams(config)
    image, label = stream_columns(streams["train"], config)
    features = streams["train"].features
    label_names, task, why = stream_labels(nested(features, label) if features else None, config)
    encode = label_encoder(label_names, task)
    columns = [image, label.split(".")[0]]
    train = (streams["train"].select_columns(columns).cast_column(image, datasets.Image(decode=False))
             .map(partial(encoded_record, image=image, label=label, encode=encode), remove_columns=columns))
    evaluation = eval_dataset(streams["eval"], image, label, encode, task, label_names, config, source)
    splits = streams["train"].info.splits
    size = splits[split_names["train"]].num_examples if splits and split_names["train"] in splits else None
    name = config.dataset_name or Path(config.data_files).parent.name
    return ImageData(train, evaluation, label_names, name=name, eval_split=split_names["eval"], task=task,
                     task_reason=why, streaming=True, stream_size=size or None,
                     stream_fingerprint=stream_fingerprint(config, label_names))


def load_image_data(config: FinetuneConfig) -> ImageData:
    """The data the config names: manifests (--train-file, or in --data-dir), --data-dir class folders (named by
    label combination with --label-delimiter), --dataset-name, or the d2l hotdog set; with --max-train-samples /
    --max-eval-samples (eval and test), a stratified seeded subset of each split (multi-label: a seeded random
    one), before any image is decoded. Logs the task and why."""
    root = Path(config.data_dir).expanduser() if config.data_dir else None
    if config.streaming:
        data = load_stream_data(config)
        data.eval = select_samples(data.eval, config.max_eval_samples, config.seed)
        logger.info("task: %s (%s)", data.task, data.task_reason)
        return data
    manifests = manifest_files(config, root)
    if manifests:
        data = load_manifest_data(*manifests, config, root.name if root else manifests[0]["train"].parent.name)
    elif config.dataset_name:
        data = load_hub_dataset(config)
    else:
        folder = root or hotdog_dir(Path(config.cache_dir or default_cache_dir()))
        label_sets = config.label_delimiter or config.task == MULTI_LABEL
        data = (load_label_combination_folder if label_sets else load_image_folder)(folder, config)
        data.name = folder.name if root else "hotdog"
    data.train = select_samples(data.train, config.max_train_samples, config.seed)
    data.eval = select_samples(data.eval, config.max_eval_samples, config.seed)
    if data.test is not None:
        data.test = select_samples(data.test, config.max_eval_samples, config.seed)
    logger.info("task: %s (%s)", data.task, data.task_reason)
    return data
