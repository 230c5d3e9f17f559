"""Generated image records for streaming tests, written the ways users hold data larger than a disk.

One record: a readable `sample_id` ("00007"), a small JPEG whose colour depends on its class (learnable), and
a `label` (a `ClassLabel`) or, multi-label, `labels` (a list of `ClassLabel`). The same records become
- parquet shards in a dataset repo on the local Hub (`push_dataset_repo`: `datasets`' own `push_to_hub`, which
  also writes the README's `dataset_info`, so the `ClassLabel` names and split sizes travel with the repo),
- local parquet shards (`write_parquet_shards`: `to_parquet` keeps the features in the parquet schema),
- webdataset tars (`write_webdataset_shards`: `<id>.jpg` + `<id>.cls`, or `<id>.json` {"labels": [...]}).
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Callable, Optional, Union

CLASSES = ("cat", "dog", "bird")


def _jpeg(class_index: int, seed: int, size: int) -> bytes:
    import numpy as np
    from PIL import Image

    base = np.zeros((size, size, 3), dtype=np.float32)
    base[..., class_index % 3] = 200
    noise = np.random.default_rng(seed).normal(0, 30, base.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def image_records(count: int, classes=CLASSES, size: int = 32, multi_label: bool = False, first: int = 0,
                  truncated=(), label_of: Optional[Callable[[int], Union[int, list]]] = None) -> list[dict]:
    """`count` records with ids first..first+count-1; record i has class i % len(classes) (multi-label: also
    class (i + 1) % len(classes) when i is odd), or label_of(i): a class index, or a list of them (multi-label).
    The records whose numbers are in `truncated` hold a JPEG cut in the middle of its pixel data: it opens, and
    fails only when decoded, as a real truncated download does."""
    records = []
    for i in range(first, first + count):
        label = i % len(classes) if label_of is None else label_of(i)
        data = _jpeg(min(label) if isinstance(label, list) else label, i, size)
        if i in truncated:  # cut halfway through the compressed scan, after the start-of-scan marker
            scan = data.index(b"\xff\xda")
            data = data[:scan + (len(data) - scan) // 2]
        record = {"sample_id": f"{i:05d}", "image": {"bytes": data, "path": None}}
        if isinstance(label, list):
            record["labels"] = label
        elif multi_label:
            record["labels"] = sorted({label, (label + 1) % len(classes)} if i % 2 else {label})
        else:
            record["label"] = label
        records.append(record)
    return records


def record_features(classes=CLASSES, multi_label: bool = False):
    from datasets import ClassLabel, Features, Image, List, Value

    label = {"labels": List(ClassLabel(names=list(classes)))} if multi_label else \
        {"label": ClassLabel(names=list(classes))}
    return Features({"sample_id": Value("string"), "image": Image(), **label})


def records_dataset(records: list[dict], classes=CLASSES):
    from datasets import Dataset

    return Dataset.from_list(records, features=record_features(classes, "labels" in records[0]))


def push_dataset_repo(repo_id: str, splits: dict[str, list[dict]], num_shards: dict[str, int], classes=CLASSES,
                      token: str = "hf_test_token", private: bool = False) -> str:
    """Upload `splits` (split name -> records) to the Hub that HF_ENDPOINT names, each split as
    `num_shards[split]` parquet shards (data/<split>-0000i-of-0000K.parquet, through LFS as on the Hub)."""
    from datasets import DatasetDict

    dataset = DatasetDict({split: records_dataset(records, classes) for split, records in splits.items()})
    dataset.push_to_hub(repo_id, num_shards=num_shards, token=token, private=private)
    return repo_id


def write_parquet_shards(folder: Path, records: list[dict], num_shards: int, classes=CLASSES,
                         split: str = "train") -> list[Path]:
    """`records` as `num_shards` contiguous parquet shards folder/<split>-0000i-of-0000K.parquet."""
    dataset = records_dataset(records, classes)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{split}-{i:05d}-of-{num_shards:05d}.parquet" for i in range(num_shards)]
    for i, path in enumerate(paths):
        dataset.shard(num_shards, i, contiguous=True).to_parquet(str(path))
    return paths


def write_webdataset_shards(folder: Path, records: list[dict], num_shards: int, split: str = "train") -> list[Path]:
    """`records` as `num_shards` contiguous tars folder/<split>-00000i.tar; a record's key is its sample id."""
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(records) // num_shards)
    paths = []
    for i in range(num_shards):
        paths.append(folder / f"{split}-{i:06d}.tar")
        with tarfile.open(paths[-1], "w") as tar:
            for record in records[i * per_shard:(i + 1) * per_shard]:
                label = (f"{record['sample_id']}.cls", str(record["label"]).encode()) if "label" in record else \
                    (f"{record['sample_id']}.json", json.dumps({"labels": record["labels"]}).encode())
                for name, data in ((f"{record['sample_id']}.jpg", record["image"]["bytes"]), label):
                    member = tarfile.TarInfo(name)
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
    return paths
