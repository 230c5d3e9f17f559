"""Streaming (--streaming): the training split is read record by record, never listed, decoded or cached whole.

A third data source beside folders and manifests, for data larger than the disk: a Hub dataset
(`--dataset-name`) or local/remote shards (`--data-files`: parquet files, or webdataset tars), opened with
`datasets.load_dataset(..., streaming=True)` (its `parquet` and `webdataset` builders). A stream cannot be
scanned, so its labels come from the dataset's features (a ClassLabel, or a Sequence of ClassLabel for a
multi-label set) or from `--label-names`; each record's label is encoded as it is read (`encode_stream_label`).
The eval split is small: it stays map-style and goes through the decode-once cache like a folder's, or with
--max-eval-samples its first N records are taken from the stream into memory. stream_loader.py reads the rest.
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
import re
from functools import partial
from pathlib import Path

from hf_finetune.config import EVAL_SPLIT_NAMES, FinetuneConfig
from hf_finetune.data.label_sets import MULTI_LABEL, SINGLE_LABEL
from hf_finetune.errors import UserError, first_line

logger = logging.getLogger(__name__)

STREAM_IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")  # webdataset names a column by extension
# webdataset: a `.cls` file per record (an index), or a `.json` one holding the labels (`json.labels`: a dotted name
# reaches into a record's dict column).
STREAM_LABEL_COLUMNS = ("label", "labels", "cls", "json.labels", "json.label")
BUILDERS = {".parquet": "parquet", ".tar": "webdataset"}


def expand_braces(pattern: str) -> list[str]:
    """`train-{000000..000099}.tar` as the shell (and webdataset) expands it: fsspec's globs, which datasets
    uses, know `*`, `?` and `[...]` but not brace ranges, so they are expanded here (zero-padded as written)."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    first, last = match.groups()
    width = len(first) if first.startswith("0") else 0
    return [expanded for number in range(int(first), int(last) + 1)
            for expanded in expand_braces(pattern[:match.start()] + str(number).zfill(width) + pattern[match.end():])]


def _builder(patterns: list[str], flag: str) -> str:
    suffixes = {suffix for suffix in BUILDERS for pattern in patterns if pattern.endswith(suffix)}
    if len(suffixes) != 1 or not all(pattern.endswith(tuple(BUILDERS)) for pattern in patterns):
        raise UserError(f"{flag} {' '.join(patterns[:2])}: stream parquet files (.parquet) or webdataset "
                        "shards (.tar), one kind per split")
    return BUILDERS[suffixes.pop()]


def open_streams(config: FinetuneConfig) -> tuple[dict, dict, str]:
    """({"train", "eval"}: datasets IterableDataset, {"train", "eval"}: split name, builder or Hub id)."""
    import datasets

    if config.data_files:
        files = {"train": expand_braces(config.data_files)}
        if not config.eval_data_files:
            raise UserError("--data-files: a stream has no holdout to carve an eval split from; give "
                            "--eval-data-files GLOB (e.g. 'shards/val-*.parquet')")
        files["eval"] = expand_braces(config.eval_data_files)
        builder = _builder(files["train"], "--data-files")
        _builder(files["eval"], "--eval-data-files")
        streams = _load(lambda: datasets.load_dataset(builder, data_files=files, streaming=True), config.data_files)
        return dict(streams), {"train": Path(files["train"][0]).parent.name or "train", "eval": "eval"}, builder
    streams = _load(lambda: datasets.load_dataset(config.dataset_name, config.dataset_config, streaming=True),
                    config.dataset_name)
    if config.train_split not in streams:
        raise UserError(f"dataset {config.dataset_name} has no split {config.train_split!r}; splits: "
                        f"{', '.join(streams)} (use --train-split)")
    eval_name = config.eval_split or next((name for name in EVAL_SPLIT_NAMES if name in streams), None)
    if eval_name not in streams:
        wanted = eval_name or " or ".join(EVAL_SPLIT_NAMES)
        raise UserError(f"dataset {config.dataset_name} has no eval split ({wanted}); splits: {', '.join(streams)}; a "
                        "stream cannot hold one out: use --eval-split NAME")
    return ({"train": streams[config.train_split], "eval": streams[eval_name]},
            {"train": config.train_split, "eval": eval_name}, config.dataset_name)


def _load(load, what: str):
    try:
        return load()
    except UserError:
        raise
    except Exception as error:  # load_dataset raises many types: offline, missing files, gated, bad config
        raise UserError(f"could not open {what} as a stream: {first_line(error)}; check the id or the glob "
                        "(and HF_HUB_OFFLINE)") from None


def stream_columns(stream, config: FinetuneConfig) -> tuple[str, str]:
    """The image and label columns of a stream (its features, or its first record's keys when it has none)."""
    columns = stream.features or next(iter(stream))

    def pick(given, candidates, what):
        name = given or next((c for c in candidates if nested(columns, c) is not None), None)
        if name is None or nested(columns, name) is None:
            raise UserError(f"the stream has no {what} column {name or ' or '.join(candidates)}; columns: "
                            f"{', '.join(columns)} (use --{what}-column)")
        return name

    return pick(config.image_column, STREAM_IMAGE_COLUMNS, "image"), pick(config.label_column, STREAM_LABEL_COLUMNS,
                                                                          "label")


def nested(record, dotted: str):
    """record["json"]["labels"] for "json.labels" (a record, or features); None where there is no such field."""
    for key in dotted.split("."):
        if not hasattr(record, "get"):
            return None
        record = record.get(key)
    return record


def given_label_names(option: str) -> list[str]:
    """--label-names: 'a,b,c', or a file with one name per line."""
    path = Path(option).expanduser()
    names = path.read_text().splitlines() if path.is_file() else option.split(",")
    names = [name.strip() for name in names if name.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError(f"--label-names {option}: give at least two distinct names, comma-separated or one per line "
                        "of a file")
    return names


def stream_labels(feature, config: FinetuneConfig) -> tuple[list[str], str, str]:
    """(label names, task, why) from --label-names, else the label feature's ClassLabel names."""
    import datasets

    inner = feature.feature if isinstance(feature, (datasets.Sequence, datasets.List)) else feature
    is_list = inner is not feature or isinstance(feature, list)
    task = MULTI_LABEL if is_list or config.task == MULTI_LABEL else SINGLE_LABEL
    if is_list and config.task == SINGLE_LABEL:
        raise UserError("--task single-label, but the stream's label column holds lists of labels: use --task "
                        "multi-label (or auto)")
    why = ("forced by --task multi-label" if config.task == MULTI_LABEL and not is_list else
           f"the stream's label column is a {'list' if is_list else 'single label'} per record")
    if config.label_names:
        return given_label_names(config.label_names), task, why
    if isinstance(inner, datasets.ClassLabel):
        return list(inner.names), task, why
    raise UserError(f"the stream's label column is {type(inner).__name__ if inner is not None else 'untyped'}, not "
                    "a ClassLabel, and a stream cannot be scanned for its label names: give --label-names "
                    "name1,name2,... (or a file with one per line) in class-index order")


def encode_stream_label(raw, index: dict, count: int, multi: bool):
    """A record's label as a class index (single-label) or a sorted list of them (multi-label): names are looked
    up in `index`, integers are taken as class indices."""
    values = raw if isinstance(raw, (list, tuple)) else [] if raw is None else [raw]
    encoded = []
    for value in values:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit() and value.strip() not in index:
            value = int(value)  # webdataset's .cls files hold the index as text
        if isinstance(value, str):
            if value.strip() not in index:
                raise UserError(f"a streamed record has the label {value!r}, which is not one of the label names "
                                f"({', '.join(list(index)[:5])}...): fix --label-names")
            encoded.append(index[value.strip()])
        elif not 0 <= int(value) < count:
            raise UserError(f"a streamed record has the class index {value}, outside the {count} label names: "
                            "fix --label-names")
        else:
            encoded.append(int(value))
    if multi:
        return sorted(set(encoded))
    if len(encoded) != 1:
        raise UserError(f"a streamed record has {len(encoded)} labels in a single-label task: use --task "
                        "multi-label")
    return encoded[0]


def label_encoder(label_names: list[str], task: str):
    """The picklable per-record encoder the stream's DataLoader workers apply."""
    return partial(encode_stream_label, index={name: i for i, name in enumerate(label_names)},
                   count=len(label_names), multi=task == MULTI_LABEL)


def stream_fingerprint(config: FinetuneConfig, label_names: list[str]) -> str:
    """A stream's identity for the resume check (a datasets IterableDataset hashes differently in every process):
    its source, split and labels and, for local shards, each file's path, size and modification time."""
    from datasets.fingerprint import Hasher

    patterns = expand_braces(config.data_files) if config.data_files else []
    files = sorted(path for pattern in patterns for path in glob.glob(os.path.expanduser(pattern)))
    return Hasher.hash({"source": config.dataset_name or config.data_files, "config": config.dataset_config,
                        "split": config.train_split, "labels": label_names,
                        "files": [(path, os.path.getsize(path), os.path.getmtime(path)) for path in files]})


def encoded_record(record: dict, image: str, label: str, encode) -> dict:
    """A streamed record as `image` and its encoded `label` (a module function: the loader's workers pickle it)."""
    return {"image": record[image], "label": encode(nested(record, label))}


def eval_dataset(stream, image: str, label: str, encode, task: str, label_names: list[str], config, builder: str):
    """The eval split as a map-style Dataset of `image` and an encoded `label`: the first --max-eval-samples
    records of its stream (in memory), or the whole split loaded by datasets (its cache, then the decode-once
    cache)."""
    import datasets

    names = datasets.ClassLabel(names=label_names)
    features = datasets.Features({"image": datasets.Image(), "label": names if task == SINGLE_LABEL
                                  else datasets.Sequence(names)})
    if config.max_eval_samples:
        records = itertools.islice(stream.cast_column(image, datasets.Image(decode=False)), config.max_eval_samples)
        rows = [encoded_record(record, image, label, encode) for record in records]
        return datasets.Dataset.from_list(rows, features=features)
    cache = str(Path(config.cache_dir) / "datasets") if config.cache_dir else None
    if config.data_files:
        loaded = datasets.load_dataset(builder, data_files=expand_braces(config.eval_data_files), split="train",
                                       cache_dir=cache)
    else:
        loaded = datasets.load_dataset(config.dataset_name, config.dataset_config, split=stream.split, cache_dir=cache)
    loaded = loaded.select_columns([image, label.split(".")[0]]).cast_column(image, datasets.Image(decode=False))
    encoded = loaded.map(partial(encoded_record, image=image, label=label, encode=encode),
                         remove_columns=loaded.column_names, features=features, desc="Encoding the eval labels")
    return encoded
