"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one temperature T fitted
on held-out logits by minimising the NLL of softmax(logits / T), and the numbers that show what it did: ECE over
15 equal-width confidence bins, NLL, and the bins themselves (for the reliability diagram).

Multi-label: each label's sigmoid is its own binary problem, so each label gets its own temperature
(`fit_label_temperatures`, the same fit vectorised over labels), and ECE / NLL pool every (image, label) pair
(`label_calibration_numbers`).
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import torch
import torch.nn.functional as F

ECE_BINS = 15
# T is kept in [1/20, 20]: a split the model already separates perfectly drives the NLL-optimal T to 0.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises mean cross-entropy(logits / T, labels).

    LBFGS (torch's, as in Guo et al.'s code) on log T: the log keeps T positive with no constraint, and the NLL
    is convex in 1/T, so it has one minimum in log T, which LBFGS with a strong-Wolfe line search reaches in a
    few steps. In float64 on the CPU, so every process of a run gets the same T from the same gathered logits.
    """
    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    return float(_minimise_over_log_t(lambda t: F.cross_entropy(logits / t, labels), 1)[0])


def fit_label_temperatures(logits: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per label i, the T_i > 0 that minimises the mean binary cross-entropy of sigmoid(logits[:, i] / T_i)
    against the multi-hot targets [samples, labels]. The labels' NLLs are independent, so one LBFGS on their sum
    fits them all at once. A label whose targets here are all 0 or all 1 keeps T = 1: its NLL only falls as T
    shrinks, so the split says nothing about its calibration."""
    logits, targets = logits.detach().double().cpu(), targets.detach().double().cpu()
    temperatures = _minimise_over_log_t(
        lambda t: F.binary_cross_entropy_with_logits(logits / t, targets, reduction="none").mean(0).sum(),
        logits.shape[1])
    positives = targets.sum(0)
    one_class = (positives == 0) | (positives == len(targets))
    return torch.where(one_class, torch.ones_like(temperatures), temperatures).tolist()


def _minimise_over_log_t(nll, count: int) -> torch.Tensor:
    """The `count` temperatures in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimise `nll(temperatures)`."""
    log_t = torch.zeros(count, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # Clamped inside the loss too: a separable split would otherwise send log T towards -inf.
        loss = nll(log_t.clamp(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)).exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_t.detach().exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin ((i/bins, (i+1)/bins], bin 0 also takes 0): the sample count, the mean
    confidence (top-1 probability) and the accuracy of its samples; None for an empty bin's mean and accuracy."""
    confidence, predicted = probabilities.double().max(dim=1)
    return _bins(confidence, (predicted == labels).double(), bins)


def label_reliability_bins(scores: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Multi-label: every (image, label) pair pooled, each a binary prediction: per equal-width bin of the
    sigmoid score, the pair count, the mean score ("confidence") and the fraction of pairs whose label is
    present ("accuracy")."""
    return _bins(scores.double().reshape(-1), targets.double().reshape(-1), bins)


def _bins(confidence: torch.Tensor, outcome: torch.Tensor, bins: int) -> dict:
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    counts = torch.bincount(index, minlength=bins)
    confidence_sums = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    outcome_sums = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, outcome)
    return {"count": counts.tolist(),
            "confidence": [float(s / n) if n else None for s, n in zip(confidence_sums, counts)],
            "accuracy": [float(s / n) if n else None for s, n in zip(outcome_sums, counts)]}


def expected_calibration_error(bins: dict) -> float:
    """ECE: the count-weighted mean over bins of |accuracy - mean confidence| (Naeini et al. 2015)."""
    total = sum(bins["count"])
    return sum(n / total * abs(accuracy - confidence)
               for n, accuracy, confidence in zip(bins["count"], bins["accuracy"], bins["confidence"]) if n)


def calibration_numbers(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
    """ECE, NLL and reliability bins of `logits` before (T = 1) and after dividing them by `temperature`."""
    result = {"count": len(labels)}
    for when, t in (("before", 1.0), ("after", temperature)):
        bins = reliability_bins(F.softmax(logits.double() / t, dim=1), labels)
        result[when] = {"ece": expected_calibration_error(bins), "nll": negative_log_likelihood(logits, labels, t),
                        "bins": bins}
    return result


def label_calibration_numbers(logits: torch.Tensor, targets: torch.Tensor, temperatures: Sequence[float]) -> dict:
    """Multi-label: ECE over the pooled (image, label) pairs' bins and NLL (the mean binary cross-entropy over
    every pair) of `logits` before (T = 1) and after dividing each label's column by its temperature."""
    logits, targets = logits.double(), targets.double()
    result = {"count": len(targets)}
    for when, t in (("before", torch.ones(logits.shape[1])), ("after", torch.tensor(temperatures))):
        scaled = logits / t.double()
        bins = label_reliability_bins(scaled.sigmoid(), targets)
        result[when] = {"ece": expected_calibration_error(bins),
                        "nll": float(F.binary_cross_entropy_with_logits(scaled, targets)), "bins": bins}
    return result


def thresholds_for_temperatures(thresholds: Sequence[float], temperatures: Sequence[float]) -> list[float]:
    """Thresholds on sigmoid scores re-expressed for logits divided by per-label temperatures, so that every
    decision stays the same: sigmoid(z / T) >= sigmoid(logit(t) / T) exactly when sigmoid(z) >= t."""
    thresholds = torch.tensor(thresholds, dtype=torch.float64)
    return (thresholds.logit() / torch.tensor(temperatures, dtype=torch.float64)).sigmoid().tolist()


def temperature_summary(calibration: dict) -> str:
    """'temperature 1.234', or for one per label 'per-label temperatures 0.910-2.301 (median 1.402)'."""
    if "temperature" in calibration:
        return f"temperature {calibration['temperature']:.3f}"
    values = sorted(calibration["temperatures"].values())
    return (f"per-label temperatures {values[0]:.3f}-{values[-1]:.3f} "
            f"(median {statistics.median(values):.3f})")


def calibration_lines(calibration: dict | None) -> list[str]:
    """The run's closing lines on calibration: T, then ECE and NLL before -> after per split."""
    if not calibration:
        return []
    lines = [f"calibration: {temperature_summary(calibration)} fitted on the eval split, put into the saved "
             "classifier"]
    for split in ("eval", "test"):
        if split in calibration:
            before, after = calibration[split]["before"], calibration[split]["after"]
            lines.append(f"{split}: ECE {before['ece']:.4f} -> {after['ece']:.4f}, "
                         f"NLL {before['nll']:.4f} -> {after['nll']:.4f}")
    return lines
