"""Streaming test data: the local Hub serves dataset repos the way `datasets` streams them from the Hub (over HTTP,
each shard read by Range requests), and tests/stream_data.py writes the same records as local parquet and
webdataset shards. `datasets` runs in this process: conftest set HF_ENDPOINT to the local Hub before any import."""
from __future__ import annotations

import io
import re

import pytest
from datasets import ClassLabel, load_dataset
from datasets.distributed import split_dataset_by_node
from PIL import Image
from stream_data import CLASSES, image_records, write_parquet_shards, write_webdataset_shards


def _ids(rows) -> list[str]:
    return [row["sample_id"] for row in rows]


def _shards_read(hub, since: int, repo_id: str) -> dict[str, set[int]]:
    """Parquet files of `repo_id` fetched since request number `since`: file name -> HTTP statuses."""
    read: dict[str, set[int]] = {}
    for method, path, status in hub.requests[since:]:
        if method == "GET" and (m := re.fullmatch(rf"/datasets/{repo_id}/resolve/\w+/data/(.+\.parquet)", path)):
            read.setdefault(m[1], set()).add(status)
    return read


@pytest.fixture(scope="module")
def photos_repo(hub_dataset) -> str:
    return hub_dataset("tests/photos-stream", train=24, validation=6, num_shards=4)


def test_a_hub_dataset_streams_every_record_once_over_http(hub, photos_repo):
    since = len(hub.requests)
    stream = load_dataset(photos_repo, split="train", streaming=True)
    rows = list(stream)
    assert sorted(_ids(rows)) == [f"{i:05d}" for i in range(24)] and len(rows) == 24
    assert stream.features["label"] == ClassLabel(names=list(CLASSES))
    assert stream.info.splits["train"].num_examples == 24 and stream.num_shards == 4  # from the repo's README
    assert all(row["label"] == int(row["sample_id"]) % 3 for row in rows)
    assert rows[0]["image"].size == (32, 32)
    # Streamed, not downloaded: every shard was read through Range requests (206), none fetched whole.
    assert _shards_read(hub, since, photos_repo) == {f"train-{i:05d}-of-00004.parquet": {206} for i in range(4)}


def test_split_dataset_by_node_gives_two_ranks_disjoint_halves_each_reading_its_own_shards(hub, photos_repo):
    stream = load_dataset(photos_repo, split="train", streaming=True)
    ranks, shards = [], []
    for rank in range(2):
        since = len(hub.requests)
        ranks.append(_ids(split_dataset_by_node(stream, rank=rank, world_size=2)))
        shards.append(set(_shards_read(hub, since, photos_repo)))
    assert len(ranks[0]) == len(ranks[1]) == 12 and not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == [f"{i:05d}" for i in range(24)]
    assert shards == [{f"train-{i:05d}-of-00004.parquet" for i in (rank, rank + 2)} for rank in range(2)]


def test_hf_paths_stream_the_repos_shards_as_data_files(photos_repo):
    stream = load_dataset("parquet", data_files={"train": f"hf://datasets/{photos_repo}/data/train-*.parquet"},
                          split="train", streaming=True)
    assert stream.num_shards == 4 and stream.features["label"] == ClassLabel(names=list(CLASSES))
    assert sorted(_ids(stream)) == [f"{i:05d}" for i in range(24)]


def test_a_hub_dataset_also_downloads_whole_with_both_splits(hub_dataset):
    data = load_dataset(hub_dataset("tests/photos-download", train=8, validation=4, num_shards=2))
    assert {split: len(rows) for split, rows in data.items()} == {"train": 8, "validation": 4}
    assert data["validation"]["sample_id"] == [f"{i:05d}" for i in range(8, 12)]
    assert data["train"].features["label"] == ClassLabel(names=list(CLASSES))


def test_a_multi_label_repo_streams_lists_of_class_labels(hub_dataset):
    stream = load_dataset(hub_dataset("tests/photos-multi", train=6, validation=2, num_shards=2, multi_label=True),
                          split="train", streaming=True)
    assert stream.features["labels"].feature == ClassLabel(names=list(CLASSES))
    assert [row["labels"] for row in stream] == [record["labels"] for record in image_records(6, multi_label=True)]
    assert [1, 2] in [row["labels"] for row in stream]  # some records have two labels


def test_a_private_dataset_streams_only_with_a_token(hub_dataset):
    from stream_data import push_dataset_repo

    repo = push_dataset_repo("tests/photos-private", {"train": image_records(4)}, {"train": 2}, private=True)
    assert _ids(load_dataset(repo, split="train", streaming=True, token="hf_test_token")) == ["00000", "00001",
                                                                                               "00002", "00003"]
    with pytest.raises(Exception, match="tests/photos-private"):
        load_dataset(repo, split="train", streaming=True, token=False)


def test_local_parquet_shards_keep_the_class_labels(tmp_path):
    paths = write_parquet_shards(tmp_path / "shards", image_records(20), num_shards=4)
    assert [p.name for p in paths] == [f"train-{i:05d}-of-00004.parquet" for i in range(4)]
    stream = load_dataset("parquet", data_files=str(tmp_path / "shards" / "train-*.parquet"), split="train",
                          streaming=True)
    assert stream.num_shards == 4 and stream.features["label"] == ClassLabel(names=list(CLASSES))
    assert _ids(stream) == [f"{i:05d}" for i in range(20)]


@pytest.mark.parametrize("multi_label", [False, True])
def test_webdataset_shards_stream_each_record_once_with_its_labels(tmp_path, multi_label):
    records = image_records(20, multi_label=multi_label)
    paths = write_webdataset_shards(tmp_path / "shards", records, num_shards=4)
    assert [p.name for p in paths] == [f"train-{i:06d}.tar" for i in range(4)]
    stream = load_dataset("webdataset", data_files=str(tmp_path / "shards" / "train-*.tar"), split="train",
                          streaming=True)
    rows = list(stream)
    assert [row["__key__"] for row in rows] == [record["sample_id"] for record in records]
    labels = [row["json"]["labels"] for row in rows] if multi_label else [row["cls"] for row in rows]
    assert labels == [record["labels" if multi_label else "label"] for record in records]
    assert rows[0]["jpg"].size == (32, 32)
    halves = [[row["__key__"] for row in split_dataset_by_node(stream, rank, 2)] for rank in range(2)]
    assert len(halves[0]) == len(halves[1]) == 10 and not set(halves[0]) & set(halves[1])


def test_a_truncated_record_opens_and_fails_only_when_decoded():
    records = image_records(4, truncated={2})
    for record in records:
        image = Image.open(io.BytesIO(record["image"]["bytes"]))  # the header is intact in every record
        if record["sample_id"] == "00002":
            with pytest.raises(OSError):
                image.load()
        else:
            image.load()
