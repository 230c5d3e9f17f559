"""Label matching by singular/plural forms, and near misses suggested (never applied) as --label-map."""

from __future__ import annotations

import logging

import pytest
from paths import FOOD101_MINI

from hf_finetune.model.label_forms import head_similarity, singular_forms
from hf_finetune.model.labels import match_labels, source_label_names, suggest_label_map


@pytest.fixture(scope="module")
def imagenet_labels():
    return source_label_names({"num_classes": 1000})


@pytest.mark.parametrize("plural, singular", [
    ("ants", "ant"), ("bees", "bee"), ("puppies", "puppy"), ("boxes", "box"), ("dishes", "dish"),
    ("tomatoes", "tomato"), ("knives", "knife"), ("wolves", "wolf"), ("fries", "fry"), ("geese", "goose"),
    ("mice", "mouse"), ("children", "child"),
])
def test_singular_forms(plural, singular):
    assert singular in singular_forms(plural) and plural in singular_forms(plural)


@pytest.mark.parametrize("word", ["glass", "bus", "ant", "sushi"])
def test_words_that_are_not_plurals_keep_their_one_form(word):
    assert singular_forms(word) == {word}


@pytest.mark.parametrize("folder, source", [
    ("ants", 310), ("bees", 309), ("geese", 99), ("strawberries", 949), ("daisies", 985), ("ostriches", 9),
    ("hotdogs", 934), ("hot_dogs", 934), ("Ladybugs", 301), ("cheese_burger", 933),  # spaces ignored too
])
def test_plural_folders_name_singular_imagenet_classes(folder, source, imagenet_labels):
    assert match_labels([folder], imagenet_labels) == {0: source}


def test_singular_folders_name_plural_source_classes():
    source = ["puppies", "boxes", "kitchen knives", "French fries", "geese"]
    folders = ["puppy", "box", "kitchen_knife", "french_fry", "goose"]
    assert match_labels(folders, source) == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}


def test_an_exact_name_wins_over_a_plural_form(imagenet_labels):
    # 837 "sunglasses, dark glasses, shades" by name; 836 "sunglass" would be its singular
    assert match_labels(["sunglasses", "sunglass"], imagenet_labels) == {0: 837, 1: 836}


@pytest.mark.parametrize("folder, sources", [("pandas", "387, 388"), ("cranes", "134, 517")])
def test_a_plural_naming_two_source_classes_is_not_applied(folder, sources, imagenet_labels, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_finetune.model.labels"):
        assert match_labels([folder], imagenet_labels) == {}
    assert f"name several source classes ({sources}); none is reused" in caplog.text
    assert f"--label-map {folder}=INDEX" in caplog.text


@pytest.mark.parametrize("folder", ["waffles", "chicken_wings", "hot_wings", "not_hotdog", "horses", "potatoes",
                                    "white_wine", "kittens", "bicycles", "oysters", "airplanes"])
def test_shared_words_of_another_meaning_are_neither_matched_nor_suggested(folder, imagenet_labels):
    # waffle iron (891), wing of an aircraft (908), hotdog under a negation (934), river horse = hippo (344),
    # mashed potato (935), red wine (966), mitten (rhyme), unicycle (rhyme), balusters (plural s), plane (726)
    assert match_labels([folder], imagenet_labels) == {}
    assert suggest_label_map([folder], imagenet_labels) == {}


@pytest.mark.parametrize("folder, source", [
    ("spaghetti_carbonara", 959), ("hamburger", 933), ("breakfast_burrito", 965), ("veggie_burger", 933),
])
def test_near_misses_are_suggested_not_applied(folder, source, imagenet_labels, caplog):
    with caplog.at_level(logging.INFO, logger="hf_finetune.model.labels"):
        assert match_labels([folder], imagenet_labels) == {}
    assert suggest_label_map([folder], imagenet_labels) == {folder: [source]}
    assert f"--label-map {folder}={source}" in caplog.text


def test_head_similarity_is_the_dice_coefficient_of_the_shared_head():
    # "spaghetticarbonara" (18 letters) and "carbonara" (9) share all 9 letters of "carbonara"
    assert head_similarity(["spaghetti", "carbonara"], ["carbonara"]) == pytest.approx(2 * 9 / (18 + 9))
    # "hamburger" (9) and "cheeseburger" (12) share "burger" (6), a noun fused in both
    assert head_similarity(["hamburger"], ["cheeseburger"]) == pytest.approx(2 * 6 / (9 + 12))
    # "wing": 4 letters, too short a head to carry the meaning
    assert head_similarity(["chicken", "wing"], ["wing"]) == 0.0


def test_food101_mini_folders(imagenet_labels):
    folders = sorted(path.name for path in (FOOD101_MINI / "train").iterdir() if path.is_dir())
    assert len(folders) == 10
    matches = {folders[target]: source for target, source in match_labels(folders, imagenet_labels).items()}
    assert matches == {"hot_dog": 934, "pizza": 963, "guacamole": 924}
    # french_fries, donuts, waffles, tacos, pancakes, sushi: ImageNet-1k has none of them (891 is a waffle iron)
    unmatched = [folder for folder in folders if folder not in matches]
    assert suggest_label_map(unmatched, imagenet_labels) == {"hamburger": [933]}
