"""The d2l Fine-Tuning chapter's pipeline, the baseline: its data loaders and its train_fine_tuning loop."""

from __future__ import annotations

import time
from pathlib import Path

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def chapter_loaders(root: Path, workers: int, batch_size: int, img_size: int):
    """The chapter's data pipeline, verbatim apart from the size: ImageFolder, its augmentations, ImageNet stats."""
    import torch
    import torchvision
    from torchvision import transforms

    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_augs = transforms.Compose([transforms.RandomResizedCrop(img_size), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), normalize])
    resize = round(img_size * 256 / 224)
    test_augs = transforms.Compose([transforms.Resize([resize, resize]), transforms.CenterCrop(img_size),
                                    transforms.ToTensor(), normalize])
    common = dict(batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0)
    train = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(root / "train", train_augs), shuffle=True,
                                        **common)
    test = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(root / "val", test_augs), **common)
    return train, test


def measure_chapter_training(spec: dict) -> dict:
    """The chapter's train_fine_tuning loop: fp32, NCHW, summed loss, SGD; test accuracy every epoch."""
    import timm
    import torch

    torch.manual_seed(spec["seed"])
    train_iter, test_iter = chapter_loaders(Path(spec["root"]), 0, spec["batch_size"], spec["img_size"])
    net = timm.create_model(spec["model"], pretrained=False, num_classes=2)
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    trainer = torch.optim.SGD(net.parameters(), lr=spec["lr"] / spec["batch_size"], weight_decay=1e-3)
    epochs = []
    for _ in range(spec["epochs"]):
        started = time.perf_counter()
        net.train()
        images = 0
        for features, labels in train_iter:
            trainer.zero_grad()
            loss(net(features), labels).sum().backward()
            trainer.step()
            images += len(labels)
        train_seconds = time.perf_counter() - started
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for features, labels in test_iter:
                correct += (net(features).argmax(1) == labels).sum().item()
                total += len(labels)
        epochs.append({"seconds": time.perf_counter() - started, "train_images_per_sec": images / train_seconds,
                       "eval_acc": correct / total})
    return {"epochs": epochs}
