"""Classification metrics computed exactly from counts, so 1 process and N processes report the same numbers.

Feed `ClassificationMetrics.update` what `accelerator.gather_for_metrics` returns on every process (all samples,
the padding of the last batch dropped): the state is an int64 confusion matrix, an integer top-5 count and the
per-sample losses, summed at the end with `math.fsum` (correctly rounded, so the order and batching of the
samples cannot change a bit of the result).

Zero-division convention (sklearn's `zero_division=0`): a class that is never predicted has precision 0, a
class without true samples has recall 0, and F1 is 0 when both are. Averages follow sklearn's defaults:
`macro_f1` averages the classes that occur among the labels or the predictions (a class absent from both was
not tested); `balanced_accuracy` averages the recall of the classes that have true samples.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

TOP_K = 5


class ClassificationMetrics:
    """Accumulate (logits or predicted indices, labels, optional per-sample losses); `compute()` -> a JSON-ready dict.

    Confusion matrix: rows are true classes, columns predicted classes.
    """

    def __init__(self, num_classes: int, label_names: Optional[Sequence[str]] = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(f"{len(label_names)} label names for {num_classes} classes")
        self.num_classes = num_classes
        self.label_names = list(label_names) if label_names is not None else None
        self.confusion: Optional[torch.Tensor] = None  # created on the device of the first batch
        self.top5_correct = 0
        self.top5_measured = num_classes >= TOP_K  # becomes False if any batch came as predictions only
        self.loss_chunks: list[torch.Tensor] = []
        self.losses_missing = False

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, losses: Optional[torch.Tensor] = None) -> None:
        """`logits` [batch, classes] (or predicted indices [batch]), `labels` [batch], `losses` [batch] or None."""
        labels = labels.reshape(-1).long()
        if logits.ndim == 2:
            if logits.shape[1] != self.num_classes:
                raise ValueError(f"logits have {logits.shape[1]} classes, expected {self.num_classes}")
            predictions = logits.argmax(dim=1)
        else:
            predictions = logits.reshape(-1).long()
        if len(predictions) != len(labels):
            raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
        if len(labels) == 0:
            return
        self._check_range(labels, "labels")
        self._check_range(predictions, "predictions")
        pairs = labels * self.num_classes + predictions
        counts = torch.bincount(pairs, minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)
        self.confusion = counts if self.confusion is None else self.confusion + counts.to(self.confusion.device)
        if self.top5_measured and logits.ndim == 2:
            top = logits.topk(TOP_K, dim=1).indices
            self.top5_correct += int((top == labels[:, None]).any(dim=1).sum())
        elif logits.ndim != 2:
            self.top5_measured = False
        if losses is None:
            self.losses_missing = True
        else:
            self.loss_chunks.append(losses.detach().reshape(-1).double())

    def _check_range(self, indices: torch.Tensor, what: str) -> None:
        # bincount would silently grow past num_classes**2 and misplace every count after it
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"{what} out of range 0..{self.num_classes - 1}: {low}..{high}")

    def counts(self) -> torch.Tensor:
        """The int64 confusion matrix on the CPU (zeros before any update)."""
        if self.confusion is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self.confusion.cpu()

    def compute(self) -> dict:
        """loss, accuracy, top5, macro_f1, balanced_accuracy, count, per_class, confusion_matrix, label_names.

        `top5` is None with fewer than 5 classes or when only predicted indices were given; `loss` is None
        unless every batch came with its losses; rates are None before any sample.
        """
        confusion = self.counts()
        count = int(confusion.sum())
        result = {"count": count, "loss": self._mean_loss(count),
                  "accuracy": _ratio(int(confusion.diagonal().sum()), count) if count else None,
                  "top5": _ratio(self.top5_correct, count) if self.top5_measured and count else None}
        result.update(_class_scores(confusion, self._names()))
        result["confusion_matrix"] = confusion.tolist()
        result["label_names"] = self._names()
        return result

    def _mean_loss(self, count: int) -> Optional[float]:
        if self.losses_missing or not self.loss_chunks or not count:
            return None
        return math.fsum(torch.cat(self.loss_chunks).tolist()) / count

    def _names(self) -> list[str]:
        return self.label_names if self.label_names is not None else [str(i) for i in range(self.num_classes)]


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _class_scores(confusion: torch.Tensor, names: list[str]) -> dict:
    """Per-class precision / recall / F1 / support from the counts, and their macro averages."""
    true_positives = confusion.diagonal().tolist()
    supports = confusion.sum(dim=1).tolist()
    predicted = confusion.sum(dim=0).tolist()
    per_class, f1_seen, recall_supported = {}, [], []
    for name, tp, support, guessed in zip(names, true_positives, supports, predicted):
        f1 = _ratio(2 * tp, support + guessed)  # = harmonic mean of precision and recall, exact from counts
        per_class[name] = {"precision": _ratio(tp, guessed), "recall": _ratio(tp, support), "f1": f1,
                           "support": support}
        if support or guessed:
            f1_seen.append(f1)
        if support:
            recall_supported.append(tp / support)
    return {"macro_f1": math.fsum(f1_seen) / len(f1_seen) if f1_seen else None,
            "balanced_accuracy": math.fsum(recall_supported) / len(recall_supported) if recall_supported else None,
            "per_class": per_class}


def summary_line(metrics: dict) -> str:
    """One line, e.g. 'acc 0.935 | macro-F1 0.934 | bal-acc 0.934 | top-5 0.990 | loss 0.210'; None parts left out."""
    parts = [("acc", "accuracy"), ("macro-F1", "macro_f1"), ("bal-acc", "balanced_accuracy"), ("top-5", "top5"),
             ("loss", "loss")]
    return " | ".join(f"{title} {metrics[key]:.3f}" for title, key in parts if metrics.get(key) is not None)
