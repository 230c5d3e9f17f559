"""What a task must answer, so that training, evaluation, the card and serving never ask which task they have.

A task turns labels into training targets and scores logits against them (`training_batch`, `loss`,
`eval_losses`, `hits`), turns logits into scores and decisions (`probabilities`, `top_labels`,
`confident_mistakes`, `mistake_caption`), merges test-time augmentation (`merge_tta`), measures
(`create_metrics`, `summary_line`, `select_metrics`) and says what the card reports (`card_metrics`, `card_metric_ids`,
`card_rows`). `tasks.single_label.SingleLabel` is the first implementation.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence, Union

import torch


class Metrics(Protocol):
    """Exact metrics over every sample once: feed it what `accelerator.gather_for_metrics` returns."""

    def update(self, logits: torch.Tensor, labels: torch.Tensor, losses: Optional[torch.Tensor] = None) -> None: ...

    def compute(self) -> dict: ...


class Task(Protocol):
    name: str
    label_names: list[str]
    # --select-metric name -> (key of create_metrics().compute(), True when higher is better)
    select_metrics: dict[str, tuple[str, bool]]
    # the card's model-index: (metrics key, model-index metric type, display name, metric args)
    card_metrics: Sequence[tuple[str, str, str, Optional[dict]]]
    card_metric_ids: list[str]  # the card's `metrics`: Hub metric ids of what the model-index reports
    card_rows: Sequence[tuple[str, str]]  # the card's results table: (metrics key, row title)
    class_weights: Optional[torch.Tensor]  # the loss's weight per label, or None (recorded in run_config.json)
    default_select_metric: str  # --select-metric when unset
    temperature_scaling: bool  # --calibrate temperature applies (one temperature fitted on the eval split)
    history_columns: Sequence[tuple[str, str]]  # metrics.json's eval columns: (metrics key, column suffix)
    per_label_key: str  # the create_metrics().compute() key of the per-label scores
    card_per_label: Sequence[tuple[str, str]]  # the card's per-label table: (per-label score key, column title)
    label_encoder: Optional[Callable]  # applied by the loaders to each row's label (None: kept as it is)
    losses: Sequence[str]  # the --loss values this task trains with
    default_loss: str  # --loss when unset
    accuracy_name: str  # what the history's train_acc / eval_acc (the `hits` share) measure, in words

    def training_batch(self, images: torch.Tensor, labels: torch.Tensor,
                       key: tuple = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input, training targets) of a batch: the targets encoded, the batch mixed if asked for."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The training loss (what is backpropagated); `reduction="none"`: each sample's."""

    def eval_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each sample's evaluation loss, without the training regularizers, so runs compare."""

    def hits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per sample, whether its decision is right (bool): the training accuracy's numerator."""

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The activation: logits -> scores in [0, 1]."""

    def top_labels(self, logits: torch.Tensor, top_k: int) -> list[list[tuple[str, float]]]:
        """Per image, what prediction reports: (label, score) pairs, most likely first."""

    def decided_labels(self, logits: torch.Tensor) -> Optional[list[list[tuple[str, float]]]]:
        """Per image, the labels decided present with their scores, when the task decides more than the top-k
        shows (multi-label: those above their thresholds); None otherwise."""

    def merge_tta(self, logits: torch.Tensor, mirrored_logits: torch.Tensor) -> torch.Tensor:
        """One image's logits from those of the image and of its mirror."""

    def confident_mistakes(self, probabilities: torch.Tensor, labels: torch.Tensor, k: int) -> list[dict]:
        """The (at most) k most confident wrong decisions (of each kind, where there are several), most confident
        first: {"index": the sample's, ...: what was wrong, by label name, and the score}."""

    def mistake_caption(self, mistake: dict) -> str:
        """A few short lines on one of `confident_mistakes` (mistakes.png's caption)."""

    def fit_temperature(self, logits: torch.Tensor, labels: torch.Tensor) -> Union[float, list[float]]:
        """Temperature scaling fitted on these (the selection split's plain) logits: what the classifier is
        divided by, one temperature or one per output."""

    def calibration_numbers(self, logits: torch.Tensor, labels: torch.Tensor,
                            temperature: Union[float, list[float]]) -> dict:
        """ECE, NLL and reliability bins of `logits` before and after dividing them by `temperature`."""

    def scale_decisions(self, temperature: Union[float, list[float]], fixed_threshold: Optional[float] = None) -> None:
        """Re-express the decisions fitted to the plain scores for logits divided by `temperature`, so that none
        changes; a `fixed_threshold` (--threshold) is on the saved model's scores and stays."""

    def fit_decisions(self, metrics: Metrics, fixed_threshold: Optional[float] = None) -> bool:
        """Fit the decisions to the scores `metrics` gathered (the selection split's); True when they changed,
        and `metrics` then decides with them."""

    def decision_sentence(self, fixed_threshold: Optional[float], split: str) -> str:
        """The card's sentence on how decisions are made (empty when there is nothing to say)."""

    def saved_config(self) -> dict:
        """What config.json keeps beside timm's entries for this task (the decisions, how to score)."""

    def create_metrics(self) -> Metrics:
        """An empty accumulator of this task's metrics."""

    def summary_line(self, metrics: dict) -> str:
        """One line of `create_metrics().compute()`'s headline numbers."""

    def check_select_metric(self, select_metric: str) -> None:
        """Refuse, with a UserError, a --select-metric this task and these labels do not define."""
