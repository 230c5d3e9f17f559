"""--max-train-samples / --max-eval-samples: a class-stratified, seeded subset of a split, chosen before
anything is decoded, so the decode-once cache holds only the images a quick run uses."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def stratified_indices(labels, size: int, seed: int) -> list[int]:
    """`size` row indices (sorted) with each class's share of the split (largest remainder, so the counts
    add up exactly and no class present drops to 0 while size >= classes); which rows, seeded."""
    by_class = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    total = len(labels)
    if size >= total:
        return list(range(total))
    classes = sorted(by_class)
    exact = {label: size * len(by_class[label]) / total for label in classes}
    quota = {label: min(len(by_class[label]), max(1 if size >= len(classes) else 0, int(exact[label])))
             for label in classes}
    by_remainder = sorted(classes, key=lambda label: (exact[label] - int(exact[label]), -label), reverse=True)
    while sum(quota.values()) != size:
        step = 1 if sum(quota.values()) < size else -1
        for label in by_remainder if step > 0 else reversed(by_remainder):
            fits = quota[label] < len(by_class[label]) if step > 0 else quota[label] > 1
            if fits and sum(quota.values()) != size:
                quota[label] += step
    rng = np.random.default_rng(seed)
    chosen = [index for label in classes
              for index in rng.choice(by_class[label], size=quota[label], replace=False).tolist()]
    return sorted(chosen)


def select_samples(dataset, size, seed: int):
    """The dataset itself when `size` is None or covers it, else its stratified subset (multi-label, where a row
    has no one class to stratify by: a seeded random subset)."""
    import datasets

    if size is None or size >= len(dataset):
        return dataset
    if not isinstance(dataset.features["label"], datasets.ClassLabel):
        return dataset.select(sorted(np.random.default_rng(seed).choice(len(dataset), size, replace=False).tolist()))
    return dataset.select(stratified_indices(dataset["label"], size, seed))
