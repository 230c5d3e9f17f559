"""Streamable shards written by tests: parquet files and webdataset tars of small generated JPEGs whose record id
can be read back (it is the record's class index, or for an RGB check, its colour)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(record_id: int, size=(40, 32)) -> bytes:
    """A JPEG whose colour follows its class parity (learnable) and whose other channels vary with the id."""
    buffer = io.BytesIO()
    colour = (200 * (record_id % 2), 40 + record_id % 150, 90 + (record_id * 7) % 150)
    Image.fromarray(np.full((*size[::-1], 3), colour, np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_parquet_shards(folder: Path, split: str, shards: int, per_shard: int, label_names: list[str],
                         label_of=lambda record_id: record_id, first_id: int = 0, broken=()) -> list[int]:
    """`split-0000i.parquet` files with an `image` Image column and a ClassLabel `label` (label_of(id), an index
    into label_names, or a list of them for a Sequence(ClassLabel)); ids in `broken` get bytes that are no image.
    Returns the ids written."""
    import datasets

    names = datasets.ClassLabel(names=label_names)
    multi = isinstance(label_of(first_id), list)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Sequence(names) if multi else names})
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(range(first_id, first_id + shards * per_shard))
    for shard in range(shards):
        chunk = ids[shard * per_shard:(shard + 1) * per_shard]
        rows = {"image": [{"bytes": b"not a jpeg" if i in broken else jpeg(i), "path": None} for i in chunk],
                "label": [label_of(i) for i in chunk]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / f"{split}-{shard:05d}.parquet")
    return ids


def write_webdataset_shards(folder: Path, split: str, shards: int, per_shard: int, labels_of, first_id: int = 0
                            ) -> list[int]:
    """`split-0000i.tar` webdataset shards: `<key>.jpg` and `<key>.json` {"labels": labels_of(id)} per record."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(range(first_id, first_id + shards * per_shard))
    for shard in range(shards):
        with tarfile.open(folder / f"{split}-{shard:06d}.tar", "w") as tar:
            for record_id in ids[shard * per_shard:(shard + 1) * per_shard]:
                for suffix, data in (("jpg", jpeg(record_id)),
                                     ("json", json.dumps({"labels": labels_of(record_id)}).encode())):
                    info = tarfile.TarInfo(f"{record_id:06d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return ids
