"""Classification metrics from counts: hand-computed values, the zero-division convention, batching invariance."""

from __future__ import annotations

import pytest
import torch

from hf_finetune.tasks.metrics import ClassificationMetrics, summary_line


def _one_hot_logits(predictions, num_classes):
    return torch.nn.functional.one_hot(torch.tensor(predictions), num_classes).float()


# 10 samples, 3 classes. True cat: predicted cat, cat, cat, dog. True dog: dog, dog, cat. True bird: bird, bird, dog.
LABELS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PREDICTIONS = [0, 0, 0, 1, 1, 1, 0, 2, 2, 1]
NAMES = ["cat", "dog", "bird"]


def test_hand_computed_values_on_a_tiny_set():
    metrics = ClassificationMetrics(3, NAMES)
    losses = torch.tensor([0.1 * (i + 1) for i in range(10)])
    metrics.update(_one_hot_logits(PREDICTIONS, 3), torch.tensor(LABELS), losses)
    result = metrics.compute()

    assert result["confusion_matrix"] == [[3, 1, 0], [1, 2, 0], [0, 1, 2]]
    assert result["count"] == 10
    assert result["accuracy"] == pytest.approx(7 / 10)
    assert result["loss"] == pytest.approx(sum(0.1 * (i + 1) for i in range(10)) / 10)
    assert result["top5"] is None  # 3 classes: every class is in the top 5
    # precision = correct / predicted as the class; recall = correct / true samples of the class
    precision = {"cat": 3 / 4, "dog": 2 / 4, "bird": 2 / 2}
    recall = {"cat": 3 / 4, "dog": 2 / 3, "bird": 2 / 3}
    support = {"cat": 4, "dog": 3, "bird": 3}
    f1 = {name: 2 * precision[name] * recall[name] / (precision[name] + recall[name]) for name in NAMES}
    for name in NAMES:
        assert result["per_class"][name] == {"precision": pytest.approx(precision[name]),
                                             "recall": pytest.approx(recall[name]),
                                             "f1": pytest.approx(f1[name]), "support": support[name]}
    assert result["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert result["balanced_accuracy"] == pytest.approx(sum(recall.values()) / 3)
    assert result["label_names"] == NAMES


def test_without_names_classes_are_keyed_by_index():
    metrics = ClassificationMetrics(3)
    metrics.update(torch.tensor(PREDICTIONS), torch.tensor(LABELS))
    assert list(metrics.compute()["per_class"]) == ["0", "1", "2"]


def test_predicted_indices_give_the_same_counts_but_no_top5_and_no_loss():
    from_logits, from_indices = ClassificationMetrics(6), ClassificationMetrics(6)
    from_logits.update(_one_hot_logits(PREDICTIONS, 6), torch.tensor(LABELS))
    from_indices.update(torch.tensor(PREDICTIONS), torch.tensor(LABELS))
    logits_result, indices_result = from_logits.compute(), from_indices.compute()
    assert indices_result["confusion_matrix"] == logits_result["confusion_matrix"]
    assert indices_result["top5"] is None and logits_result["top5"] is not None
    assert indices_result["loss"] is None


def test_top5_counts_a_label_ranked_fifth_but_not_sixth():
    # Scores 6 > 5 > 4 > 3 > 2 > 1 for classes 0..5: class 4 is ranked 5th, class 5 is 6th.
    scores = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]] * 3)
    metrics = ClassificationMetrics(6)
    metrics.update(scores, torch.tensor([0, 4, 5]))
    result = metrics.compute()
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["top5"] == pytest.approx(2 / 3)


def test_fewer_than_five_classes_have_no_top5():
    metrics = ClassificationMetrics(4)
    metrics.update(torch.randn(8, 4), torch.arange(8) % 4)
    assert metrics.compute()["top5"] is None
    assert "top-5" not in summary_line(metrics.compute())


def test_zero_division_convention():
    # Class 0: never predicted. Class 1: predicted, never true. Class 2: always right. Class 3: absent entirely.
    metrics = ClassificationMetrics(4, ["never_predicted", "never_true", "perfect", "absent"])
    metrics.update(torch.tensor([1, 1, 2, 2]), torch.tensor([0, 0, 2, 2]))
    result = metrics.compute()
    per_class = result["per_class"]
    assert per_class["never_predicted"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert per_class["never_true"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert per_class["perfect"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert per_class["absent"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # macro F1 over the classes seen among labels or predictions (0, 1, 2), not the absent one
    assert result["macro_f1"] == pytest.approx((0 + 0 + 1) / 3)
    # balanced accuracy over the classes with true samples (0, 2)
    assert result["balanced_accuracy"] == pytest.approx((0 + 1) / 2)
    assert result["accuracy"] == pytest.approx(2 / 4)


def test_nothing_seen_yet():
    result = ClassificationMetrics(2).compute()
    assert result["count"] == 0 and result["confusion_matrix"] == [[0, 0], [0, 0]]
    assert result["accuracy"] is None and result["loss"] is None and result["macro_f1"] is None
    assert summary_line(result) == ""


def test_loss_is_absent_unless_every_batch_has_losses():
    metrics = ClassificationMetrics(2)
    metrics.update(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0.5, 0.5]))
    metrics.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert metrics.compute()["loss"] is None


def test_batch_splits_and_sample_order_do_not_change_a_bit():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(301, 7, generator=generator)
    labels = torch.randint(0, 7, (301,), generator=generator)
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    whole = ClassificationMetrics(7)
    whole.update(logits, labels, losses)
    expected = whole.compute()
    assert expected["top5"] is not None and expected["loss"] is not None

    for seed in range(3):
        order = torch.randperm(301, generator=torch.Generator().manual_seed(seed))
        sizes = [1, 17, 64, 3, 100]
        split = ClassificationMetrics(7)
        for chunk in torch.split(order, sizes + [301 - sum(sizes)]):
            split.update(logits[chunk], labels[chunk], losses[chunk])
        assert split.compute() == expected  # exact equality, the loss included


def test_out_of_range_labels_are_an_error_not_a_wrong_count():
    metrics = ClassificationMetrics(3)
    with pytest.raises(ValueError, match="labels out of range 0..2"):
        metrics.update(torch.tensor([0, 1]), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="logits have 4 classes, expected 3"):
        metrics.update(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="2 label names for 3 classes"):
        ClassificationMetrics(3, ["a", "b"])


def test_result_is_json_ready():
    import json

    metrics = ClassificationMetrics(6, list("abcdef"))
    metrics.update(torch.randn(12, 6), torch.arange(12) % 6, torch.rand(12))
    result = metrics.compute()
    assert json.loads(json.dumps(result)) == result


def test_summary_line():
    line = summary_line({"accuracy": 0.935, "macro_f1": 0.9341, "balanced_accuracy": 0.9339, "top5": 0.99,
                         "loss": 0.2104})
    assert line == "acc 0.935 | macro-F1 0.934 | bal-acc 0.934 | top-5 0.990 | loss 0.210"
    assert summary_line({"accuracy": 0.5, "macro_f1": 0.4, "balanced_accuracy": 0.45, "top5": None,
                         "loss": None}) == "acc 0.500 | macro-F1 0.400 | bal-acc 0.450"


def test_loss_sum_is_exactly_rounded_whatever_the_order():
    # 1e16 + 1.0 rounds back to 1e16 in float64: a running sum that meets the large loss first drops every 1.0.
    metrics = ClassificationMetrics(2)
    losses = torch.tensor([1e16] + [1.0] * 1000, dtype=torch.float64)
    metrics.update(torch.zeros(1001, dtype=torch.long), torch.zeros(1001, dtype=torch.long), losses)
    assert metrics.compute()["loss"] == (10**16 + 1000) / 1001
