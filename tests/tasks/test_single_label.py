"""The single-label task: what training, evaluation, the card and serving ask it, answered as before."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from hf_finetune.config import FinetuneConfig
from hf_finetune.errors import UserError
from hf_finetune.tasks import SINGLE_LABEL, Task, create_task, task_of_run
from hf_finetune.tasks.metrics import ClassificationMetrics
from hf_finetune.tasks.single_label import SingleLabel, most_confident_mistakes

NAMES = ["cat", "dog", "fox"]


def _protocol_members(protocol) -> set[str]:
    functions = {name for name, value in vars(protocol).items() if inspect.isfunction(value)}
    return (functions | set(protocol.__annotations__)) - {"__init__"}


def test_single_label_answers_everything_a_task_is_asked():
    task = create_task(SINGLE_LABEL, NAMES)
    missing = [name for name in _protocol_members(Task) if not hasattr(task, name)]
    assert isinstance(task, SingleLabel) and not missing, missing
    assert task.name == SINGLE_LABEL and task.label_names == NAMES


def test_an_unknown_task_is_one_error_line():
    with pytest.raises(UserError, match="task 'regression': unknown; one of single_label, multi_label"):
        create_task("regression", NAMES)


def test_a_run_recorded_before_tasks_is_single_label():
    assert task_of_run({"label_names": NAMES}).name == SINGLE_LABEL
    assert task_of_run({"task": SINGLE_LABEL, "label_names": NAMES}).label_names == NAMES


def test_training_task_takes_the_runs_loss_options():
    config = FinetuneConfig(label_smoothing=0.1, class_weights="balanced")
    train_labels = [0, 0, 0, 1, 2, 2]  # balanced weights n / (classes x count): 2/3, 2, 1
    task = create_task(SINGLE_LABEL, NAMES, config, train_labels)
    torch.testing.assert_close(task.class_weights, torch.tensor([2 / 3, 2.0, 1.0]))
    logits, labels = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor(train_labels)
    inputs, targets = task.training_batch(torch.zeros(6, 3, 8, 8), labels)
    assert torch.equal(targets, labels)  # no mixing: class indices
    expected = F.cross_entropy(logits, labels, weight=task.class_weights, label_smoothing=0.1, reduction="none")
    torch.testing.assert_close(task.loss(logits, targets, reduction="none"), expected)
    # evaluation's loss is the plain cross-entropy whatever the training options, so runs compare
    torch.testing.assert_close(task.eval_losses(logits, labels), F.cross_entropy(logits, labels, reduction="none"))
    assert create_task(SINGLE_LABEL, NAMES).class_weights is None


def test_decisions_scores_and_mistakes():
    task = SingleLabel(NAMES)
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.5, 0.0, 4.0]])
    labels = torch.tensor([0, 2, 2])
    assert task.hits(logits, labels).tolist() == [True, False, True]
    probabilities = task.probabilities(logits)
    torch.testing.assert_close(probabilities, logits.softmax(dim=-1))
    top = task.top_labels(logits, top_k=5)  # at most every label
    assert [[name for name, _ in row] for row in top] == [["cat", "dog", "fox"], ["dog", "fox", "cat"],
                                                          ["fox", "cat", "dog"]]
    assert top[1][0][1] == pytest.approx(float(probabilities[1, 1]))
    mistakes = task.confident_mistakes(probabilities, labels, k=4)
    assert mistakes == [{"index": 1, "true": "fox", "predicted": "dog",
                         "probability": pytest.approx(float(probabilities[1, 1]))}]
    assert task.mistake_caption(mistakes[0]) == f"true: fox\npredicted: dog\np = {float(probabilities[1, 1]):.2f}"
    assert most_confident_mistakes(probabilities, labels, 4) == [1]
    torch.testing.assert_close(task.merge_tta(logits, -logits), torch.zeros_like(logits))


def test_metrics_and_selection_are_the_classification_metrics():
    task = SingleLabel(NAMES)
    metrics = task.create_metrics()
    assert isinstance(metrics, ClassificationMetrics) and metrics.label_names == NAMES
    metrics.update(torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([0, 2]))
    assert task.summary_line(metrics.compute()).startswith("acc 0.500 | macro-F1 ")
    task.check_select_metric("accuracy")
    with pytest.raises(UserError, match="top5 needs at least 5 classes, the data has 3"):
        task.check_select_metric("top5")
    with pytest.raises(UserError, match="--select-metric map: unknown"):
        task.check_select_metric("map")
    SingleLabel([str(index) for index in range(5)]).check_select_metric("top5")
