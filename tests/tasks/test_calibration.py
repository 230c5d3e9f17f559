"""Temperature scaling's maths (issue 23.1): T fitted by minimum NLL, ECE over equal-width bins; one T per label
for multi-label, with the pooled ECE and the thresholds re-expressed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_finetune.tasks.calibration import (MIN_TEMPERATURE, calibration_numbers, expected_calibration_error,
                                           fit_label_temperatures, fit_temperature, label_calibration_numbers,
                                           label_reliability_bins, negative_log_likelihood, reliability_bins,
                                           thresholds_for_temperatures)
from hf_finetune.tasks.multi_label import MultiLabel


def _calibrated_set(n: int = 20000, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is the true label distribution: labels are drawn from it, so T = 1 is optimal."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, classes, generator=generator)
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


def test_a_calibrated_set_gives_t_one_and_logits_scaled_by_three_give_t_three():
    logits, labels = _calibrated_set()
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.03)
    assert fit_temperature(3 * logits, labels) == pytest.approx(3.0, rel=0.03)
    assert fit_temperature(logits / 2, labels) == pytest.approx(0.5, rel=0.03)


def test_the_fitted_t_minimises_the_nll_and_improves_the_ece_of_over_confident_logits():
    logits, labels = _calibrated_set()
    over_confident = 3 * logits
    t = fit_temperature(over_confident, labels)
    best = negative_log_likelihood(over_confident, labels, t)
    assert best < negative_log_likelihood(over_confident, labels, t * 1.05)
    assert best < negative_log_likelihood(over_confident, labels, t / 1.05)
    numbers = calibration_numbers(over_confident, labels, t)
    assert numbers["count"] == len(labels)
    assert numbers["after"]["nll"] == pytest.approx(best) and numbers["before"]["nll"] > best
    assert numbers["before"]["ece"] > 0.1 > 0.02 > numbers["after"]["ece"]


def test_a_set_the_model_separates_gives_a_small_positive_t():
    logits, labels = torch.tensor([[4.0, 0.0], [0.0, 4.0], [3.0, 1.0]]), torch.tensor([0, 1, 0])
    t = fit_temperature(logits, labels)
    assert MIN_TEMPERATURE <= t < 1  # sharper is always better here; the NLL's gradient vanishes or T hits the bound


def test_ece_on_known_bins():
    # Two samples at confidence 0.95 (bin 15 of 15), one right, one wrong: gap 0.45.
    # Two at 0.62 (bin 10, (0.6, 0.667]), both right: gap 0.38. ECE = 0.5 * 0.45 + 0.5 * 0.38 = 0.415.
    probabilities = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.62, 0.38], [0.38, 0.62]])
    labels = torch.tensor([0, 0, 0, 1])
    bins = reliability_bins(probabilities, labels)
    assert bins["count"] == [0] * 9 + [2] + [0] * 4 + [2]
    assert bins["confidence"][9] == pytest.approx(0.62) and bins["accuracy"][9] == 1.0
    assert bins["confidence"][14] == pytest.approx(0.95) and bins["accuracy"][14] == 0.5
    assert bins["accuracy"][0] is None and bins["confidence"][0] is None
    assert expected_calibration_error(bins) == pytest.approx(0.415)


def test_bins_are_closed_on_the_right_and_one_falls_in_the_last():
    probabilities = torch.tensor([[0.1, 0.1, 0.8], [1.0, 0.0, 0.0], [0.5, 0.3, 0.2]])
    bins = reliability_bins(probabilities, torch.tensor([2, 0, 1]), bins=4)
    # 0.8 is in (0.75, 1], 1.0 too; 0.5 (= 2/4 exactly) in (0.25, 0.5], and that prediction is wrong.
    assert bins["count"] == [0, 1, 0, 2]
    assert bins["accuracy"][1] == 0.0 and bins["accuracy"][3] == 1.0


def test_nll_is_the_cross_entropy_of_the_scaled_logits():
    logits, labels = _calibrated_set(n=100)
    assert negative_log_likelihood(logits, labels, 2.0) == pytest.approx(float(F.cross_entropy(logits / 2, labels)))


def _calibrated_labels(n: int = 20000, labels: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-label logits whose sigmoids are the true probabilities of the labels: T = 1 is optimal per label."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, labels, generator=generator)
    return logits, torch.bernoulli(logits.sigmoid(), generator=generator)


def test_one_temperature_per_label_recovers_each_labels_scale():
    logits, targets = _calibrated_labels()
    scales = torch.tensor([1.0, 3.0, 0.5, 2.0])
    fitted = fit_label_temperatures(logits * scales, targets)
    assert fitted == pytest.approx(scales.tolist(), rel=0.04)


def test_per_label_temperatures_minimise_each_labels_nll_and_improve_the_pooled_ece():
    logits, targets = _calibrated_labels()
    over_confident = logits * torch.tensor([3.0, 2.0, 4.0, 1.5])
    fitted = fit_label_temperatures(over_confident, targets)
    for label, t in enumerate(fitted):
        def nll(temperature, column=over_confident[:, label], target=targets[:, label]):
            return float(F.binary_cross_entropy_with_logits(column / temperature, target))
        assert nll(t) < nll(t * 1.05) and nll(t) < nll(t / 1.05)
    numbers = label_calibration_numbers(over_confident, targets, fitted)
    assert numbers["count"] == len(targets)
    assert numbers["after"]["nll"] < numbers["before"]["nll"]
    assert numbers["after"]["nll"] == pytest.approx(
        float(F.binary_cross_entropy_with_logits(over_confident / torch.tensor(fitted), targets)))
    assert numbers["before"]["ece"] > 0.05 > 0.01 > numbers["after"]["ece"]
    assert sum(numbers["after"]["bins"]["count"]) == targets.numel()  # every (image, label) pair, pooled


def test_a_label_with_one_class_in_the_split_keeps_t_one():
    logits, targets = _calibrated_labels(n=200)
    targets[:, 1], targets[:, 2] = 0, 1
    fitted = fit_label_temperatures(3 * logits, targets)
    assert fitted[1] == fitted[2] == 1.0 and fitted[0] != 1.0


def test_pooled_bins_count_pairs_and_their_fraction_positive():
    scores = torch.tensor([[0.95, 0.05], [0.95, 0.62]])
    targets = torch.tensor([[1, 0], [0, 1]])
    bins = label_reliability_bins(scores, targets)
    assert bins["count"][14] == 2 and bins["accuracy"][14] == 0.5 and bins["confidence"][14] == pytest.approx(0.95)
    assert bins["count"][0] == 1 and bins["accuracy"][0] == 0.0
    assert bins["count"][9] == 1 and bins["accuracy"][9] == 1.0
    # ECE: 2/4 * |0.5 - 0.95| + 1/4 * |0 - 0.05| + 1/4 * |1 - 0.62|
    assert expected_calibration_error(bins) == pytest.approx(0.5 * 0.45 + 0.25 * 0.05 + 0.25 * 0.38)


def test_thresholds_re_expressed_for_the_temperatures_keep_every_decision():
    logits = 4 * torch.randn(5000, 3, generator=torch.Generator().manual_seed(1))
    thresholds, temperatures = [0.3, 0.5, 0.81], [2.5, 0.7, 1.6]
    scaled = thresholds_for_temperatures(thresholds, temperatures)
    assert scaled[1] == 0.5 and scaled[0] > 0.3 and scaled[2] < 0.81  # softer scores: thresholds nearer 1/2
    before = logits.double().sigmoid() >= torch.tensor(thresholds, dtype=torch.float64)
    after = (logits.double() / torch.tensor(temperatures)).sigmoid() >= torch.tensor(scaled, dtype=torch.float64)
    assert torch.equal(before, after)


def test_the_task_re_expresses_tuned_thresholds_and_keeps_a_fixed_one():
    logits, targets = _calibrated_labels(n=400, labels=3)
    temperatures = [2.0, 0.5, 1.5]
    for fixed in (None, 0.4):
        task = MultiLabel(["a", "b", "c"])
        metrics = task.create_metrics()
        metrics.update(logits, targets)
        task.fit_decisions(metrics, fixed)
        before = task.decisions(logits)
        tuned = list(task.thresholds)
        task.scale_decisions(temperatures, fixed)
        if fixed is None:  # the same decisions on the calibrated logits
            assert task.thresholds == thresholds_for_temperatures(tuned, temperatures)
            assert torch.equal(task.decisions(logits / torch.tensor(temperatures)), before)
        else:  # --threshold is on the scores the saved model gives: the calibrated ones
            assert task.thresholds == [0.4] * 3
