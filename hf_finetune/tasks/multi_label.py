"""Multi-label classification: each image has any number of labels; a sigmoid per label, a threshold each.

Targets are multi-hot vectors [batch, labels]. Training: binary cross-entropy with logits (label smoothing
toward 1/2, `--class-weights balanced` as `pos_weight`), or `--loss asl`, timm's asymmetric loss; Mixup/CutMix
mix the multi-hot targets (`mix_multi_hot`). Decisions: a label is present when its sigmoid
score reaches its threshold, tuned per label to the best F1 on the selection split (`tune_thresholds`) or
0.5. Metrics: `multi_label_metrics.MultiLabelMetrics` (mAP, micro/macro F1, per-label AP/P/R/F1, exact match,
hamming loss).
"""

from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from hf_finetune.config import MULTI_LABEL_SELECT_METRICS
from hf_finetune.errors import UserError
from hf_finetune.tasks.calibration import (fit_label_temperatures, label_calibration_numbers,
                                           thresholds_for_temperatures)
from hf_finetune.tasks.multi_label_metrics import (DEFAULT_THRESHOLD, MultiLabelMetrics, summary_line,
                                                   tune_thresholds)
from hf_finetune.tasks.objective import numpy_seeded
from hf_finetune.tasks.tta import mean_logits


def multi_hot(indices: Sequence[int], num_labels: int) -> torch.Tensor:
    """A row's list of class indices (data/label_sets.py) as a float [num_labels] target of 0s and 1s."""
    target = torch.zeros(num_labels)
    target[list(indices)] = 1.0
    return target


def balanced_pos_weight(targets: torch.Tensor) -> torch.Tensor:
    """Per label, negatives / positives of the multi-hot train targets: each label's positives weigh as much
    as its negatives in the loss (the `pos_weight` of torch's BCE-with-logits)."""
    targets = torch.as_tensor(targets).bool()
    positives = targets.sum(0)
    missing = torch.nonzero(positives == 0).reshape(-1).tolist()
    if missing:
        raise UserError(f"--class-weights balanced: label(s) {missing} have no positive training image")
    return (len(targets) - positives).double() / positives.double()


def asymmetric_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each image's asymmetric loss (Ridnik et al. 2021; timm's AsymmetricLossMultiLabel at its defaults: gamma_neg
    4, gamma_pos 1, clip 0.05), the mean over its labels as for BCE. timm's module returns one sum over the whole
    batch at our timm floor (1.0.20; a `reduction` came later), so torch.func.vmap runs it on each image. In
    float32: half-precision probabilities underflow its 1e-8 clamp."""
    from timm.loss import AsymmetricLossMultiLabel

    asl = AsymmetricLossMultiLabel()
    per_image = torch.func.vmap(lambda row, target: asl(row[None], target[None]))(logits.float(), targets.float())
    return per_image / logits.shape[1]


def mix_multi_hot(images: torch.Tensor, targets: torch.Tensor, mixup: float, cutmix: float, seed: int,
                  key: tuple = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup/CutMix of the batch with its flip (batch mode: one Beta draw, and a box for CutMix, per batch),
    and the multi-hot targets mixed alike: lam y + (1 - lam) y.flip(0). timm's mixup_target one-hots class indices
    (its multi_label option is newer than our timm floor, 1.0.20), so the batch's positions arange(B) are mixed
    as B classes: that gives the mixing matrix M (row i: lam at i, 1 - lam at B-1-i), and M @ y mixes any targets
    y. timm needs an even batch: an odd last batch leaves its last image unmixed. Seeded per batch
    (`objective.numpy_seeded`)."""
    from timm.data import Mixup

    even = len(targets) - len(targets) % 2
    if even:
        mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.0, num_classes=even)
        with numpy_seeded(seed, key):
            images[:even], mixing = mixer(images[:even], torch.arange(even, device=images.device))
        targets[:even] = mixing.to(targets.dtype) @ targets[:even]
    return images, targets


class MultiLabel:
    name = "multi_label"
    select_metrics = MULTI_LABEL_SELECT_METRICS
    default_select_metric = "map"  # threshold-free, and what the card and Kaggle report
    temperature_scaling = True  # one T per label (tasks/calibration.py)
    # metrics.json's history columns: (metrics key, column suffix); eval_acc is the exact match, as train_acc
    history_columns = (("loss", "loss"), ("exact_match", "acc"), ("count", "count"), ("map", "map"),
                       ("micro_f1", "micro_f1"), ("macro_f1", "macro_f1"), ("hamming_loss", "hamming_loss"),
                       ("per_label", "per_label"))
    per_label_key = "per_label"
    card_per_label = (("ap", "AP"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
                      ("threshold", "threshold"), ("support", "support"))
    card_metrics = (("map", "map", "mAP", None), ("micro_f1", "f1", "Micro F1", {"average": "micro"}),
                    ("macro_f1", "f1", "Macro F1", {"average": "macro"}))
    card_metric_ids = ["f1"]
    card_rows = (("map", "mAP"), ("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("exact_match", "exact match"),
                 ("hamming_loss", "hamming loss"), ("loss", "loss"), ("count", "images"))

    losses = ("bce", "asl")
    default_loss = "bce"
    accuracy_name = "exact match"  # subset accuracy: every label of the image decided right (`hits`)

    def __init__(self, label_names: Sequence[str], thresholds: Optional[Sequence[float]] = None,
                 label_smoothing: float = 0.0, pos_weight: Optional[torch.Tensor] = None, loss: str = "bce",
                 mixing: Optional[tuple[float, float, int]] = None):
        self.label_names = list(label_names)
        self.thresholds = list(thresholds) if thresholds is not None else [DEFAULT_THRESHOLD] * len(self.label_names)
        if len(self.thresholds) != len(self.label_names):
            raise ValueError(f"{len(self.thresholds)} thresholds for {len(self.label_names)} labels")
        self.loss_name, self.mixing = loss, mixing  # mixing: (mixup alpha, cutmix alpha, seed) or None
        self.label_smoothing, self.pos_weight = label_smoothing, pos_weight

    @property
    def class_weights(self) -> Optional[torch.Tensor]:
        return self.pos_weight

    @property
    def label_encoder(self):
        """What the loaders apply to each row's label: its class indices -> its multi-hot target (picklable
        for loader workers)."""
        return partial(multi_hot, num_labels=len(self.label_names))

    @classmethod
    def create(cls, label_names: Sequence[str], config=None, train_labels=None) -> "MultiLabel":
        """With the run's config and the train split's multi-hot labels: its loss options."""
        if config is None:
            return cls(label_names)
        loss = config.loss or cls.default_loss
        if loss == "asl" and config.class_weights:
            raise UserError("--class-weights balanced weights BCE's positives; --loss asl has its own answer to "
                            "imbalance (it down-weights easy negatives): use one of the two")
        pos_weight = None
        if config.class_weights == "balanced":
            pos_weight = balanced_pos_weight(torch.stack([multi_hot(row, len(label_names)) for row in train_labels]))
        thresholds = None if config.threshold is None else [config.threshold] * len(label_names)
        mixing = (config.mixup, config.cutmix, config.seed) if config.mixup or config.cutmix else None
        return cls(label_names, thresholds, config.label_smoothing, pos_weight, loss, mixing)

    def training_batch(self, images: torch.Tensor, labels: torch.Tensor,
                       key: tuple = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Float multi-hot targets, mixed with the images by Mixup/CutMix if asked for (`mix_multi_hot`), smoothed
        toward 1/2: (1 - s) y + s / 2 (linear: the same before or after mixing, as timm's own multi-label
        mixup_target smooths)."""
        # a copy: mixing writes into the targets, and the engine counts hits against the unmixed labels
        targets = labels.to(images.dtype if images.is_floating_point() else torch.float32, copy=True)
        if self.mixing is not None:
            images, targets = mix_multi_hot(images, targets, *self.mixing, key=key)
        return images, targets * (1 - self.label_smoothing) + self.label_smoothing / 2

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """BCE with logits, each positive term times its label's pos_weight, or the asymmetric loss (--loss asl);
        a sample's loss is the mean over its labels, so "mean" is the mean over every (image, label)."""
        if self.loss_name == "asl":
            losses = asymmetric_losses(logits, targets)
        else:
            pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device, logits.dtype)
            losses = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=pos_weight,
                                                        reduction="none").mean(dim=1)
        return losses.mean() if reduction == "mean" else losses

    def eval_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").mean(dim=1)

    def decisions(self, logits: torch.Tensor) -> torch.Tensor:
        """[batch, labels] bool: each label's score at or above its threshold."""
        return self.probabilities(logits) >= torch.tensor(self.thresholds, device=logits.device)

    def hits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Exact matches: every label of the image decided right."""
        return (self.decisions(logits) == labels.bool()).all(dim=1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(logits).float().sigmoid()

    def top_labels(self, logits: torch.Tensor, top_k: int) -> list[list[tuple[str, float]]]:
        """Per image, its `top_k` (label, sigmoid score) pairs, highest first."""
        scores = self.probabilities(logits)
        values, indices = scores.topk(min(top_k, scores.shape[-1]), dim=-1)
        return [[(self.label_names[index], float(value)) for value, index in zip(row_values, row_indices)]
                for row_values, row_indices in zip(values.tolist(), indices.tolist())]

    def decided_labels(self, logits: torch.Tensor) -> list[list[tuple[str, float]]]:
        """Per image, the (label, score) pairs at or above their thresholds, highest score first."""
        scores, decisions = self.probabilities(logits), self.decisions(logits)
        return [sorted(((self.label_names[label], float(row_scores[label])) for label in row.nonzero().reshape(-1)),
                       key=lambda pair: -pair[1]) for row_scores, row in zip(scores, decisions)]

    def merge_tta(self, logits: torch.Tensor, mirrored_logits: torch.Tensor) -> torch.Tensor:
        return mean_logits(logits, mirrored_logits)

    def confident_mistakes(self, probabilities: torch.Tensor, labels: torch.Tensor, k: int) -> list[dict]:
        """The k most confident false positives (a label decided present that the image lacks, highest score
        first), then the k most confident false negatives (a label it has, decided absent, lowest score first):
        {index, true (the image's labels), kind, label, probability (the label's score)}."""
        probabilities, labels = torch.as_tensor(probabilities).float(), torch.as_tensor(labels).bool()
        decided = probabilities >= torch.tensor(self.thresholds)
        found = []
        for kind, wrong, sign in (("false positive", decided & ~labels, -1), ("false negative", ~decided & labels, 1)):
            ranked = sorted(((sign * float(probabilities[image, label]), int(image), int(label))
                             for image, label in wrong.nonzero()))[:k]
            found += [{"index": image, "true": [self.label_names[i] for i in labels[image].nonzero().reshape(-1)],
                       "kind": kind, "label": self.label_names[label], "probability": sign * score}
                      for score, image, label in ranked]
        return found

    def mistake_caption(self, mistake: dict) -> str:
        return (f"labels: {' '.join(mistake['true']) or '(none)'}\n{mistake['kind']}: {mistake['label']}\n"
                f"p = {mistake['probability']:.2f}")

    def fit_decisions(self, metrics: MultiLabelMetrics, fixed_threshold: Optional[float] = None) -> bool:
        """The thresholds: `fixed_threshold` (--threshold) for every label, or tuned on the scores `metrics`
        gathered (the selection split's, for the saved weights); `metrics` then decides with them too."""
        if fixed_threshold is not None:
            self.thresholds = [fixed_threshold] * len(self.label_names)
        else:
            self.tune_thresholds(*metrics.scores_and_targets())
        metrics.thresholds = list(self.thresholds)
        return True

    def decision_sentence(self, fixed_threshold: Optional[float], split: str) -> str:
        """The card's word on how the thresholds were chosen."""
        if fixed_threshold is not None:
            return f" A label is predicted when its sigmoid score is at least {fixed_threshold:g} (`--threshold`)."
        return (f" A label is predicted when its sigmoid score reaches its threshold, tuned per label to its best F1 on"
                f" the `{split}` split for these weights (table below; saved as `thresholds` in config.json).")

    def saved_config(self) -> dict:
        """config.json's entries: transformers' image-classification pipeline applies a sigmoid for this
        problem_type (and timm ignores it); `thresholds`, one per label, for load_classifier and predict."""
        return {"problem_type": "multi_label_classification", "thresholds": list(self.thresholds)}

    def fit_temperature(self, logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
        return fit_label_temperatures(logits, labels)

    def calibration_numbers(self, logits: torch.Tensor, labels: torch.Tensor, temperature: list[float]) -> dict:
        return label_calibration_numbers(logits, labels, temperature)

    def scale_decisions(self, temperature: list[float], fixed_threshold: Optional[float] = None) -> None:
        """Each tuned threshold re-expressed for its label's calibrated score: the same images pass it. A fixed
        --threshold stays: it is on the scores the saved model gives, the calibrated ones."""
        if fixed_threshold is None:
            self.thresholds = thresholds_for_temperatures(self.thresholds, temperature)

    def tune_thresholds(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Each label's threshold: the best F1 on these scores [samples, labels] (the selection split's)."""
        self.thresholds = tune_thresholds(scores, targets)

    def create_metrics(self) -> MultiLabelMetrics:
        return MultiLabelMetrics(self.label_names, self.thresholds)

    def summary_line(self, metrics: dict) -> str:
        return summary_line(metrics)

    def check_select_metric(self, select_metric: str) -> None:
        if select_metric not in self.select_metrics:
            raise UserError(f"--select-metric {select_metric}: not a multi-label metric; use one of "
                            f"{', '.join(self.select_metrics)}")
