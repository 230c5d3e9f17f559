"""A multi-label run end to end through scripts/finetune.py: a tiny CSV manifest of generated images whose
labels are the colour channels they show, trained 2 epochs; metrics.json holds mAP and F1 per epoch and the
epoch is selected on mAP."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import run_script
from finished_run import MULTI_LABEL_TRAINING, MULTI_LABELS, make_multi_label_manifests

LABELS = MULTI_LABELS
TRAINING = MULTI_LABEL_TRAINING


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, str]:
    """(run folder, data folder, the run's output) of one 2-epoch multi-label run, shared by this module."""
    root = tmp_path_factory.mktemp("multi-label")
    data = make_multi_label_manifests(root / "colours")
    result = run_script("finetune.py", *TRAINING, "--data-dir", data, "--output-dir", root / "run")
    return root / "run", data, result.stdout + result.stderr


@pytest.mark.slow
def test_multi_label_manifest_trains_with_map_per_epoch_and_selects_on_map(trained):
    run, data, output = trained
    assert "task: multi-label" in output
    metrics = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    for row in metrics["history"]:
        for key in ("eval_map", "eval_micro_f1", "eval_macro_f1", "eval_hamming_loss"):
            assert 0 <= row[key] <= 1, (key, row[key])
        assert set(row["eval_per_label"]) == set(LABELS)
        assert row["eval_count"] == 8
    selected = metrics["selected"]["selected"]
    assert selected["metric"] == "map"
    best = max(metrics["history"], key=lambda row: row["eval_map"])  # ties keep the earlier epoch
    assert selected["epoch"] == best["epoch"]
    run_config = json.loads((run / "run_config.json").read_text())
    assert run_config["task"] == "multi_label" and run_config["config"]["select_metric"] == "map"
    assert (run / "model.safetensors").is_file() and (run / "per_label_ap.png").is_file()
    _check_saved_thresholds_and_sigmoid_pipeline(run, metrics, data / "val" / "0.jpg")
    _check_card(run, metrics)


def _check_card(run: Path, metrics: dict) -> None:
    """The card's model-index reports mAP, micro-F1 and macro-F1 of the eval split; its per-label table has AP,
    F1, threshold and support; it says how the thresholds were chosen."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "README.md")
    reported = {(result.metric_name, result.dataset_split): result.metric_value
                for result in card.data.eval_results}
    evaluation = metrics["selected"]["eval"]
    assert reported == {("mAP", "val"): evaluation["map"], ("Micro F1", "val"): evaluation["micro_f1"],
                        ("Macro F1", "val"): evaluation["macro_f1"]}
    assert "| label | AP | precision | recall | F1 | threshold | support |" in card.text
    for name, scores in evaluation["per_label"].items():
        assert f"| {name} | {scores['ap']:.4f} |" in card.text
        assert f"| {scores['threshold']:.4f} | {scores['support']} |" in card.text
    assert "tuned per label to its best F1 on the `val` split" in card.text
    # the history's eval_acc / train_acc of a multi-label run are exact matches (subset accuracy): so named
    final = metrics["final"]
    assert f"| eval exact match | {final['eval_acc']:.4f} |" in card.text and "| train exact match |" in card.text
    assert "| epoch | train loss | train exact match | eval loss | eval exact match |" in card.text
    assert "accuracy |" not in card.text and "acc |" not in card.text
    assert "![Average precision per label on the val split](per_label_ap.png)" in card.text


def _check_saved_thresholds_and_sigmoid_pipeline(run: Path, metrics: dict, image: Path) -> None:
    """config.json keeps the thresholds tuned on the eval split for the saved weights, and tells transformers'
    pipeline to score with a sigmoid: its scores are the model's logits through a sigmoid, not a softmax."""
    import torch
    import transformers

    config = json.loads((run / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["thresholds"] == metrics["selected"]["eval"]["thresholds"]
    assert [row["threshold"] for row in metrics["selected"]["eval"]["per_label"].values()] == config["thresholds"]
    classify = transformers.pipeline("image-classification", model=str(run), top_k=None)
    scores = {row["label"]: row["score"] for row in classify(str(image))}
    processor = transformers.AutoImageProcessor.from_pretrained(run)
    model = transformers.AutoModelForImageClassification.from_pretrained(run).eval()
    from PIL import Image

    with torch.no_grad():
        logits = model(**processor(Image.open(image).convert("RGB"), return_tensors="pt")).logits
    expected = logits.sigmoid()[0].tolist()
    assert sorted(scores) == sorted(LABELS)
    for name, value in zip(config["label_names"], expected):
        assert abs(scores[name] - value) < 1e-3, (name, scores[name], value)
    assert abs(sum(scores.values()) - 1) > 1e-3  # not a softmax
    from hf_finetune.serve.predict import load_classifier, predict

    classifier = load_classifier(run)
    assert classifier.task.name == "multi_label" and classifier.task.thresholds == config["thresholds"]
    top = predict(classifier, [image], top_k=3)[0]
    assert abs(sum(score for _, score in top) - 1) > 1e-3 and all(0 < score < 1 for _, score in top)


@pytest.mark.slow
def test_threshold_flag_fixes_every_label_threshold(tmp_path):
    data = make_multi_label_manifests(tmp_path / "colours")
    run_script("finetune.py", *TRAINING, "--epochs", "1", "--threshold", "0.4", "--data-dir", data,
               "--output-dir", tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["thresholds"] == [0.4, 0.4, 0.4]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["selected"]["eval"]["thresholds"] == [0.4, 0.4, 0.4]


def test_each_task_resolves_its_own_default_select_metric():
    from conftest import resolved

    from hf_finetune.config import FinetuneConfig

    assert FinetuneConfig().select_metric is None
    assert resolved(FinetuneConfig(), task="single_label").select_metric == "eval_loss"
    assert resolved(FinetuneConfig(), task="multi-label").select_metric == "map"
    assert resolved(FinetuneConfig(select_metric="macro_f1"), task="multi-label").select_metric == "macro_f1"


@pytest.mark.slow
def test_predict_writes_labels_above_thresholds_and_onnx_agrees(trained, tmp_path):
    """predict.py's CSV and JSONL hold each image's labels at or above their thresholds (the top-k scores
    beside); the ONNX export, run with --onnx, gives the same scores and the same decisions."""
    import shutil

    import torch

    from hf_finetune.serve.predict import load_classifier

    run, data, _ = trained
    run = Path(shutil.copytree(run, tmp_path / "run"))
    images = sorted(str(path) for path in (data / "val").glob("*.jpg"))
    classifier = load_classifier(run)
    logits = torch.cat([classifier.model(classifier.transform(image).unsqueeze(0)) for image in images]).detach()
    scores = logits.sigmoid()
    thresholds = torch.tensor(classifier.task.thresholds)
    expected = [sorted((classifier.label_names[label] for label in torch.nonzero(row >= thresholds).reshape(-1)))
                for row in scores]
    run_script("predict.py", run, *images, "--top-k", "2", "--output", tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [sorted(row["predicted"]) for row in rows] == expected
    for row, image_scores in zip(rows, scores):
        assert len(row["labels"]) == 2 and all(score >= 0 for score in row["predicted_scores"])
        for label, score in zip(row["labels"], row["probabilities"]):
            assert abs(score - float(image_scores[classifier.label_names.index(label)])) < 1e-4
    run_script("predict.py", run, *images, "--output", tmp_path / "out.csv")
    with open(tmp_path / "out.csv") as file:
        table = list(csv.DictReader(file))
    assert [sorted(row["predicted"].split()) for row in table] == expected
    run_script("export.py", run, "--format", "onnx", "--check-images", *images[:2])
    config = json.loads((run / "preprocessor.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and config["thresholds"] == classifier.task.thresholds
    run_script("predict.py", run, *images, "--onnx", "--top-k", "3", "--output", tmp_path / "onnx.jsonl")
    onnx_rows = [json.loads(line) for line in (tmp_path / "onnx.jsonl").read_text().splitlines()]
    assert [sorted(row["predicted"]) for row in onnx_rows] == expected
    for row, image_scores in zip(onnx_rows, scores):
        for label, score in zip(row["labels"], row["probabilities"]):
            assert abs(score - float(image_scores[classifier.label_names.index(label)])) < 1e-4


@pytest.mark.slow
def test_multi_label_sigterm_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    """test_reliability's exact-resume test on a multi-label run, with its loss options (pos_weight, smoothing)
    and the regularizers that draw random numbers (RandAugment, drop path)."""
    from test_reliability import sigterm_mid_epoch_then_resume_matches_straight

    data = make_multi_label_manifests(tmp_path / "colours", per_split=(48, 8))  # 24 steps of 2 an epoch

    def argv(out):
        return ["--data-dir", str(data), "--model", "test_resnet", "--no-pretrained", "--batch-size", "2",
                "--num-workers", "0", "--img-size", "64", "--epochs", "2", "--momentum", "0.9", "--freeze-epochs",
                "0", "--label-smoothing", "0.1", "--class-weights", "balanced", "--auto-augment", "rand",
                "--drop-path", "0.1", "--output-dir", str(out)]

    sigterm_mid_epoch_then_resume_matches_straight(argv, tmp_path)
    straight, resumed = (json.loads((out / "metrics.json").read_text()) for out in (tmp_path / "straight",
                                                                                      tmp_path / "resumed"))
    assert [row["eval_map"] for row in straight["history"]] == [row["eval_map"] for row in resumed["history"]]
    assert straight["selected"]["eval"]["thresholds"] == resumed["selected"]["eval"]["thresholds"]


@pytest.mark.slow
def test_asl_run_trains_and_records_its_loss(tmp_path):
    """--loss asl trains (the training loss falls over 3 epochs) and is recorded: run_config.json and the card's
    hyper-parameter rows. The LR is given: d2l's at batch 8 (4e-4, the chapter's scaled to the batch) hardly moves
    a network from scratch in 12 steps, and its loss then rose with the augmentation's noise."""
    data = make_multi_label_manifests(tmp_path / "colours", per_split=(32, 8))
    run_script("finetune.py", *TRAINING, "--epochs", "3", "--img-size", "64", "--num-workers", "0", "--loss", "asl",
               "--lr", "0.05", "--data-dir", data, "--output-dir", tmp_path / "run")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"], [row["train_loss"] for row in history]
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["config"]["loss"] == "asl"
    assert "| loss | asymmetric loss (timm AsymmetricLossMultiLabel" in (tmp_path / "run" / "README.md").read_text()


@pytest.mark.slow
def test_mixup_and_cutmix_run_on_multi_label_data(tmp_path):
    """--mixup and --cutmix train a multi-label run (an odd last batch included: 17 images at batch 8) and the card
    says so."""
    data = make_multi_label_manifests(tmp_path / "colours", per_split=(17, 8))
    result = run_script("finetune.py", *TRAINING, "--img-size", "64", "--num-workers", "0", "--mixup", "0.2",
                        "--cutmix", "1.0", "--data-dir", data, "--output-dir", tmp_path / "run")
    assert "task: multi-label" in result.stdout + result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(0 < row["train_loss"] < 1 and 0 <= row["eval_map"] <= 1 for row in metrics["history"])
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| mixup / cutmix | mixup alpha 0.2, cutmix alpha 1 (timm Mixup" in card
