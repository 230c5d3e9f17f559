"""The multi-label task: multi-hot targets, BCE with logits, sigmoid scores, per-label thresholds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_single_label import _protocol_members

from hf_finetune.config import FinetuneConfig
from hf_finetune.errors import UserError
from hf_finetune.tasks import MULTI_LABEL, Task, create_task
from hf_finetune.tasks.multi_label import MultiLabel, balanced_pos_weight
from hf_finetune.tasks.multi_label_metrics import MultiLabelMetrics

NAMES = ["bread", "cheese", "wine"]
TARGETS = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 0, 1]])


def test_multi_label_answers_everything_a_task_is_asked():
    task = create_task(MULTI_LABEL, NAMES)
    missing = [name for name in _protocol_members(Task) if not hasattr(task, name)]
    assert isinstance(task, MultiLabel) and not missing, missing
    assert task.thresholds == [0.5, 0.5, 0.5] and task.class_weights is None


def test_loss_is_bce_with_logits_with_balanced_pos_weight_and_smoothing():
    config = FinetuneConfig(label_smoothing=0.2, class_weights="balanced")
    task = create_task(MULTI_LABEL, NAMES, config, [[0], [0, 1], [1, 2], [0, 2]])  # the data's class indices
    torch.testing.assert_close(task.class_weights, torch.tensor([1 / 3, 1.0, 1.0], dtype=torch.float64))
    images = torch.zeros(4, 3, 8, 8)
    inputs, targets = task.training_batch(images, TARGETS)
    assert inputs is images
    torch.testing.assert_close(targets, TARGETS * 0.8 + 0.1)
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor([1 / 3, 1.0, 1.0]))
    torch.testing.assert_close(task.loss(logits, targets), expected)
    torch.testing.assert_close(task.loss(logits, targets, reduction="none").mean(), expected)
    # evaluation: plain BCE on the unsmoothed targets, per image
    plain = F.binary_cross_entropy_with_logits(logits, TARGETS.float(), reduction="none").mean(dim=1)
    torch.testing.assert_close(task.eval_losses(logits, TARGETS), plain)


def test_options_it_cannot_honour_are_one_error_line():
    with pytest.raises(UserError, match="label\\(s\\) \\[2\\] have no positive training image"):
        balanced_pos_weight(torch.tensor([[1, 0, 0], [0, 1, 0]]))
    with pytest.raises(UserError, match="--select-metric accuracy: not a multi-label metric; use one of eval_loss"):
        MultiLabel(NAMES).check_select_metric("accuracy")
    MultiLabel(NAMES).check_select_metric("map")


def test_decisions_follow_the_tuned_thresholds():
    task = MultiLabel(NAMES)
    scores = torch.tensor([[0.9, 0.3, 0.1], [0.8, 0.35, 0.2], [0.2, 0.7, 0.6], [0.6, 0.1, 0.4]])
    logits = torch.logit(scores)
    assert task.hits(logits, TARGETS).tolist() == [True, False, True, False]  # at 0.5: cheese 0.35, wine 0.4 missed
    task.tune_thresholds(scores, TARGETS)
    assert task.hits(logits, TARGETS).all()
    assert task.thresholds == pytest.approx([0.4, 0.325, 0.3])  # halfway to the next lower score
    metrics = task.create_metrics()
    assert isinstance(metrics, MultiLabelMetrics) and metrics.thresholds == task.thresholds
    metrics.update(logits, TARGETS, task.eval_losses(logits, TARGETS))
    result = metrics.compute()
    assert result["exact_match"] == 1.0 and result["micro_f1"] == 1.0
    assert task.summary_line(result).startswith("mAP 1.000 | micro-F1 1.000 | macro-F1 1.000 | exact 1.000 | loss ")


def test_scores_top_labels_and_mistakes():
    task = MultiLabel(NAMES, thresholds=[0.5, 0.5, 0.5])
    logits = torch.logit(torch.tensor([[0.9, 0.6, 0.2], [0.3, 0.95, 0.8]]))
    torch.testing.assert_close(task.probabilities(logits), logits.sigmoid())
    top = task.top_labels(logits, top_k=2)
    assert [[name for name, _ in row] for row in top] == [["bread", "cheese"], ["cheese", "wine"]]
    assert top[1][0][1] == pytest.approx(0.95)
    labels = torch.tensor([[1, 0, 0], [1, 1, 0]])
    # false positives, most confident first: wine in image 1 (0.8), cheese in image 0 (0.6); then the false
    # negative: bread in image 1 (0.3)
    mistakes = task.confident_mistakes(task.probabilities(logits), labels, k=5)
    assert mistakes == [
        {"index": 1, "true": ["bread", "cheese"], "kind": "false positive", "label": "wine",
         "probability": pytest.approx(0.8)},
        {"index": 0, "true": ["bread"], "kind": "false positive", "label": "cheese", "probability": pytest.approx(0.6)},
        {"index": 1, "true": ["bread", "cheese"], "kind": "false negative", "label": "bread",
         "probability": pytest.approx(0.3)}]
    assert [m["label"] for m in task.confident_mistakes(task.probabilities(logits), labels, k=1)] == ["wine", "bread"]
    assert task.mistake_caption(mistakes[2]) == "labels: bread cheese\nfalse negative: bread\np = 0.30"
    torch.testing.assert_close(task.merge_tta(logits, 3 * logits), 2 * logits)


def test_asl_loss_is_timms_asymmetric_loss_as_a_mean_over_every_image_and_label():
    """--loss asl: timm's AsymmetricLossMultiLabel (its defaults) on the smoothed targets, divided by the
    (image, label) count as BCE's mean is; per image, the mean over its labels; the eval loss stays plain BCE."""
    from timm.loss import AsymmetricLossMultiLabel

    task = create_task(MULTI_LABEL, NAMES, FinetuneConfig(loss="asl", label_smoothing=0.1), [[0], [1, 2]])
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    _, targets = task.training_batch(torch.zeros(4, 3, 8, 8), TARGETS)
    torch.testing.assert_close(targets, TARGETS * 0.9 + 0.05)
    # timm's module on one image is that image's sum over its labels at every timm version (1.0.20 sums over the
    # batch; later versions default to the sum over labels averaged over the batch)
    per_image = torch.stack([AsymmetricLossMultiLabel()(row[None], target[None]) / 3
                             for row, target in zip(logits, targets)])
    loss = task.loss(logits, targets)
    torch.testing.assert_close(loss, per_image.sum() * 3 / TARGETS.numel())  # timm's batch sum / (images x labels)
    assert not torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, targets))
    torch.testing.assert_close(task.loss(logits, targets, reduction="none"), per_image)
    loss.backward()  # it trains: a gradient reaches the logits
    assert logits.grad.abs().sum() > 0
    plain = F.binary_cross_entropy_with_logits(logits, TARGETS.float(), reduction="none").mean(dim=1)
    torch.testing.assert_close(task.eval_losses(logits, TARGETS), plain)


def test_loss_defaults_to_the_tasks_and_other_tasks_losses_are_one_error_line():
    from conftest import resolved

    assert resolved(FinetuneConfig(), task="multi-label").loss == "bce"
    assert resolved(FinetuneConfig(), task="single_label").loss == "ce"
    assert resolved(FinetuneConfig(loss="asl"), task="multi-label").loss == "asl"
    assert create_task(MULTI_LABEL, NAMES, FinetuneConfig(), TARGETS).loss_name == "bce"
    with pytest.raises(UserError, match="--loss asl: not a single-label loss; single-label data trains with ce, "
                                        "multi-label data with bce, asl"):
        create_task("single-label", NAMES, FinetuneConfig(loss="asl"), [0, 1, 2])
    with pytest.raises(UserError, match="--loss ce: not a multi-label loss"):
        create_task(MULTI_LABEL, NAMES, FinetuneConfig(loss="ce"), TARGETS)
    with pytest.raises(UserError, match="--class-weights balanced weights BCE's positives; --loss asl"):
        create_task(MULTI_LABEL, NAMES, FinetuneConfig(loss="asl", class_weights="balanced"), TARGETS)
    with pytest.raises(UserError, match="--loss focal: use ce"):
        FinetuneConfig(loss="focal").validate()


def test_loss_is_part_of_the_resume_identity_and_the_cards_hyperparameter_rows(tmp_path):
    from conftest import resolved

    from hf_finetune.recipes import recipe_card_rows
    from hf_finetune.train.identity import check_identity, run_identity

    def identity(loss):
        return run_identity(resolved(FinetuneConfig(loss=loss), task="multi-label"), NAMES, ("t", "e"), 1)

    (tmp_path / "identity.json").write_text(__import__("json").dumps(identity(None)))
    check_identity(tmp_path, identity("bce"))  # the default, written out, is the same run
    with pytest.raises(UserError, match="other settings: --loss bce \\(now asl\\)"):
        check_identity(tmp_path, identity("asl"))
    config = resolved(FinetuneConfig(loss="asl"), task="multi-label").to_dict()
    rows = dict(recipe_card_rows({"config": config}))
    assert rows["loss"] == "asymmetric loss (timm AsymmetricLossMultiLabel: gamma_neg 4, gamma_pos 1, clip 0.05)"
    assert dict(recipe_card_rows({"config": {**config, "loss": "bce"}}))["loss"] == "binary cross-entropy per label"


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mixup_and_cutmix_mix_the_multi_hot_targets_as_the_images(mixup, cutmix):
    """Image i is blended with image B-1-i by one weight lam per batch (for CutMix, the share of its own pixels);
    its targets are lam y_i + (1 - lam) y_(B-1-i), then smoothed toward 1/2; an odd batch's last image is left
    as it is. The same key mixes the same way (a resumed run), and the labels given are not changed."""
    task = create_task(MULTI_LABEL, NAMES, FinetuneConfig(mixup=mixup, cutmix=cutmix, label_smoothing=0.1, seed=3),
                       TARGETS)
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=torch.float32)
    images = torch.arange(5.0).reshape(5, 1, 1, 1).expand(5, 3, 8, 8).contiguous()  # image i: all pixels i
    mixed, targets = task.training_batch(images.clone(), labels, key=(1, 0, 0))
    if mixup:
        lam = 1 - float(mixed[0, 0, 0, 0]) / 3  # image 0 = lam * 0 + (1 - lam) * 3
        torch.testing.assert_close(mixed[:4], lam * images[:4] + (1 - lam) * images[:4].flip(0))
    else:
        lam = float((mixed[0] == 0).float().mean())  # the share of image 0's pixels that are still its own
        assert set(mixed[0].unique().tolist()) == {0.0, 3.0}
    assert 0 < lam < 1
    expected = lam * labels[:4] + (1 - lam) * labels[:4].flip(0)
    torch.testing.assert_close(targets[:4], expected * 0.9 + 0.05)
    torch.testing.assert_close(targets[4], labels[4] * 0.9 + 0.05)  # the odd one out: unmixed
    torch.testing.assert_close(mixed[4], images[4])
    assert labels[0].tolist() == [1, 0, 0]
    again, again_targets = task.training_batch(images.clone(), labels, key=(1, 0, 0))
    torch.testing.assert_close((again, again_targets), (mixed, targets))
    other, _ = task.training_batch(images.clone(), labels, key=(1, 1, 0))
    assert not torch.equal(other, mixed)
