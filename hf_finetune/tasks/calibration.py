"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one temperature T fitted
on held-out logits by minimising the NLL of softmax(logits / T), and the numbers that show what it did: ECE over
15 equal-width confidence bins, NLL, and the bins themselves (for the reliability diagram).

Single-label only. For multi-label the natural extension is one temperature per label (each label's sigmoid is
its own binary problem); it lands with the multi-label task.
"""

from __future__ import annotations

import math

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
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # Clamped inside the loss too: a separable split would otherwise send log T towards -inf.
        loss = F.cross_entropy(logits / log_t.clamp(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)).exp(),
                               labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE))


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin ((i/bins, (i+1)/bins], bin 0 also takes 0): the sample count, the mean
    confidence (top-1 probability) and the accuracy of its samples; None for an empty bin's mean and accuracy."""
    confidence, predicted = probabilities.double().max(dim=1)
    correct = (predicted == labels).double()
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    counts = torch.bincount(index, minlength=bins)
    confidence_sums = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    correct_sums = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    return {"count": counts.tolist(),
            "confidence": [float(s / n) if n else None for s, n in zip(confidence_sums, counts)],
            "accuracy": [float(s / n) if n else None for s, n in zip(correct_sums, counts)]}


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


def calibration_lines(calibration: dict | None) -> list[str]:
    """The run's closing lines on calibration: T, then ECE and NLL before -> after per split."""
    if not calibration:
        return []
    lines = [f"calibration: temperature {calibration['temperature']:.3f} fitted on the eval split, put into the "
             "saved classifier"]
    for split in ("eval", "test"):
        if split in calibration:
            before, after = calibration[split]["before"], calibration[split]["after"]
            lines.append(f"{split}: ECE {before['ece']:.4f} -> {after['ece']:.4f}, "
                         f"NLL {before['nll']:.4f} -> {after['nll']:.4f}")
    return lines
