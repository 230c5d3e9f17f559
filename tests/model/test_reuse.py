"""Reusing source classifier rows: the matching rules, the row copy for every head layout, and its effect."""

from __future__ import annotations

import json
import logging
import re

import pytest
import timm
import torch
from paths import HOTDOG_MINI, LITE0_WEIGHTS
from torch import nn

from hf_finetune.errors import UserError
from hf_finetune.model.labels import (describe_matches, match_labels, normalize_label, parse_label_map,
                                      source_label_names)
from hf_finetune.model.create import SourceModel, create_classifier
from hf_finetune.model.reuse import copy_classifier_rows

LITE0 = f"local-dir:{LITE0_WEIGHTS}"
HOTDOG_MINI_VAL = HOTDOG_MINI / "val"
HOTDOG = 934  # ImageNet "hotdog, hot dog, red hot"


@pytest.fixture(scope="module")
def imagenet_labels():
    return source_label_names({"num_classes": 1000})


@pytest.fixture(scope="module")
def lite0_source():
    """The source model itself, untouched, to compare the reused head against."""
    return timm.create_model(LITE0, pretrained=True).eval()


def test_normalize_label_treats_case_and_separators_alike():
    assert normalize_label("  Hot_dog-Bun\tstand ") == "hot dog bun stand"
    assert normalize_label("hot--__dog") == "hot dog"


@pytest.mark.parametrize("folder", ["hotdog", "hot dog", "red hot", "hot_dog", "Hot-Dog", "HOTDOG"])
def test_synonyms_case_and_separators_match_imagenet_hotdog(folder, imagenet_labels):
    assert match_labels([folder, "not_hotdog"], imagenet_labels) == {0: HOTDOG}


def test_label_without_a_source_class_is_left_unmatched(imagenet_labels):
    # "hotdogs" now names 934 by its singular (issue 13): test_label_forms.py has it
    assert match_labels(["not_hotdog", "hotdog_stands", "dog"], imagenet_labels) == {}


def test_no_source_labels_matches_only_the_explicit_map():
    assert match_labels(["hotdog", "cat"], None) == {}
    assert match_labels(["hotdog", "cat"], None, explicit={"cat": 7}) == {1: 7}


def test_ambiguous_label_takes_the_first_source_class_and_warns(imagenet_labels, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_finetune.model.reuse"):
        assert match_labels(["crane"], imagenet_labels) == {0: 134}  # 134 the bird, 517 the machine
    assert "134, 517" in caplog.text and "--label-map crane=INDEX" in caplog.text


def test_matches_are_logged(imagenet_labels, caplog):
    with caplog.at_level(logging.INFO, logger="hf_finetune.model.labels"):
        match_labels(["hotdog", "not_hotdog"], imagenet_labels)
    assert "hotdog -> 934 (hotdog, hot dog, red hot)" in caplog.text and "new rows: not_hotdog" in caplog.text


def test_explicit_map_overrides_automatic_matching(imagenet_labels):
    labels = ["hotdog", "sausage_in_bun"]
    explicit = parse_label_map("hotdog=933, sausage_in_bun=934", labels, imagenet_labels)
    assert explicit == {"hotdog": 933, "sausage_in_bun": HOTDOG}
    assert match_labels(labels, imagenet_labels, explicit) == {0: 933, 1: HOTDOG}


def test_explicit_map_by_source_name_and_normalized_target(imagenet_labels):
    labels = ["Sausage-In-Bun", "pie"]
    assert parse_label_map("sausage_in_bun=Red Hot,pie=pizza pie", labels, imagenet_labels) == {
        "Sausage-In-Bun": HOTDOG, "pie": 963}


def test_explicit_map_from_json_file(tmp_path, imagenet_labels):
    mapping = tmp_path / "labels.json"
    mapping.write_text(json.dumps({"sausage": 934, "pie": "pizza, pizza pie"}))
    assert parse_label_map(str(mapping), ["sausage", "pie"], imagenet_labels) == {"sausage": HOTDOG, "pie": 963}


def test_no_map_gives_no_explicit_matches(imagenet_labels):
    assert parse_label_map(None, ["hotdog"], imagenet_labels) == {}
    assert parse_label_map("", ["hotdog"], imagenet_labels) == {}


@pytest.mark.parametrize("spec, message", [
    ("cat=934", "'cat' is not a label of the dataset (hotdog, not_hotdog)"),
    ("hotdog=1000", "source class 1000 is out of range (0..999)"),
    ("hotdog=-1", "out of range"),
    ("hotdog=hot dogg", "no source class is named 'hot dogg'; close: 934 (hotdog, hot dog, red hot)"),
    ("hotdog:934", "expected TARGET=SOURCE pairs"),
    ("missing.json", "cannot read it as JSON"),
])
def test_bad_label_map_is_a_user_error(spec, message, imagenet_labels, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=re.escape(message)):
        parse_label_map(spec, ["hotdog", "not_hotdog"], imagenet_labels)


def test_json_map_must_be_an_object(tmp_path, imagenet_labels):
    mapping = tmp_path / "labels.json"
    mapping.write_text("[934]")
    with pytest.raises(UserError, match="expected a JSON object"):
        parse_label_map(str(mapping), ["hotdog"], imagenet_labels)


def test_source_names_by_name_need_source_label_names():
    with pytest.raises(UserError, match="no label names; give a class index"):
        parse_label_map("hotdog=red hot", ["hotdog"], None)
    assert parse_label_map("hotdog=5000", ["hotdog"], None) == {"hotdog": 5000}  # range checked at copy time


def test_source_label_names_from_synsets_and_descriptions():
    assert source_label_names({"label_names": ["n07697537", "x"], "label_descriptions": {"x": "an x"}}) == [
        "hotdog, hot dog, red hot", "an x"]
    assert source_label_names({"label_names": ["sun", "rain"], "num_classes": 2}) == ["sun", "rain"]
    assert source_label_names({"num_classes": 7}) is None
    assert source_label_names({"num_classes": 1000})[HOTDOG] == "hotdog, hot dog, red hot"


def test_describe_matches_for_run_config(imagenet_labels):
    labels = ["not_hotdog", "hotdog"]
    assert describe_matches({1: HOTDOG}, labels, imagenet_labels) == [
        {"label": "hotdog", "source_index": HOTDOG, "source_label": "hotdog, hot dog, red hot"}]
    assert describe_matches({0: 3}, labels, None) == [{"label": "not_hotdog", "source_index": 3, "source_label": None}]


def _reuse(model, source, labels):
    matches = match_labels(labels, source.label_names or source_label_names({"num_classes": 1000}))
    untouched = {name: param.detach().clone() for name, param in model.named_parameters()}
    copy_classifier_rows(model, source, matches)
    return matches, untouched


def test_lite0_hotdog_row_is_the_source_row_and_not_hotdog_keeps_its_init():
    model, source = create_classifier(LITE0, ["hotdog", "not_hotdog"])
    matches, before = _reuse(model, source, ["hotdog", "not_hotdog"])
    assert matches == {0: HOTDOG}
    assert torch.equal(model.classifier.weight[0], source.classifier_state["classifier.weight"][HOTDOG])
    assert torch.equal(model.classifier.bias[0], source.classifier_state["classifier.bias"][HOTDOG])
    assert torch.equal(model.classifier.weight[1], before["classifier.weight"][1])
    assert torch.equal(model.classifier.bias[1], before["classifier.bias"][1])


@pytest.mark.parametrize("architecture, head", [
    ("resnet18", "fc"),  # Linear named fc
    ("convnext_atto", "head.fc"),  # Linear nested in a head module
    ("vit_tiny_patch16_224", "head"),  # Linear named head
    ("dla46_c", "fc"),  # a 1x1 Conv2d classifier: weight [classes, channels, 1, 1]
])
def test_rows_are_copied_for_every_head_layout(architecture, head):
    # pretrained=False keeps the test offline and fast; the randomly initialised source head is still
    # a distinct source row per class, which is all the copy needs.
    labels = ["not_hotdog", "Hot_Dog", "pizza"]
    model, source = create_classifier(architecture, labels, pretrained=False)
    matches, before = _reuse(model, source, labels)
    assert matches == {1: HOTDOG, 2: 963}
    weight = model.get_submodule(head).weight
    assert weight.shape[0] == 3 and (weight.ndim == 4) == (architecture == "dla46_c")
    for target, source_index in matches.items():
        assert torch.equal(weight[target], source.classifier_state[f"{head}.weight"][source_index])
        assert torch.equal(model.get_submodule(head).bias[target],
                           source.classifier_state[f"{head}.bias"][source_index])
    assert torch.equal(weight[0], before[f"{head}.weight"][0])


class _BiasFreeHeadNet(nn.Module):
    """Test double: a classifier without bias, found through pretrained_cfg under a custom name."""

    def __init__(self, num_classes, features=6):
        super().__init__()
        self.pretrained_cfg = {"classifier": "head.proj"}
        self.head = nn.Module()
        self.head.proj = nn.Linear(features, num_classes, bias=False)

    def get_classifier(self):
        return self.head.proj


def test_head_without_bias():
    source_weight = torch.randn(10, 6)
    model = _BiasFreeHeadNet(num_classes=2)
    kept = model.head.proj.weight[0].detach().clone()
    source = SourceModel("tiny", "tiny", True, classifier_state={"head.proj.weight": source_weight})
    copy_classifier_rows(model, source, {1: 7})
    assert torch.equal(model.head.proj.weight[1], source_weight[7])
    assert torch.equal(model.head.proj.weight[0], kept)


def test_incompatible_source_head_is_skipped_with_a_warning(caplog):
    model = _BiasFreeHeadNet(num_classes=2)
    before = model.head.proj.weight.detach().clone()
    source = SourceModel("tiny", "tiny", True, classifier_state={"head.proj.weight": torch.randn(10, 8)})
    with caplog.at_level(logging.WARNING, logger="hf_finetune.model.reuse"):
        copy_classifier_rows(model, source, {1: 7})
    assert torch.equal(model.head.proj.weight, before)
    assert ("not reusing classifier rows for head.proj.weight: the source has (10, 8), the new head (2, 6)"
            in caplog.text)


def test_source_index_beyond_the_source_head_is_a_user_error():
    model = _BiasFreeHeadNet(num_classes=2)
    source = SourceModel("tiny", "tiny", True, classifier_state={"head.proj.weight": torch.randn(10, 6)})
    with pytest.raises(UserError, match=r"source class\(es\) \[10\] out of range: the source classifier has 10"):
        copy_classifier_rows(model, source, {0: 10})


def _images_named_after_source_classes():
    """Real photos filed under folders named like ImageNet classes (hotdogs as `hot_dog`)."""
    hotdogs = sorted((HOTDOG_MINI_VAL / "hotdog").glob("*.jpg"))[:8]
    others = sorted((HOTDOG_MINI_VAL / "not_hotdog").glob("*.jpg"))[:12]
    folders = {"hot_dog": hotdogs, "Pizza": others[0::3], "cheeseburger": others[1::3], "French-loaf": others[2::3]}
    return list(folders), [(path, label) for label, paths in enumerate(folders.values()) for path in paths]


def test_reused_head_scores_exactly_like_the_source_restricted_to_the_target_classes(lite0_source):
    from PIL import Image

    labels, samples = _images_named_after_source_classes()
    model, source = create_classifier(LITE0, labels)
    matches = match_labels(labels, source.label_names)
    assert matches == {0: HOTDOG, 1: 963, 2: 933, 3: 930}
    copy_classifier_rows(model, source, matches)

    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=lite0_source))
    images = torch.stack([transform(Image.open(path).convert("RGB")) for path, _ in samples])
    targets = torch.tensor([label for _, label in samples])
    with torch.no_grad():
        new_logits = model.eval()(images)
        source_logits = lite0_source(images)[:, list(matches.values())]
    torch.testing.assert_close(new_logits, source_logits, rtol=1e-5, atol=1e-5)
    new_accuracy = (new_logits.argmax(1) == targets).float().mean().item()
    source_accuracy = (source_logits.argmax(1) == targets).float().mean().item()
    assert new_accuracy == source_accuracy > 0.25  # above chance among the 4 classes: the rows carry knowledge
