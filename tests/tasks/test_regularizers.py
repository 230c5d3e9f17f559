"""The regularizers change the training step as documented: the loss formula, the weights, the mixing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_finetune.data.images import ImageSettings
from hf_finetune.data.loaders import create_transforms
from hf_finetune.model.create import create_classifier
from hf_finetune.tasks.objective import TrainingObjective, balanced_class_weights
from hf_finetune.data.sampling import SeededAugmentation


def _batch(size=6, classes=3):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(size, classes, generator=generator), torch.arange(size) % classes


def test_label_smoothing_loss_is_the_formula():
    logits, labels = _batch()
    smoothing, classes = 0.1, 3
    log_p = logits.log_softmax(1)
    expected = (-(1 - smoothing) * log_p[torch.arange(6), labels] - smoothing / classes * log_p.sum(1)).mean()
    loss = TrainingObjective(classes, label_smoothing=smoothing).loss(logits, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() != pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-3)


def test_balanced_class_weights_come_from_the_train_counts():
    weights = balanced_class_weights([0, 0, 0, 1, 2, 2], num_classes=3)
    assert weights.tolist() == pytest.approx([6 / 9, 6 / 3, 6 / 6])
    logits, labels = _batch()
    nll = -logits.log_softmax(1)[torch.arange(6), labels]
    expected = (weights[labels] * nll).sum() / weights[labels].sum()  # torch's weighted mean
    loss = TrainingObjective(3, class_weights=weights).loss(logits, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_mixup_blends_each_image_with_the_flipped_batch_and_its_targets_alike():
    images, labels = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 2, 1])
    objective = TrainingObjective(3, mixup=0.4)
    np.random.seed(0)
    mixed, targets = objective.mix(images.clone(), labels, key=(0, 1, 2))
    global_draw = np.random.rand()
    again, same_targets = objective.mix(images.clone(), labels, key=(0, 1, 2))
    assert torch.equal(mixed, again) and torch.equal(targets, same_targets)  # a function of the key alone
    np.random.seed(0)
    assert np.random.rand() == global_draw  # numpy's global stream is left as it was
    _, other_targets = objective.mix(images.clone(), labels, key=(0, 1, 3))
    assert not torch.equal(targets, other_targets)
    lam = targets[0, 0].item()  # image 0 (label 0) is blended with image 3 (label 2) of the 4 mixed ones
    even = images[:4]
    assert 0 < lam < 1
    one_hot = F.one_hot(labels[:4], 3).float()
    assert torch.allclose(targets[:4], lam * one_hot + (1 - lam) * one_hot.flip(0))
    assert torch.allclose(mixed[:4], lam * even + (1 - lam) * even.flip(0), atol=1e-6)
    # The odd last image stays as it was, with its one-hot target.
    assert torch.equal(mixed[4], images[4]) and targets[4].tolist() == [0, 1, 0]  # label 1
    # The soft-target loss is torch's cross-entropy on probabilities.
    logits = torch.randn(5, 3)
    expected = -(targets * logits.log_softmax(1)).sum(1).mean()
    assert objective.loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_cutmix_pastes_a_box_and_mixes_targets_by_its_area():
    images, labels = torch.arange(2).float().view(2, 1, 1, 1).expand(2, 3, 16, 16).clone(), torch.tensor([0, 1])
    mixed, targets = TrainingObjective(2, cutmix=1.0).mix(images.clone(), labels, key=(3,))
    pasted = (mixed[0, 0] == 1).float().mean().item()  # image 0 is zeros: the box from image 1 is ones
    assert 0 < pasted < 1 and targets[0].tolist() == pytest.approx([1 - pasted, pasted])


@pytest.mark.parametrize("name", ["rand", "trivial"])
def test_auto_augment_changes_the_crops_and_is_seeded_per_sample(name):
    settings = ImageSettings.from_model(create_classifier("test_resnet", ["a", "b"], pretrained=False,
                                                          img_size=32)[0])
    image = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    class One(torch.utils.data.Dataset):
        def __init__(self, transform):
            self.transform = transform

        def __len__(self):
            return 4

        def __getitem__(self, index):
            return self.transform(image)

    plain, augmented = SeededAugmentation(One(create_transforms(settings)[0]), 0), SeededAugmentation(
        One(create_transforms(settings, name)[0]), 0)
    crops = [augmented[index] for index in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(crops, [augmented[index] for index in range(4)]))
    assert any(not torch.equal(a, plain[index]) for index, a in enumerate(crops))


def test_drop_path_reaches_the_model():
    model, _ = create_classifier("test_vit", ["a", "b"], pretrained=False, drop_path=0.2)
    rates = [module.drop_prob for module in model.modules() if type(module).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2)
    plain, _ = create_classifier("test_vit", ["a", "b"], pretrained=False)
    assert not [module for module in plain.modules() if type(module).__name__ == "DropPath"]
