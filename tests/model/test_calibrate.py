"""A temperature put into the classifier (issue 23.1): logits divided by T exactly, the argmax unchanged."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from hf_finetune.errors import UserError
from hf_finetune.model.calibrate import apply_temperature


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "deit_tiny_distilled_patch16_224", "test_efficientnet"])
def test_the_model_gives_its_logits_divided_by_t(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7, img_size=32).eval() if "deit" in name else \
        timm.create_model(name, pretrained=False, num_classes=7).eval()
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(images)
        apply_temperature(model, 2.5)
        after = model(images)
    torch.testing.assert_close(after, before / 2.5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after.softmax(dim=1), (before / 2.5).softmax(dim=1))
    assert torch.equal(after.argmax(dim=1), before.argmax(dim=1))


def test_a_model_without_a_linear_head_is_a_clear_error():
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)  # get_classifier() is an Identity
    with pytest.raises(UserError, match="--calibrate none"):
        apply_temperature(model, 2.0)


def test_a_temperature_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(nn.Linear(2, 2), 0.0)


def test_one_temperature_per_output_divides_each_logit_by_its_own():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    images = torch.randn(4, 3, 32, 32)
    temperatures = [2.0, 0.5, 1.25]
    with torch.no_grad():
        before = model(images)
        apply_temperature(model, temperatures)
        after = model(images)
    torch.testing.assert_close(after, before / torch.tensor(temperatures), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2 temperatures for a classifier of 3 outputs"):
        apply_temperature(model, [1.0, 2.0])
