"""scripts/evaluate.py on multi-label data: a manifest (or the folder holding it) or folders named by label
combination, scored as training scored its eval split, with the most confident false positives and negatives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_image_folder, run_script
from finished_run import MULTI_LABELS, make_finished_multi_label_run

from hf_finetune.errors import UserError
from hf_finetune.evaluate.labelled import find_labelled_images


@pytest.mark.slow
def test_evaluate_reproduces_the_runs_eval_metrics_and_shows_false_positives_and_negatives(tmp_path):
    """From the data folder (its val.csv) and from the manifest itself: the run's selected-epoch eval numbers,
    exactly (the loss up to float rounding); per_label_ap.png, mistakes.png and report.md; every false
    positive and false negative at the saved thresholds, each kind most confident first."""
    run, data = make_finished_multi_label_run(tmp_path / "run")
    expected = json.loads((run / "metrics.json").read_text())["selected"]["eval"]
    for source, out in ((data, tmp_path / "folder"), (data / "val.csv", tmp_path / "manifest")):
        result = run_script("evaluate.py", run, source, "--output-dir", out, "--mistakes", "100")
        evaluated = json.loads((out / "metrics.json").read_text())
        for name in ("count", "map", "micro_f1", "macro_f1", "exact_match", "hamming_loss", "per_label",
                     "thresholds", "label_names"):
            assert evaluated[name] == expected[name], (source, name)
        assert evaluated["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        assert evaluated["split"] == "val" and f"mAP {expected['map']:.3f}" in result.stdout
        assert {"per_label_ap.png", "mistakes.png", "report.md"} <= {path.name for path in out.iterdir()}
    thresholds = dict(zip(expected["label_names"], expected["thresholds"]))
    mistakes = evaluated["mistakes"]
    # hamming loss = wrong (image, label) decisions / (images x labels): all of them are listed
    assert len(mistakes) == round(expected["hamming_loss"] * expected["count"] * len(MULTI_LABELS)) > 0
    for kind, wrong, descending in (("false positive", lambda m: m["label"] not in m["true"], True),
                                    ("false negative", lambda m: m["label"] in m["true"], False)):
        found = [m for m in mistakes if m["kind"] == kind]
        assert all(wrong(m) and (m["probability"] >= thresholds[m["label"]]) == descending for m in found)
        scores = [m["probability"] for m in found]
        assert scores == sorted(scores, reverse=descending)
    truth = _manifest_labels(data / "val.csv")
    assert all(sorted(m["true"]) == truth[Path(m["path"]).name] for m in mistakes)
    report = (out / "report.md").read_text()
    assert "| label | AP | precision | recall | F1 | threshold | support |" in report
    for name, scores in expected["per_label"].items():
        assert f"| {name} | {scores['ap']:.4f} |" in report
    first = mistakes[0]
    assert f"| {first['kind']} | {first['label']} | {first['probability']:.4f} |" in report


def _manifest_labels(path: Path) -> dict[str, list[str]]:
    import csv

    with open(path) as file:
        return {Path(row["image"]).name: sorted(row["labels"].split()) for row in csv.DictReader(file)}


def test_labelled_images_of_manifests_and_label_combination_folders(tmp_path):
    from finished_run import make_multi_label_manifests

    data = make_multi_label_manifests(tmp_path / "colours", per_split=(2, 8))
    split, images = find_labelled_images(data, list(MULTI_LABELS))
    assert split == "val" and len(images) == 8
    assert images[3] == (str(data / "val" / "3.jpg"), [0, 1])  # "red green"
    assert images[7] == (str(data / "val" / "7.jpg"), [])  # no label
    assert find_labelled_images(data / "val.csv", list(MULTI_LABELS)) == (split, images)
    folders = make_image_folder(tmp_path / "combinations", classes=("red_green", "blue"), per_class=(1,), splits=("",))
    assert find_labelled_images(folders, list(MULTI_LABELS), "_")[1] == [
        (str(folders / "blue" / "blue_0.jpg"), [2]), (str(folders / "red_green" / "red_green_0.jpg"), [0, 1])]
    with pytest.raises(UserError, match="class folder\\(s\\) red_green are not labels of the model \\(red, green, "):
        find_labelled_images(folders, list(MULTI_LABELS))
    with pytest.raises(UserError, match="val.csv: label\\(s\\) blue, green are not labels of the model \\(red\\)"):
        find_labelled_images(data, ["red"])
