"""Temperature scaling end to end (issue 23.1): a tiny run with a test split, and the same run with
--calibrate none, whose saved model is the uncalibrated one of the same training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder, run_script
from safetensors.torch import load_file

import hf_finetune
from hf_finetune.serve.batch_predict import TorchRunner
from hf_finetune.tasks.calibration import ECE_BINS, fit_temperature


def _argv(photos: Path, out: Path, *extra) -> list:
    # Three classes, two sharing a colour: learnable in part, so the eval probabilities are neither all 1 nor flat.
    return ["--data-dir", photos, "--model", "test_resnet", "--no-pretrained", "--img-size", "48", "--epochs", "2",
            "--batch-size", "8", "--num-workers", "0", "--mixed-precision", "no", "--lr", "0.02", "--tta", "flip",
            "--output-dir", out, *extra]


def _logits(run: Path, images: list[tuple[str, int]]) -> torch.Tensor:
    classifier = hf_finetune.load_classifier(run)
    return TorchRunner(classifier, torch.device("cpu")).logits(
        torch.stack([classifier.transform.crop(path) for path, _ in images]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path, str]:
    root = tmp_path_factory.mktemp("calibration")
    photos = make_image_folder(root / "photos", classes=("a", "b", "d"), per_class=(10, 6, 6),
                               splits=("train", "val", "test"))
    calibrated = run_script("finetune.py", *_argv(photos, root / "calibrated"))
    run_script("finetune.py", *_argv(photos, root / "plain", "--calibrate", "none"))
    return photos, root / "calibrated", root / "plain", calibrated.stdout


def _eval_images(photos: Path, split: str = "val") -> list[tuple[str, int]]:
    return [(str(path), index) for index, name in enumerate(("a", "b", "d"))
            for path in sorted((photos / split / name).glob("*.jpg"))]


def test_metrics_plot_card_and_log_report_the_calibration(runs):
    photos, calibrated, plain, stdout = runs
    report = json.loads((calibrated / "metrics.json").read_text())["selected"]
    calibration, uncalibrated = report["calibration"], json.loads((plain / "metrics.json").read_text())["selected"]
    assert calibration["method"] == "temperature" and calibration["fitted_on"] == "eval"
    assert calibration["bins"] == ECE_BINS and calibration["temperature"] > 0
    for split in ("eval", "test"):  # test: scored with the temperature fitted on eval
        numbers = calibration[split]
        assert numbers["count"] == report[split]["count"] == 18
        assert sum(numbers["before"]["bins"]["count"]) == sum(numbers["after"]["bins"]["count"]) == 18
        # The report is the saved (calibrated) model's; before: the same weights' uncalibrated logits.
        # abs: the float64 NLL against the run's float32 loss; a tiny eval set the model separates perfectly gives
        # NLLs near 1e-6, where float32 rounding alone differs by a few parts in a thousand.
        assert numbers["after"]["nll"] == pytest.approx(report[split]["loss"], rel=1e-5, abs=1e-5)
        assert numbers["before"]["nll"] == pytest.approx(uncalibrated[split]["loss"], rel=1e-5, abs=1e-5)
        assert report[split]["confusion_matrix"] == uncalibrated[split]["confusion_matrix"]
        assert 0 <= numbers["after"]["ece"] <= 1 and numbers["after"]["nll"] > 0
    # T minimises the eval NLL, and T = 1 (before) is one of the candidates.
    assert calibration["eval"]["after"]["nll"] <= calibration["eval"]["before"]["nll"]
    assert "calibration" not in uncalibrated
    assert not (plain / "calibration.png").exists()
    assert (calibrated / "calibration.png").stat().st_size > 5000

    assert f"calibration: temperature {calibration['temperature']:.3f} fitted on the eval split" in stdout
    before, after = calibration["eval"]["before"], calibration["eval"]["after"]
    assert f"eval: ECE {before['ece']:.4f} -> {after['ece']:.4f}, NLL {before['nll']:.4f} -> {after['nll']:.4f}" \
        in stdout
    card = (calibrated / "README.md").read_text()
    assert f"T = {calibration['temperature']:.4f}, fitted by minimum NLL on the `val` split" in card
    assert f"| `test` | {calibration['test']['before']['ece']:.4f} | {calibration['test']['after']['ece']:.4f} |" \
        in card
    assert "](calibration.png)" in card
    assert "Calibration" not in (plain / "README.md").read_text()


def test_the_saved_model_gives_softmax_of_the_uncalibrated_logits_over_t_and_the_same_argmax(runs):
    photos, calibrated, plain, _ = runs
    temperature = json.loads((calibrated / "metrics.json").read_text())["selected"]["calibration"]["temperature"]
    # The same training: every weight equal but the head's, which is divided by T.
    saved, uncalibrated = load_file(calibrated / "model.safetensors"), load_file(plain / "model.safetensors")
    assert saved.keys() == uncalibrated.keys()
    assert all(torch.equal(saved[key], uncalibrated[key]) for key in saved if not key.startswith("fc."))
    assert not torch.equal(saved["fc.weight"], uncalibrated["fc.weight"])
    for split in ("val", "test"):
        images = _eval_images(photos, split)
        logits, reference = _logits(calibrated, images), _logits(plain, images)
        torch.testing.assert_close(logits.softmax(dim=1), (reference / temperature).softmax(dim=1),
                                   rtol=1e-5, atol=1e-6)
        assert torch.equal(logits.argmax(dim=1), reference.argmax(dim=1)), split
    # T is the one the uncalibrated saved weights' plain eval logits give (not the TTA ones).
    images = _eval_images(photos)
    labels = torch.tensor([label for _, label in images])
    assert fit_temperature(_logits(plain, images), labels) == pytest.approx(temperature, rel=1e-3)
