"""Parameter groups, the real per-group LR after the scheduler is built, and global batch arithmetic."""

from __future__ import annotations

import pytest
from conftest import resolved

from hf_finetune.config import FinetuneConfig
from hf_finetune.errors import UserError
from hf_finetune.model.create import create_classifier, head_parameter_names
from hf_finetune.model.optim import create_optimizer, create_param_groups, create_scheduler, describe_param_groups
from hf_finetune.train.parts import per_device_batch_size


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "tf_efficientnet_lite0"])
def test_head_lr_is_exactly_k_times_backbone_after_the_scheduler(name):
    config = resolved(FinetuneConfig(lr=0.01, head_lr_mult=7.0, layer_decay=1, lr_scheduler="cosine", warmup_steps=2))
    model, _ = create_classifier(name, ["a", "b"], pretrained=False)
    optimizer = create_optimizer(create_param_groups(model, config), config)
    scheduler = create_scheduler(optimizer, config, total_updates=10)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        backbone, head = optimizer.param_groups
        assert (backbone["name"], head["name"]) == ("backbone", "head")
        assert head["lr"] == pytest.approx(7.0 * backbone["lr"], rel=1e-12) and backbone["lr"] > 0
    head_ids = {id(p) for n, p in model.named_parameters() if n in head_parameter_names(model)}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == head_ids
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters()), "every parameter in exactly one group"


def test_one_group_without_param_group():
    config = resolved(FinetuneConfig(lr=0.02, param_group=False, warmup_steps=0))
    model, _ = create_classifier("test_resnet", ["a", "b"], pretrained=False)
    optimizer = create_optimizer(create_param_groups(model, config), config)
    create_scheduler(optimizer, config, total_updates=5)
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("all", 0.02)]
    assert len(optimizer.param_groups[0]["params"]) == len(list(model.parameters()))


def test_chapter_sgd_defaults():
    config = resolved(FinetuneConfig(recipe="d2l"))
    model, _ = create_classifier("test_resnet", ["a", "b"], pretrained=False)
    optimizer = create_optimizer(create_param_groups(model, config), config)
    assert type(optimizer).__name__ == "SGD"
    assert optimizer.param_groups[0]["momentum"] == 0 and optimizer.param_groups[0]["lr"] == pytest.approx(5e-5 * 128)
    assert optimizer.param_groups[1]["weight_decay"] == pytest.approx(1e-3 / 128)


@pytest.mark.parametrize("batch, processes, accumulation, expected", [(128, 1, 1, 128), (128, 2, 1, 64),
                                                                      (128, 2, 2, 32), (96, 3, 4, 8)])
def test_global_batch_is_split_over_processes_and_accumulation(batch, processes, accumulation, expected):
    config = FinetuneConfig(batch_size=batch, gradient_accumulation_steps=accumulation)
    assert per_device_batch_size(config, processes) == expected


def test_indivisible_global_batch_is_refused():
    with pytest.raises(UserError, match="not divisible by 3 process"):
        per_device_batch_size(FinetuneConfig(batch_size=128), 3)


def test_adamw_gets_adamws_usual_weight_decay_and_an_explicit_value_wins():
    model, _ = create_classifier("test_resnet", ["a", "b"], pretrained=False)
    for given, expected in ((None, 0.05), (0.01, 0.01), (0.0, 0.0)):
        config = resolved(FinetuneConfig(optimizer="adamw", weight_decay=given))
        optimizer = create_optimizer(create_param_groups(model, config), config)
        assert type(optimizer).__name__ == "AdamW"
        assert {group["weight_decay"] for group in optimizer.param_groups} == {expected}


def test_a_warm_up_records_the_configured_learning_rates_not_its_starting_zero():
    config = resolved(FinetuneConfig(lr=0.01, layer_decay=1, warmup_steps=5))
    model, _ = create_classifier("test_resnet", ["a", "b"], pretrained=False)
    optimizer = create_optimizer(create_param_groups(model, config), config)
    create_scheduler(optimizer, config, total_updates=20)
    assert [group["lr"] for group in optimizer.param_groups] == [0.0, 0.0]  # the warm-up starts at zero
    assert [(group["name"], group["lr"]) for group in describe_param_groups(optimizer)] == [("backbone", 0.01),
                                                                                       ("head", 0.1)]
