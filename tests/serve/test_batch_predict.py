"""scripts/predict.py over many files: files, folders and globs; CSV and JSONL; --tta flip; bad files skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script
from finished_run import LABELS, make_finished_run
from PIL import Image

from hf_finetune.serve.batch_predict import TorchRunner, expand_inputs, predict_files
from hf_finetune.serve.predict import load_classifier, predict


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_finished_run(tmp_path_factory.mktemp("batch") / "run")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """photos/a/*.jpg, photos/b/nested/*.png and a broken file; colours differ per image."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index, relative in enumerate(["a/0.jpg", "a/1.jpg", "b/nested/2.png", "b/nested/3.png", "c/4.jpg"]):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (90 + index, 120, 3), np.uint8)).save(path)
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "a" / "notes.txt").write_text("not an image, not picked up from a folder")
    return root


def test_inputs_mix_files_folders_and_globs_each_once(photos):
    found, missing = expand_inputs([str(photos / "c" / "4.jpg"), str(photos / "a"), str(photos / "b" / "**" / "*.png"),
                                    str(photos / "a" / "0.jpg"), str(photos / "none" / "*.jpg")])
    assert [Path(path).relative_to(photos).as_posix() for path in found] == [
        "c/4.jpg", "a/0.jpg", "a/1.jpg", "a/broken.jpg", "b/nested/2.png", "b/nested/3.png"]
    assert [failure.path for failure in missing] == [str(photos / "none" / "*.jpg")]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_script_writes_every_readable_file_and_reports_the_rest(run, photos, tmp_path, suffix):
    output = tmp_path / f"preds{suffix}"
    result = run_script("predict.py", run, photos, "--output", output, "--batch-size", "2", "--top-k", "2",
                        check=False)
    assert result.returncode == 1
    broken = photos / "a" / "broken.jpg"
    assert any(line.startswith(f"skipping {broken}: ") for line in result.stderr.splitlines()), result.stderr
    if suffix == ".csv":
        rows = list(csv.DictReader(output.open()))
        got = [(row["path"], [row["label_1"], row["label_2"]], [float(row["probability_1"]),
                                                                 float(row["probability_2"])]) for row in rows]
    else:
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        got = [(row["path"], row["labels"], row["probabilities"]) for row in rows]
    paths = sorted(str(path) for path in photos.rglob("*") if path.suffix in (".jpg", ".png") and path != broken)
    assert sorted(path for path, _, _ in got) == paths
    # The same answers as the one-call API on each file alone (another batch composition).
    for path, labels, probabilities in got:
        [expected] = predict(load_classifier(run), [path], top_k=2)
        assert labels == [label for label, _ in expected]
        assert probabilities == pytest.approx([p for _, p in expected], abs=1e-5)


def test_tta_flip_averages_the_logits_of_the_image_and_its_mirror(run, tmp_path):
    # An asymmetric photo and its mirror image as a file: crop and mirror commute for this size (160 px
    # resized to 168 and center-cropped back, an even margin).
    pixels = np.random.default_rng(1).integers(0, 255, (160, 160, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    Image.fromarray(pixels[:, ::-1]).save(tmp_path / "mirror.png")
    runner = TorchRunner(load_classifier(run))
    plain, mirrored = (predict_files(runner, [str(tmp_path / name)], top_k=3, progress=False)
                       for name in ("photo.png", "mirror.png"))
    [[flipped]] = [list(predict_files(runner, [str(tmp_path / "photo.png")], top_k=3, tta="flip", progress=False))]
    log_probabilities = [torch.tensor([dict(prediction.top)[label] for label in LABELS]).log()
                         for [prediction] in (list(plain), list(mirrored))]
    # softmax of the mean logits = softmax of the mean log-probabilities (each differs by a constant).
    expected = ((log_probabilities[0] + log_probabilities[1]) / 2).softmax(dim=-1)
    actual = torch.tensor([dict(flipped.top)[label] for label in LABELS])
    assert torch.allclose(actual, expected, atol=1e-5)
    assert not torch.allclose(actual, log_probabilities[0].exp(), atol=1e-5)  # the mirror did change the answer
