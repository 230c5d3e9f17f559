"""Confusion-matrix and mistakes pictures: which classes and pairs are chosen, and valid PNGs at 2, 10, 101 classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_finetune.evaluate.mistakes import plot_mistakes
from hf_finetune.tasks.single_label import most_confident_mistakes
from hf_finetune.evaluate.plots import most_confused_classes, plot_confusion_matrix, top_confused_pairs


def _diagonal(n, correct=20):
    return np.eye(n, dtype=np.int64) * correct


def _planted_101():
    """101 classes, 20 right each, and three planted confusions of different sizes."""
    counts = _diagonal(101)
    counts[90, 3], counts[10, 11], counts[55, 20] = 50, 40, 30
    return counts


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert np.asarray(image.convert("L")).std() > 10  # something is drawn
        return image.size


def test_top_confused_pairs_largest_first_ties_by_index_zeros_left_out():
    counts = np.array([[5, 2, 0],
                       [3, 5, 2],
                       [0, 0, 9]])
    assert top_confused_pairs(counts) == [(1, 0, 3), (0, 1, 2), (1, 2, 2)]
    assert top_confused_pairs(counts, k=1) == [(1, 0, 3)]
    assert top_confused_pairs(_diagonal(4)) == []


def test_small_matrices_show_every_class():
    assert most_confused_classes(_diagonal(25)) == list(range(25))


def test_large_matrices_show_the_classes_of_the_largest_confusions_in_index_order():
    counts = _planted_101()
    assert most_confused_classes(counts, max_classes=4) == [3, 10, 11, 90]  # pairs 90->3, 10->11
    assert most_confused_classes(counts, max_classes=5) == [3, 10, 11, 55, 90]  # one slot left: the true class
    assert most_confused_classes(counts, max_classes=25) == [3, 10, 11, 20, 55, 90]  # no more confusions


def test_a_class_in_two_pairs_is_chosen_once():
    counts = _diagonal(30)
    counts[1, 2], counts[2, 1], counts[2, 7] = 9, 8, 7
    assert most_confused_classes(counts, max_classes=3) == [1, 2, 7]


@pytest.mark.parametrize("classes", [2, 10, 101])
def test_confusion_matrix_png(classes, tmp_path):
    rng = np.random.default_rng(classes)
    counts = _diagonal(classes) + rng.integers(0, 3, (classes, classes)) * (rng.random((classes, classes)) < 0.2)
    names = [f"class_{index:03d}" for index in range(classes)]
    path = tmp_path / "confusion.png"
    shown = plot_confusion_matrix(counts, names, path)
    assert shown == most_confused_classes(counts)
    assert len(shown) == min(classes, 25)
    width, height = _png_size(path)
    assert 300 < width < 3000 and 300 < height < 3000


def test_confusion_matrix_of_101_classes_draws_the_planted_confusions(tmp_path):
    shown = plot_confusion_matrix(_planted_101(), [f"c{index}" for index in range(101)], tmp_path / "cm.png")
    assert shown == [3, 10, 11, 20, 55, 90]


def test_confusion_matrix_needs_one_name_per_class(tmp_path):
    with pytest.raises(ValueError, match="one label per row"):
        plot_confusion_matrix(_diagonal(3), ["a", "b"], tmp_path / "cm.png")


def test_most_confident_mistakes():
    probabilities = torch.tensor([[0.9, 0.1],   # right
                                  [0.2, 0.8],   # wrong, 0.8 sure
                                  [0.6, 0.4],   # wrong, 0.6 sure
                                  [0.05, 0.95],  # wrong, 0.95 sure
                                  [0.2, 0.8]])  # wrong, 0.8 sure: tie with sample 1, the lower index first
    labels = torch.tensor([0, 0, 1, 0, 0])
    assert most_confident_mistakes(probabilities, labels) == [3, 1, 4, 2]
    assert most_confident_mistakes(probabilities, labels, k=2) == [3, 1]
    assert most_confident_mistakes(probabilities, torch.tensor([0, 1, 0, 1, 1])) == []


def _photo(seed, size=(48, 64)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_mistakes_grid_png_grows_by_rows(tmp_path):
    sizes = {}
    for count in (3, 8):
        path = tmp_path / f"mistakes_{count}.png"
        plot_mistakes([_photo(i) for i in range(count)], ["true: hot_dog\npredicted: pizza\np = 0.90"] * count, path)
        sizes[count] = _png_size(path)
    assert sizes[8][1] > 1.5 * sizes[3][1]  # 2 rows of 4 against 1 row of 3


def test_no_mistakes_still_writes_a_png(tmp_path):
    plot_mistakes([], [], tmp_path / "none.png")
    assert _png_size(tmp_path / "none.png")


def test_mistakes_input_errors(tmp_path):
    with pytest.raises(ValueError, match="one of each per photo"):
        plot_mistakes([_photo(0)], ["a", "b"], tmp_path / "m.png")
    chw = np.zeros((3, 32, 32), dtype=np.uint8)
    with pytest.raises(ValueError, match="permute"):
        plot_mistakes([chw], ["a"], tmp_path / "m.png")
