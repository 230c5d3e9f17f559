"""The confusion matrix as a picture, readable from 2 classes to 101 and more.

Colour is the row-normalized count (the share of each true class predicted as each class: recall on the
diagonal), the cells show the raw counts. Above `max_classes` classes only the classes involved in the largest
off-diagonal counts are drawn (still normalized by their full rows), and the top confused pairs are listed
beside the matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from hf_finetune.tasks.calibration import temperature_summary

MAX_CLASSES = 25


def top_confused_pairs(counts, k: int = 10) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal counts as (true index, predicted index, count), largest first, zeros left out.

    Ties go to the lower true index, then the lower predicted index, so the choice is deterministic.
    """
    counts = np.asarray(counts, dtype=np.int64)
    true, predicted = np.nonzero(counts * (1 - np.eye(len(counts), dtype=np.int64)))
    pairs = sorted(zip(true.tolist(), predicted.tolist()), key=lambda pair: (-counts[pair], pair))
    return [(t, p, int(counts[t, p])) for t, p in pairs[:k]]


def most_confused_classes(counts, max_classes: int = MAX_CLASSES) -> list[int]:
    """Every class when there are at most `max_classes`; otherwise the classes of the largest confusions.

    Walks the off-diagonal pairs from the largest count down, taking both classes of each pair, until
    `max_classes` are chosen (or no confusion is left); returned in index order, so the diagonal stays the
    diagonal.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if len(counts) <= max_classes:
        return list(range(len(counts)))
    chosen: dict[int, None] = {}  # insertion-ordered set
    for true, predicted, _ in top_confused_pairs(counts, k=counts.size):
        for index in (true, predicted):
            if len(chosen) < max_classes:
                chosen.setdefault(index)
        if len(chosen) >= max_classes:
            break
    return sorted(chosen)


def plot_confusion_matrix(counts, label_names: Sequence[str], path: Path, max_classes: int = MAX_CLASSES,
                          top_pairs: int = 12) -> list[int]:
    """Write the confusion matrix (rows true, columns predicted) as a PNG; return the class indices drawn."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or len(label_names) != len(counts):
        raise ValueError(f"expected a square matrix with one label per row; got {counts.shape} and "
                         f"{len(label_names)} labels")
    shown = most_confused_classes(counts, max_classes)
    pairs = top_confused_pairs(counts, top_pairs) if len(counts) > 2 else []
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)[np.ix_(shown, shown)]

    figure, axis, colour_axis, list_x = _matrix_layout(plt, len(shown), with_list=bool(pairs))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    _write_counts(axis, counts[np.ix_(shown, shown)], shares)
    names = [_short(label_names[index]) for index in shown]
    axis.set_xticks(range(len(shown)), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    axis.set_yticks(range(len(shown)), names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(_title(counts, len(shown)), fontsize=10)
    figure.colorbar(image, cax=colour_axis, label="share of the true class")
    if pairs:
        figure.text(list_x, axis.get_position().y1, _pairs_text(pairs, label_names), va="top", ha="left",
                    fontsize=8)
    figure.savefig(path, bbox_inches="tight")  # trims the unused margin
    plt.close(figure)
    return shown


def _matrix_layout(plt, classes: int, with_list: bool):
    """Fixed margins in inches (tight_layout misjudges rotated names beside a colour bar): the matrix grows
    0.42 in per class, room for a 3-digit count in each cell; names take 1.9 in left and below."""
    left, bottom, top, cell = 1.9, 1.9, 0.75, 0.42
    side = max(cell * classes, 1.6)
    colour_bar, list_width = 1.0, (3.8 if with_list else 0.2)
    width, height = left + side + colour_bar + list_width, bottom + side + top
    figure = plt.figure(figsize=(width, height), dpi=110)
    axis = figure.add_axes((left / width, bottom / height, side / width, side / height))
    colour_axis = figure.add_axes(((left + side + 0.15) / width, bottom / height, 0.2 / width, side / height))
    return figure, axis, colour_axis, (left + side + colour_bar) / width


def _write_counts(axis, counts: np.ndarray, shares: np.ndarray) -> None:
    size = 8 if len(counts) <= 15 else 6
    for (row, column), count in np.ndenumerate(counts):
        if count or row == column:  # zeros off the diagonal are noise at 25 classes
            axis.text(column, row, str(count), ha="center", va="center", fontsize=size,
                      color="white" if shares[row, column] > 0.55 else "black")


def _title(counts: np.ndarray, shown: int) -> str:
    total, correct = int(counts.sum()), int(np.trace(counts))
    accuracy = f"accuracy {correct / total:.3f} ({correct}/{total})" if total else "no samples"
    subset = f"\nthe {shown} most-confused of {len(counts)} classes" if shown < len(counts) else ""
    return f"confusion matrix, {accuracy}{subset}"


def _pairs_text(pairs: list[tuple[int, int, int]], label_names: Sequence[str]) -> str:
    lines = [f"{_short(label_names[true])} \u2192 {_short(label_names[predicted])}: {count}"
             for true, predicted, count in pairs]
    return "most confused\n(true \u2192 predicted: n)\n\n" + "\n".join(lines)


def _short(name: str, limit: int = 22) -> str:
    """Cut long names in the middle: their ends tell classes apart ('food_101_class_007')."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return name[:head] + "\u2026" + name[len(name) - (limit - 1 - head):]


def plot_reliability_diagram(calibration: dict, split_names: dict[str, str], path: Path) -> None:
    """calibration.png: per split in metrics.json's "calibration" (eval, then test), the accuracy of each
    confidence bin before (outline) and after (filled) temperature scaling against the diagonal of perfect
    calibration, with ECE and NLL in the title (Guo et al. 2017, figure 1); multi-label: the fraction of
    positives per bin of the pooled sigmoid scores."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    splits = [split for split in ("eval", "test") if split in calibration]
    figure, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 4.2), dpi=110, squeeze=False)
    width = 1 / calibration["bins"]
    lefts = np.arange(calibration["bins"]) * width
    for axis, split in zip(axes[0], splits):
        numbers = calibration[split]
        for when, style in (("before", dict(fill=False, edgecolor="tab:red", linewidth=1.2)),
                            ("after", dict(color="tab:blue", alpha=0.6))):
            accuracy = numbers[when]["bins"]["accuracy"]
            filled = [index for index, value in enumerate(accuracy) if value is not None]  # empty bins: no bar
            axis.bar(lefts[filled], [accuracy[index] for index in filled], width=width, align="edge",
                     label=_calibration_label(numbers, when), **style)
        axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        # Multi-label (one T per label): every (image, label) pair pooled, its sigmoid score against its outcome.
        per_label = "temperatures" in calibration
        axis.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="fraction positive" if per_label else "accuracy",
                 xlabel="sigmoid score (all image-label pairs)" if per_label else "confidence (top-1 probability)",
                 title=f"{split_names.get(split, split)} ({numbers['count']} images)\n"
                       f"{temperature_summary(calibration)}")
        axis.title.set_fontsize(10)
        axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _calibration_label(numbers: dict, when: str) -> str:
    return f"{when}: ECE {numbers[when]['ece']:.3f}, NLL {numbers[when]['nll']:.3f}"


def plot_per_label_ap(per_label: dict[str, dict], path: Path, max_labels: int = MAX_CLASSES) -> list[str]:
    """A multi-label evaluation's view: each label's average precision as a horizontal bar, with its support,
    worst first (at most `max_labels` of them); return the labels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = sorted(per_label, key=lambda name: (per_label[name]["ap"] is None, per_label[name]["ap"] or 0.0))
    shown = ranked[:max_labels]
    figure, axis = plt.subplots(figsize=(6, 1 + 0.3 * len(shown)))
    values = [per_label[name]["ap"] or 0.0 for name in shown]
    axis.barh(range(len(shown)), values, color="tab:blue")
    axis.set_yticks(range(len(shown)), [f"{_short(name)} ({per_label[name]['support']})" for name in shown],
                    fontsize=8)
    axis.invert_yaxis()  # worst on top
    axis.set_xlim(0, 1)
    axis.set_xlabel("average precision")
    hidden = f", {len(ranked) - len(shown)} better ones not shown" if len(ranked) > len(shown) else ""
    axis.set_title(f"per-label AP, worst first (support in brackets{hidden})", fontsize=10)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return shown
