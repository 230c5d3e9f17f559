"""Single-label classification: each image has one class; softmax over the classes, argmax decides.

Training: `objective.TrainingObjective` (cross-entropy with label smoothing, class weights, Mixup/CutMix soft
targets). Evaluation: plain cross-entropy and `metrics.ClassificationMetrics` (accuracy, top-5, macro-F1,
per-class P/R/F1, confusion matrix). Serving: softmax probabilities, top-k labels.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from hf_finetune.config import SELECT_METRICS
from hf_finetune.errors import UserError
from hf_finetune.tasks.calibration import calibration_numbers, fit_temperature
from hf_finetune.tasks.metrics import ClassificationMetrics, summary_line
from hf_finetune.tasks.objective import TrainingObjective, create_objective
from hf_finetune.tasks.tta import mean_logits


class SingleLabel:
    name = "single_label"
    select_metrics = SELECT_METRICS
    card_metrics = (("accuracy", "accuracy", "Accuracy", None), ("macro_f1", "f1", "Macro F1", {"average": "macro"}),
                    ("top5", "accuracy", "Top-5 Accuracy", {"k": 5}))
    card_metric_ids = ["accuracy", "f1"]
    card_rows = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced accuracy"),
                 ("top5", "top-5 accuracy"), ("loss", "loss"), ("count", "images"))
    default_select_metric = "eval_loss"
    accuracy_name = "accuracy"
    losses = ("ce",)  # cross-entropy (objective.TrainingObjective)
    default_loss = "ce"
    temperature_scaling = True  # one T for the softmax (tasks/calibration.py)
    history_columns = (("loss", "loss"), ("accuracy", "acc"), ("count", "count"), ("top5", "top5"),
                       ("macro_f1", "macro_f1"), ("balanced_accuracy", "balanced_accuracy"), ("per_class", "per_class"))
    label_encoder = None  # the loaders' class indices are the targets
    per_label_key = "per_class"  # create_metrics().compute()'s per-class scores
    card_per_label = (("precision", "precision"), ("recall", "recall"), ("f1", "F1"), ("support", "support"))

    def __init__(self, label_names: Sequence[str], objective: Optional[TrainingObjective] = None):
        self.label_names = list(label_names)
        self.objective = TrainingObjective(len(self.label_names)) if objective is None else objective

    @property
    def class_weights(self) -> Optional[torch.Tensor]:
        return self.objective.class_weights

    @classmethod
    def create(cls, label_names: Sequence[str], config=None, train_labels=None) -> "SingleLabel":
        """With the run's config and the train labels: its loss options; without: plain cross-entropy."""
        if config is None:
            return cls(label_names)
        return cls(label_names, create_objective(config, train_labels, len(label_names)))

    def fit_temperature(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        return fit_temperature(logits, labels)

    def calibration_numbers(self, logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
        return calibration_numbers(logits, labels, temperature)

    def scale_decisions(self, temperature: float, fixed_threshold: Optional[float] = None) -> None:
        """The argmax of logits / T is the argmax of the logits: nothing to re-express."""

    def fit_decisions(self, metrics: ClassificationMetrics, fixed_threshold: Optional[float] = None) -> bool:
        """Argmax needs no fitting."""
        return False

    def decision_sentence(self, fixed_threshold: Optional[float], split: str) -> str:
        """The card's word on decisions: argmax needs none."""
        return ""

    def saved_config(self) -> dict:
        """config.json has no single-label entries: softmax is transformers' and timm's default."""
        return {}

    def training_batch(self, images: torch.Tensor, labels: torch.Tensor,
                       key: tuple = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Class indices, or soft targets of the mixed images with Mixup/CutMix (`TrainingObjective.mix`)."""
        return self.objective.mix(images, labels, key)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return self.objective.loss(logits, targets, reduction)

    def eval_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, reduction="none")

    def hits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # With Mixup/CutMix: the mixed images' predictions against their unmixed labels.
        return logits.argmax(dim=1) == labels

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(logits).float().softmax(dim=-1)

    def top_labels(self, logits: torch.Tensor, top_k: int) -> list[list[tuple[str, float]]]:
        """Per row of logits, the `top_k` (label, probability) pairs, most likely first."""
        probabilities = self.probabilities(logits)
        values, indices = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
        return [[(self.label_names[index], float(value)) for value, index in zip(row_values, row_indices)]
                for row_values, row_indices in zip(values.tolist(), indices.tolist())]

    def decided_labels(self, logits: torch.Tensor) -> None:
        """Prediction reports the top-k: argmax is its first."""
        return None

    def merge_tta(self, logits: torch.Tensor, mirrored_logits: torch.Tensor) -> torch.Tensor:
        return mean_logits(logits, mirrored_logits)

    def confident_mistakes(self, probabilities: torch.Tensor, labels: torch.Tensor, k: int) -> list[dict]:
        """The k wrong argmaxes of the highest probability: {index, true, predicted, probability}."""
        confidence, predicted = torch.as_tensor(probabilities).max(dim=1)
        names = self.label_names
        return [{"index": index, "true": names[int(labels[index])], "predicted": names[int(predicted[index])],
                 "probability": float(confidence[index])}
                for index in most_confident_mistakes(probabilities, labels, k)]

    def mistake_caption(self, mistake: dict) -> str:
        return f"true: {mistake['true']}\npredicted: {mistake['predicted']}\np = {mistake['probability']:.2f}"

    def create_metrics(self) -> ClassificationMetrics:
        return ClassificationMetrics(len(self.label_names), self.label_names)

    def summary_line(self, metrics: dict) -> str:
        return summary_line(metrics)

    def check_select_metric(self, select_metric: str) -> None:
        """Refuse at the start, not after the first epoch, a metric these classes do not define."""
        if select_metric not in self.select_metrics:
            raise UserError(f"--select-metric {select_metric}: unknown; use one of {', '.join(self.select_metrics)}")
        if self.select_metrics[select_metric][0] == "top5" and len(self.label_names) < 5:
            raise UserError(f"--select-metric top5 needs at least 5 classes, the data has {len(self.label_names)}; "
                            "use accuracy or eval_loss")


def most_confident_mistakes(probabilities, labels, k: int = 16) -> list[int]:
    """Indices of the (at most) k misclassified samples whose predicted class had the highest probability.

    `probabilities` [samples, classes] (softmax of the logits), `labels` [samples]. Ties go to the lower index.
    """
    probabilities, labels = torch.as_tensor(probabilities), torch.as_tensor(labels).reshape(-1)
    confidence, predicted = probabilities.max(dim=1)
    wrong = torch.nonzero(predicted != labels).reshape(-1).tolist()
    confidence = confidence.tolist()
    return sorted(wrong, key=lambda index: (-confidence[index], index))[:k]
