"""`python -m benchmarks.streaming`: a photo folder to parquet shards that stand alone, then the streamed and the
cached loader measured on the same photos (not how fast: that is BENCHMARKS.md)."""

from __future__ import annotations

import shutil

import pytest
from conftest import make_image_folder, needs_stream_loader
from test_benchmark import _rows, run_benchmark


@pytest.mark.slow  # four measuring processes: 1.7 min here, beside other work
@needs_stream_loader
def test_streaming_benchmark_measures_both_loaders_on_shards_that_hold_the_images(tmp_path):
    from datasets import ClassLabel, load_dataset

    photos = make_image_folder(tmp_path / "photos", per_class=(6, 2), size=(48, 40))
    output, shards = tmp_path / "BENCHMARKS.md", tmp_path / "shards"
    run_benchmark("--data-dir", photos, "--shards-dir", shards, "--num-shards", "2", "--workers", "0", "1",
                  "--epochs", "2", "--batch-size", "4", "--model", "test_resnet", "--output", output,
                  module="benchmarks.streaming")
    text = output.read_text()
    assert f"--data-dir {photos}" in text and "load average" in text and "2 parquet shards" in text
    rows = _rows(text, "streamed") + _rows(text, "cached")
    assert [(row[0], row[1], row[2]) for row in rows] == [(loader, "12", workers) for loader in ("streamed", "cached")
                                                          for workers in ("0", "1")]
    for row in rows:
        assert float(row[3]) > 0 and float(row[4]) > 0 and all(int(cell) > 0 for cell in row[-3:])
    shutil.rmtree(photos)  # the shards hold the image bytes, not paths to the photos
    stream = load_dataset("parquet", data_files=str(shards / "train-*.parquet"), split="train", streaming=True)
    assert stream.features["label"] == ClassLabel(names=["cat", "dog"])
    rows = list(stream)
    assert len(rows) == 12 and {row["image"].size for row in rows} == {(48, 40)}
    assert sorted(row["label"] for row in rows) == [0] * 6 + [1] * 6
