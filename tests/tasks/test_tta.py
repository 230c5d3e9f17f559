"""Flip test-time augmentation: the mean of the two forwards; a mirror-symmetric model is unchanged."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from hf_finetune.tasks.tta import flip_tta_logits


def test_equals_the_mean_of_the_plain_and_mirrored_forwards():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    images = torch.randn(3, 3, 32, 40)
    mirrored_by_hand = images[:, :, :, torch.arange(39, -1, -1)]  # column j <- column 39 - j
    expected = (model(images) + model(mirrored_by_hand)) / 2
    torch.testing.assert_close(flip_tta_logits(model, images), expected)
    # the augmentation does something for a model that is not mirror-symmetric
    assert not torch.allclose(flip_tta_logits(model, images), model(images))


class _SpatialMeanHead(nn.Module):
    """A model blind to left/right: global average pooling of the pixels, then a linear layer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, images):
        return self.fc(images.mean(dim=(2, 3)))


def test_a_mirror_symmetric_model_is_unchanged():
    torch.manual_seed(0)
    model = _SpatialMeanHead()
    images = torch.randn(2, 3, 8, 9)
    torch.testing.assert_close(flip_tta_logits(model, images), model(images))


def test_channels_last_images_flip_the_width_too():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    images = torch.randn(2, 3, 32, 40)
    torch.testing.assert_close(flip_tta_logits(model, images.contiguous(memory_format=torch.channels_last)),
                               flip_tta_logits(model, images), rtol=1e-5, atol=1e-5)


def test_images_must_be_a_4d_batch():
    with pytest.raises(ValueError, match="expected images"):
        flip_tta_logits(nn.Identity(), torch.zeros(3, 8, 8))
