"""Multi-label metrics from every sample's scores and exact counts, so 1 process and N processes agree.

Feed `MultiLabelMetrics.update` what `accelerator.gather_for_metrics` returns on every process (each image
once). Average precision needs the ranking of all scores, so the scores are kept (one float per image and
label: 4 MB for 10,000 images x 100 labels); the decisions at the thresholds are counted exactly.

Definitions follow sklearn.metrics (and are tested against it): per-label AP is
`average_precision_score` (sum over the distinct score thresholds of (R_n - R_n-1) P_n); precision, recall
and F1 use `zero_division=0`; `map` and `macro_f1` average the labels that have a positive among the targets
(AP) or occur among the targets or decisions (F1), as the single-label macro-F1 averages the classes seen;
`micro_f1` pools the counts; `exact_match` is the subset accuracy; `hamming_loss` the fraction of wrong
(image, label) decisions.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

DEFAULT_THRESHOLD = 0.5


def _ranked(scores: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(distinct scores, descending; true positives and false positives when predicting score >= each)."""
    order = torch.argsort(scores, descending=True, stable=True)
    scores, positives = scores[order], positives[order].long()
    last_of_tie = torch.ones_like(scores, dtype=torch.bool)
    last_of_tie[:-1] = scores[1:] != scores[:-1]
    # float64 counts: exact up to 2**53 images, and torch divides them in float64 (int64 / int64 is float32)
    true_positives = positives.cumsum(0)[last_of_tie].double()
    false_positives = (1 - positives).cumsum(0)[last_of_tie].double()
    return scores[last_of_tie], true_positives, false_positives


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """sklearn's average_precision_score of one label; 0.0 without a positive (as sklearn)."""
    _, true_positives, false_positives = _ranked(scores.double(), positives.bool())
    total = int(true_positives[-1]) if len(true_positives) else 0
    if not total:
        return 0.0
    precision = (true_positives / (true_positives + false_positives)).tolist()
    recall = [tp / total for tp in true_positives.tolist()]
    return math.fsum((now - before) * p for now, before, p in zip(recall, [0.0] + recall[:-1], precision))


def best_f1_threshold(scores: torch.Tensor, positives: torch.Tensor, default: float = DEFAULT_THRESHOLD) -> float:
    """The threshold (decide positive when score >= it) with the highest F1 of this label; the first maximum
    from the top, so the fewest positives. It lies halfway to the next lower score (to 0 below the lowest), so
    that the decisions on these samples are the maximizing ones while new scores near the boundary are split
    evenly, and no sample sits on it: rescaled scores (per-label temperatures) then keep every decision. A label
    without a positive keeps `default`."""
    distinct, true_positives, false_positives = _ranked(scores.double(), positives.bool())
    total = int(true_positives[-1]) if len(true_positives) else 0
    if not total:
        return default
    f1 = 2 * true_positives / (true_positives + false_positives + total)
    best = int(torch.argmax(f1))  # argmax returns the first maximum
    lower = float(distinct[best + 1]) if best + 1 < len(distinct) else 0.0
    return (float(distinct[best]) + lower) / 2


def tune_thresholds(scores: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per label, `best_f1_threshold` of its column of scores [samples, labels] against the multi-hot targets."""
    return [best_f1_threshold(scores[:, label], targets[:, label]) for label in range(scores.shape[1])]


class MultiLabelMetrics:
    """Accumulate (logits, multi-hot targets, optional per-sample losses); `compute()` -> a JSON-ready dict.

    `thresholds`: per label, decide positive when sigmoid(logit) >= it (default 0.5 for every label).
    """

    def __init__(self, label_names: Sequence[str], thresholds: Optional[Sequence[float]] = None):
        self.label_names = list(label_names)
        if thresholds is not None and len(thresholds) != len(self.label_names):
            raise ValueError(f"{len(thresholds)} thresholds for {len(self.label_names)} labels")
        self.thresholds = list(thresholds) if thresholds is not None else [DEFAULT_THRESHOLD] * len(self.label_names)
        self.score_chunks: list[torch.Tensor] = []
        self.target_chunks: list[torch.Tensor] = []
        self.loss_chunks: list[torch.Tensor] = []
        self.losses_missing = False

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor, losses: Optional[torch.Tensor] = None) -> None:
        """`logits` and `targets` [batch, labels] (targets 0/1), `losses` [batch] or None."""
        if logits.shape != targets.shape or logits.ndim != 2 or logits.shape[1] != len(self.label_names):
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}: expected both "
                             f"[batch, {len(self.label_names)}]")
        self.score_chunks.append(logits.detach().float().sigmoid().cpu())
        self.target_chunks.append(targets.detach().bool().cpu())
        if losses is None:
            self.losses_missing = True
        else:
            self.loss_chunks.append(losses.detach().reshape(-1).double().cpu())

    def scores_and_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All scores (sigmoid of the logits) and targets so far, [samples, labels]."""
        labels = len(self.label_names)
        scores = torch.cat(self.score_chunks) if self.score_chunks else torch.zeros(0, labels)
        targets = torch.cat(self.target_chunks) if self.target_chunks else torch.zeros(0, labels, dtype=torch.bool)
        return scores, targets

    def compute(self) -> dict:
        """loss, count, map, micro_f1, macro_f1, exact_match, hamming_loss, per_label, thresholds, label_names;
        rates are None before any sample, `loss` unless every batch came with its losses."""
        scores, targets = self.scores_and_targets()
        count = len(scores)
        decisions = scores >= torch.tensor(self.thresholds, dtype=scores.dtype)
        true_positives = (decisions & targets).sum(0).tolist()
        predicted, supports = decisions.sum(0).tolist(), targets.sum(0).tolist()
        per_label, ap_seen, f1_seen = {}, [], []
        for index, name in enumerate(self.label_names):
            tp, guessed, support = true_positives[index], predicted[index], supports[index]
            ap = average_precision(scores[:, index], targets[:, index]) if count else 0.0
            f1 = _ratio(2 * tp, support + guessed)
            per_label[name] = {"ap": ap, "precision": _ratio(tp, guessed), "recall": _ratio(tp, support), "f1": f1,
                               "support": support, "threshold": self.thresholds[index]}
            if support:
                ap_seen.append(ap)
            if support or guessed:
                f1_seen.append(f1)
        all_tp, all_guessed, all_support = sum(true_positives), sum(predicted), sum(supports)
        return {"count": count, "loss": self._mean_loss(count),
                "map": math.fsum(ap_seen) / len(ap_seen) if ap_seen else None,
                "micro_f1": _ratio(2 * all_tp, all_support + all_guessed) if count else None,
                "macro_f1": math.fsum(f1_seen) / len(f1_seen) if f1_seen else None,
                "exact_match": _ratio(int((decisions == targets).all(1).sum()), count) if count else None,
                "hamming_loss": _ratio(int((decisions != targets).sum()), decisions.numel()) if count else None,
                "per_label": per_label, "thresholds": list(self.thresholds), "label_names": list(self.label_names)}

    def _mean_loss(self, count: int) -> Optional[float]:
        if self.losses_missing or not self.loss_chunks or not count:
            return None
        return math.fsum(torch.cat(self.loss_chunks).tolist()) / count


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def summary_line(metrics: dict) -> str:
    """One line, e.g. 'mAP 0.912 | micro-F1 0.871 | macro-F1 0.850 | exact 0.640 | loss 0.120'."""
    parts = [("mAP", "map"), ("micro-F1", "micro_f1"), ("macro-F1", "macro_f1"), ("exact", "exact_match"),
             ("loss", "loss")]
    return " | ".join(f"{title} {metrics[key]:.3f}" for title, key in parts if metrics.get(key) is not None)
