"""Multi-label metrics against sklearn.metrics on random data, labels without a positive included."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics as sklearn_metrics  # a test-only dependency (the "test" extra): the reference
import torch

from hf_finetune.tasks.multi_label_metrics import (MultiLabelMetrics, average_precision, best_f1_threshold,
                                                   summary_line, tune_thresholds)


def _random_case(seed: int, samples: int = 60, labels: int = 6):
    """Logits and multi-hot targets; label 4 never positive, label 5 always; ties in the scores."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.rand(samples, labels, generator=generator) < 0.3
    targets[:, 4], targets[:, 5] = False, True
    logits = torch.randn(samples, labels, generator=generator) + 1.5 * targets
    logits[:10] = logits[:10].round()  # equal scores: AP must group them as sklearn does
    return logits, targets


@pytest.mark.filterwarnings("ignore:No positive class found")  # sklearn's, for label 4: tested on purpose
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_is_sklearns_ties_and_no_positive_included(seed):
    logits, targets = _random_case(seed)
    scores = logits.sigmoid()
    for label in range(targets.shape[1]):
        # in float64: sklearn computes in its input's dtype
        expected = sklearn_metrics.average_precision_score(targets[:, label].numpy(), scores[:, label].double().numpy())
        assert average_precision(scores[:, label], targets[:, label]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_is_sklearns_at_the_given_thresholds(seed):
    logits, targets = _random_case(seed)
    thresholds = [0.3, 0.5, 0.6, 0.7, 0.5, 0.4]
    metrics = MultiLabelMetrics([f"l{i}" for i in range(6)], thresholds)
    losses = torch.rand(len(logits), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(logits), 16):  # batches, as gathered
        metrics.update(logits[start:start + 16], targets[start:start + 16], losses[start:start + 16])
    result = metrics.compute()
    y, scores = targets.numpy().astype(int), logits.sigmoid().double().numpy()  # float64: exact float32 values
    decided = (scores >= np.array(thresholds, dtype=np.float32)).astype(int)
    with_positive = [label for label in range(6) if y[:, label].any()]
    seen = [label for label in range(6) if y[:, label].any() or decided[:, label].any()]
    assert result["count"] == len(y) and result["loss"] == pytest.approx(float(losses.double().mean()), abs=1e-15)
    assert result["map"] == pytest.approx(sklearn_metrics.average_precision_score(
        y[:, with_positive], scores[:, with_positive], average="macro"), abs=1e-12)
    assert result["micro_f1"] == pytest.approx(sklearn_metrics.f1_score(y, decided, average="micro"), abs=1e-12)
    assert result["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(y, decided, average="macro", labels=seen,
                                                                        zero_division=0), abs=1e-12)
    assert result["exact_match"] == pytest.approx(sklearn_metrics.accuracy_score(y, decided), abs=1e-12)
    assert result["hamming_loss"] == pytest.approx(sklearn_metrics.hamming_loss(y, decided), abs=1e-12)
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(y, decided, average=None,
                                                                                     zero_division=0)
    for label, name in enumerate(result["label_names"]):
        row = result["per_label"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (precision[label], recall[label], f1[label]), abs=1e-12)
        assert row["support"] == support[label] and row["threshold"] == thresholds[label]
    assert result["per_label"]["l4"]["support"] == 0 and result["per_label"]["l4"]["ap"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tuned_thresholds_reach_each_labels_best_f1(seed):
    logits, targets = _random_case(seed)
    scores = logits.sigmoid()
    thresholds = tune_thresholds(scores, targets)
    for label, threshold in enumerate(thresholds):
        y, column = targets[:, label].numpy(), scores[:, label].numpy()
        if not y.any():
            assert threshold == 0.5  # nothing to tune on: the default
            continue
        best = max(sklearn_metrics.f1_score(y, column >= candidate, zero_division=0) for candidate in column)
        assert sklearn_metrics.f1_score(y, column >= threshold, zero_division=0) == pytest.approx(best, abs=1e-12)
        assert sklearn_metrics.f1_score(y, column >= threshold, zero_division=0) >= sklearn_metrics.f1_score(
            y, column >= 0.5, zero_division=0)


def test_threshold_lies_between_the_decided_scores_and_the_rest():
    scores = torch.tensor([0.9, 0.8, 0.4, 0.2])
    assert best_f1_threshold(scores, torch.tensor([1, 1, 0, 0])) == pytest.approx(0.6)
    # all positive: take all, halfway between the lowest score and 0, so that no sample sits on the threshold
    assert best_f1_threshold(scores, torch.tensor([1, 1, 1, 1])) == pytest.approx(0.1)


def test_one_batch_or_many_give_the_same_result_and_empty_is_none():
    logits, targets = _random_case(3)
    names = [f"l{i}" for i in range(6)]
    whole, batched = MultiLabelMetrics(names), MultiLabelMetrics(names)
    whole.update(logits, targets)
    for start in range(0, len(logits), 7):
        batched.update(logits[start:start + 7], targets[start:start + 7])
    assert whole.compute() == batched.compute() and whole.compute()["loss"] is None
    empty = MultiLabelMetrics(names).compute()
    assert (empty["count"], empty["map"], empty["micro_f1"], empty["exact_match"]) == (0, None, None, None)
    assert summary_line(empty) == ""
    with pytest.raises(ValueError, match="expected both"):
        MultiLabelMetrics(names).update(logits[:, :5], targets[:, :5])


def test_summary_line():
    line = summary_line({"map": 0.9123, "micro_f1": 0.871, "macro_f1": 0.85, "exact_match": 0.64, "loss": 0.12})
    assert line == "mAP 0.912 | micro-F1 0.871 | macro-F1 0.850 | exact 0.640 | loss 0.120"
