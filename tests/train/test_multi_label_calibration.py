"""Per-label temperature scaling end to end (issue 23.1, multi-label): a tiny multi-label run with a test split,
and the same run with --calibrate none, whose saved model is the uncalibrated one of the same training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from finished_run import MULTI_LABELS, make_finished_multi_label_run

import hf_finetune
from hf_finetune.serve.batch_predict import TorchRunner
from hf_finetune.tasks.calibration import ECE_BINS, thresholds_for_temperatures


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(calibrated run, uncalibrated run, data folder)."""
    root = tmp_path_factory.mktemp("label-calibration")
    calibrated, data = make_finished_multi_label_run(root / "calibrated")
    plain, _ = make_finished_multi_label_run(root / "plain", "--calibrate", "none")
    return calibrated, plain, data


def _images(data: Path, split: str) -> list[Path]:
    return sorted((data / split).glob("*.jpg"))


def _logits_and_decisions(run: Path, images: list[Path]) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    classifier = hf_finetune.load_classifier(run)
    logits = TorchRunner(classifier, torch.device("cpu")).logits(
        torch.stack([classifier.transform.crop(path) for path in images]))
    return logits, classifier.task.decisions(logits), classifier.task.thresholds


def _report(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["selected"]


@pytest.mark.slow
def test_per_label_temperatures_change_scores_not_decisions(runs):
    """The saved model's scores are sigmoid(plain logit_i / T_i) through load_classifier; its thresholds are
    the uncalibrated ones re-expressed, so every decision on eval and test is the uncalibrated model's."""
    calibrated, plain, data = runs
    label_names = json.loads((calibrated / "config.json").read_text())["label_names"]  # the model's order
    temperatures = [_report(calibrated)["calibration"]["temperatures"][name] for name in label_names]
    assert all(t > 0 for t in temperatures) and any(abs(t - 1) > 1e-3 for t in temperatures)
    for split in ("val", "test"):
        logits, decisions, thresholds = _logits_and_decisions(calibrated, _images(data, split))
        plain_logits, plain_decisions, plain_thresholds = _logits_and_decisions(plain, _images(data, split))
        torch.testing.assert_close(logits.sigmoid(), (plain_logits / torch.tensor(temperatures)).sigmoid(),
                                   rtol=1e-4, atol=1e-5)
        assert thresholds == pytest.approx(thresholds_for_temperatures(plain_thresholds, temperatures), abs=1e-9)
        assert torch.equal(decisions, plain_decisions)
    for split in ("eval", "test"):  # the same decisions give the same counts
        ours, theirs = _report(calibrated)[split], _report(plain)[split]
        for key in ("micro_f1", "macro_f1", "exact_match", "hamming_loss", "map"):
            assert ours[key] == pytest.approx(theirs[key]), (split, key)
        for name in MULTI_LABELS:
            for key in ("precision", "recall", "support"):
                assert ours["per_label"][name][key] == theirs["per_label"][name][key], (split, name, key)


@pytest.mark.slow
def test_metrics_card_plot_report_ece_and_nll_before_and_after(runs):
    calibrated, plain, _ = runs
    report, uncalibrated = _report(calibrated), _report(plain)
    calibration = report["calibration"]
    assert calibration["method"] == "temperature" and calibration["fitted_on"] == "eval"
    assert calibration["bins"] == ECE_BINS and sorted(calibration["temperatures"]) == sorted(MULTI_LABELS)
    for split in ("eval", "test"):  # test: scored with the temperatures fitted on eval
        numbers = calibration[split]
        assert numbers["count"] == report[split]["count"] == 8
        # ECE pools every (image, label) pair
        assert sum(numbers["before"]["bins"]["count"]) == sum(numbers["after"]["bins"]["count"]) == 8 * 3
        # NLL: the mean binary cross-entropy per pair, which is the run's eval loss; after: the saved model's
        assert numbers["after"]["nll"] == pytest.approx(report[split]["loss"], rel=1e-5, abs=1e-5)
        assert numbers["before"]["nll"] == pytest.approx(uncalibrated[split]["loss"], rel=1e-5, abs=1e-5)
        assert 0 <= numbers["after"]["ece"] <= 1
    # The temperatures minimise the eval NLL, and T = 1 (before) is one of the candidates.
    assert calibration["eval"]["after"]["nll"] <= calibration["eval"]["before"]["nll"]
    assert "calibration" not in uncalibrated and not (plain / "calibration.png").exists()
    assert (calibrated / "calibration.png").stat().st_size > 5000
    card = (calibrated / "README.md").read_text()
    assert "temperature-scaled per label" in card and "every decision is the uncalibrated model's" in card
    assert "| threshold | support | temperature |" in card
    for name in MULTI_LABELS:
        scores = report["test"]["per_label"][name]
        assert (f"| {scores['threshold']:.4f} | {scores['support']} | {calibration['temperatures'][name]:.4f} |"
                in card)
    assert (f"| `test` | {calibration['test']['before']['ece']:.4f} | {calibration['test']['after']['ece']:.4f} |"
            in card)
    assert "Calibration" not in (plain / "README.md").read_text()
