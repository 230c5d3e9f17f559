"""Issue 12: exact metrics across processes, the best epoch saved, early stopping and EMA resumed exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TORCHRUN, make_image_folder, run_script
from safetensors.torch import load_file
from test_reliability import _signal_when_progress, _start

from hf_finetune.train.checkpoints import list_checkpoints


def _evaluate_with(processes: int) -> dict:
    launcher = [*TORCHRUN, str(processes)] if processes > 1 else [sys.executable]
    result = subprocess.run([*launcher, str(REPO_ROOT / "tests" / "eval_processes.py")], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = [line for line in result.stdout.splitlines() if line.startswith("METRICS ")]
    return json.loads(line[len("METRICS "):])


def test_engine_evaluate_gives_one_and_two_processes_the_same_numbers_to_the_bit():
    one, two = _evaluate_with(1), _evaluate_with(2)
    for mode in ("plain", "tta"):
        assert one[mode]["count"] == 20 and sum(map(sum, one[mode]["confusion_matrix"])) == 20
        assert one[mode]["top5"] is not None and one[mode]["loss"] > 0
    assert one == two  # every key: counts, loss (exactly rounded sums), per-class, confusion matrix


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture
def photos(tmp_path):
    # Six classes whose colours repeat (a/d, b/e, c/f): learnable in part, so the eval loss moves both ways.
    return make_image_folder(tmp_path / "photos", classes=tuple("abcdef"), per_class=(8, 4))


def _argv(photos, out, *extra):
    return ["--data-dir", photos, "--model", "test_resnet", "--no-pretrained", "--img-size", "64", "--batch-size",
            "8", "--num-workers", "0", "--mixed-precision", "no", "--output-dir", out, *map(str, extra)]


def test_the_saved_model_is_the_best_epochs_and_save_last_keeps_the_last(photos, tmp_path):
    # A high learning rate on every layer: the eval loss is best early and worse at the end, so best and last differ.
    # (--freeze-epochs 1 --freeze-bn: the lp-ft recipe's values, which a random backbone no longer gets by default;
    # --calibrate none: the saved weights are compared with the checkpoints' bit for bit.)
    common = ("--epochs", "3", "--lr", "0.05", "--layer-decay", "1", "--keep-checkpoints", "0", "--freeze-epochs",
              "1", "--freeze-bn", "--calibrate", "none")
    result = run_script("finetune.py", *_argv(photos, tmp_path / "best", *common, "--report-to", "tensorboard"))
    metrics = _metrics(tmp_path / "best")
    _check_tracker_scalars(tmp_path / "best", metrics["history"])
    losses = [row["eval_loss"] for row in metrics["history"]]
    best = losses.index(min(losses)) + 1
    assert best != len(losses), f"the settings no longer make the last epoch worse: {losses}"
    assert metrics["final"]["selected_epoch"] == best and metrics["final"]["selected_weights"] == "trained"
    assert f"saved: epoch {best}, trained weights (best eval_loss on the eval split)" in result.stdout
    checkpoints = list_checkpoints(tmp_path / "best")
    saved = load_file(tmp_path / "best" / "model.safetensors")
    chosen = load_file(checkpoints[best - 1] / "model.safetensors")
    assert all(torch.equal(saved[key], chosen[key]) for key in chosen)
    # The selected weights re-evaluated at the end give the epoch's numbers to the bit.
    row, final = metrics["history"][best - 1], metrics["final"]
    for key in ("eval_loss", "eval_acc", "eval_macro_f1", "eval_balanced_accuracy", "eval_top5", "eval_per_class"):
        assert final[key] == row[key], key
    evaluated = metrics["selected"]["eval"]
    assert sum(map(sum, evaluated["confusion_matrix"])) == evaluated["count"] == 24
    assert (tmp_path / "best" / "confusion_matrix.png").stat().st_size > 1000
    assert [p.name for p in (checkpoints[0].parent).glob("best-epoch-*")] == [f"best-epoch-{best:04d}"]

    run_script("finetune.py", *_argv(photos, tmp_path / "last", *common, "--save-last"))
    last = load_file(list_checkpoints(tmp_path / "last")[-1] / "model.safetensors")
    saved = load_file(tmp_path / "last" / "model.safetensors")
    assert all(torch.equal(saved[key], last[key]) for key in last)
    assert _metrics(tmp_path / "last")["final"]["selected_epoch"] == 3


def _check_tracker_scalars(out: Path, history: list[dict]) -> None:
    """The tracker got every epoch's scalar metrics (and no per-class dicts or None values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Accelerate's tensorboard tracker writes the run's hyperparameters into an event file of their own.
    files = [EventAccumulator(str(path)).Reload() for path in out.rglob("events.out.tfevents*")]
    [logged] = [events for events in files if "eval_loss" in events.Tags()["scalars"]]
    tags = set(logged.Tags()["scalars"])
    assert {"eval_loss", "eval_acc", "eval_macro_f1", "eval_balanced_accuracy", "eval_top5"} <= tags
    assert not any("per_class" in tag for tag in tags)
    assert [event.value for event in logged.Scalars("eval_macro_f1")] == pytest.approx(
        [row["eval_macro_f1"] for row in history], rel=1e-6)  # tensorboard stores float32


def test_early_stopping_with_ema_resumes_to_the_same_stop_and_the_same_ema_weights(photos, tmp_path):
    """SIGTERM in epoch 1, then the same command: it stops at the epoch an uninterrupted run stops at, with the
    same history, the same saved weights and a bitwise identical EMA. --min-delta 100 makes every epoch after
    the first no improvement, so --patience 1 stops after epoch 2 of 5."""
    extra = ("--epochs", "5", "--patience", "1", "--min-delta", "100", "--model-ema", "--ema-decay", "0.9",
             "--momentum", "0.9", "--batch-size", "4", "--calibrate", "none")  # saved = checkpoint, bit for bit
    straight = run_script("finetune.py", *_argv(photos, tmp_path / "straight", *extra))
    assert "early stopping: no eval_loss improvement > 100 for 1 epoch(s); best epoch 1" in straight.stdout
    assert [row["epoch"] for row in _metrics(tmp_path / "straight")["history"]] == [1, 2]
    assert "ema_eval_loss" in _metrics(tmp_path / "straight")["history"][0]

    interrupted = _start(list(map(str, _argv(photos, tmp_path / "resumed", *extra))))
    stderr = _signal_when_progress(interrupted, batches=2)
    assert interrupted.returncode == 75, stderr[-2000:]
    # Mid-epoch (12 batches an epoch): the resume goes on inside epoch 1, from that batch on.
    [checkpoint] = list_checkpoints(tmp_path / "resumed")
    assert checkpoint.name.startswith("epoch-0000-step-"), checkpoint.name
    resumed = run_script("finetune.py", *_argv(photos, tmp_path / "resumed", *extra))
    assert "resumed from" in resumed.stdout and "epoch 3:" not in resumed.stdout

    a, b = _metrics(tmp_path / "straight"), _metrics(tmp_path / "resumed")
    keys = ("epoch", "train_loss", "train_acc", "eval_loss", "eval_acc", "eval_macro_f1", "ema_eval_loss",
            "ema_eval_acc")
    assert [{k: row[k] for k in keys} for row in a["history"]] == [{k: row[k] for k in keys} for row in b["history"]]
    assert a["selected"]["selected"] == b["selected"]["selected"]
    for name, first, second in [("model.safetensors", tmp_path / "straight", tmp_path / "resumed"),
                                ("ema.safetensors", *(list_checkpoints(tmp_path / run)[-1]
                                                      for run in ("straight", "resumed")))]:
        x, y = load_file(first / name), load_file(second / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    # The saved model is epoch 1's selected weights: the trained ones or their EMA, whichever scored better.
    first = list_checkpoints(tmp_path / "straight")[0]
    assert first.name == "epoch-0001-step-000000"
    selected = a["final"]["selected_weights"]
    x, y = load_file(tmp_path / "straight" / "model.safetensors"), load_file(
        first / ("ema.safetensors" if selected == "ema" else "model.safetensors"))
    assert all(torch.equal(x[k], y[k]) for k in y), selected
    # Run once more: the early-stopped run is finished, nothing trains.
    again = run_script("finetune.py", *_argv(photos, tmp_path / "resumed", *extra))
    assert "already holds this finished run" in again.stdout and "epoch 3:" not in again.stdout


def test_val_and_test_splits_both_reported_carded_and_pushed(tmp_path, hub, hub_env):
    """val selects the epoch, test scores the selected model; the card labels both, its model-index parses back
    with huggingface_hub into EvalResults for both splits, and survives the push to the local Hub."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    photos = make_image_folder(tmp_path / "photos", classes=tuple("abcde"), per_class=(6, 3, 4),
                               splits=("train", "val", "test"))
    out = tmp_path / "out"
    result = run_script("finetune.py", *_argv(photos, out, "--epochs", "2", "--tta", "flip", "--push-to-hub",
                                               "tester/selected"), env=hub_env)
    assert "30 train / 15 val / 20 test images" in result.stdout
    report = _metrics(out)["selected"]
    assert (report["eval"]["count"], report["test"]["count"]) == (15, 20)
    assert {"eval_tta", "test_tta"} <= set(report) and report["test_tta"]["count"] == 20
    pushed = hub.files("tester/selected")
    assert {"confusion_matrix.png", "README.md", "model.safetensors"} <= set(pushed)
    card = ModelCard(pushed["README.md"].decode())
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    found = {(r.dataset_split, r.metric_name): r.metric_value for r in results}
    for split, key in (("val", "eval"), ("test", "test")):
        assert found[(split, "Accuracy")] == report[key]["accuracy"]
        assert found[(split, "Macro F1")] == report[key]["macro_f1"]
        assert found[(split, "Top-5 Accuracy")] == report[key]["top5"] == 1.0  # 5 classes: always in the top 5
    assert len(results) == 6
    text = card.text
    assert "on the `val` split, which therefore helped choose it; the `test` split did not." in text
    assert "| metric | val | val + flip TTA | test | test + flip TTA |" in text
    assert f"| accuracy | {report['eval']['accuracy']:.4f} | {report['eval_tta']['accuracy']:.4f} |" in text
    assert "Per class, on the `test` split:" in text and "![Confusion matrix on the test split]" in text
    per_class = report["test"]["per_class"]["a"]
    assert f"| a | {per_class['precision']:.4f} | {per_class['recall']:.4f} | {per_class['f1']:.4f} | 4 |" in text

    # scripts/evaluate.py reproduces the run's numbers: from the folder on the tree (its val split), from the Hub
    # id on the test split with flip TTA. Counts exact; the loss is the same sum of the same per-image losses up
    # to the batch composition's float rounding (1e-6 relative).
    for model, data, key, extra in ((out, photos, "eval", []), ("tester/selected", photos / "test", "test_tta",
                                                                  ["--tta", "flip"])):
        run_script("evaluate.py", model, data, "--output-dir", tmp_path / key, *extra, env=hub_env)
        evaluated = json.loads((tmp_path / key / "metrics.json").read_text())
        expected = report[key]
        for name in ("count", "accuracy", "macro_f1", "balanced_accuracy", "top5", "per_class", "confusion_matrix"):
            assert evaluated[name] == expected[name], (key, name)
        assert evaluated["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        assert (tmp_path / key / "mistakes.png").is_file() and (tmp_path / key / "confusion_matrix.png").is_file()
    assert evaluated["split"] == "test" and evaluated["tta"] == "flip"


def test_evaluate_names_unknown_class_folders_and_skips_unreadable_images(tmp_path):
    from finished_run import LABELS, make_finished_run

    run = make_finished_run(tmp_path / "run")
    photos = make_image_folder(tmp_path / "photos", classes=tuple(LABELS), per_class=(3,), splits=("",))
    (photos / LABELS[0] / "broken.jpg").write_bytes(b"not a jpeg")
    result = run_script("evaluate.py", run, photos, "--output-dir", tmp_path / "ev")
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert evaluated["count"] == 9 and [bad["path"] for bad in evaluated["unreadable"]] == [
        str(photos / LABELS[0] / "broken.jpg")]
    assert "skipping" in result.stderr and "1 unreadable image(s) skipped" in result.stdout
    assert len(evaluated["mistakes"]) == 9 - round(evaluated["accuracy"] * 9)
    (photos / "sandwich").mkdir()
    (photos / "sandwich" / "a.jpg").write_bytes((photos / LABELS[1] / f"{LABELS[1]}_0.jpg").read_bytes())
    failed = run_script("evaluate.py", run, photos, "--output-dir", tmp_path / "ev2", check=False)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith("error: ") and "class folder(s) sandwich are not labels" \
        in failed.stderr



def test_two_process_training_evaluation_equals_one_process_evaluate_script(tmp_path):
    """The metrics a 2-process run computes (gathered, padding dropped) equal one process scoring the same selected
    weights with scripts/evaluate.py, in batches of the run's 4 per process: 13 eval images leave rank 1 a
    padded last batch."""
    photos = make_image_folder(tmp_path / "photos", classes=tuple("abcde"), per_class=(4, 3),
                               splits=("train", "val"))
    (photos / "val" / "a" / "a_2.jpg").unlink()
    (photos / "val" / "b" / "b_2.jpg").unlink()
    out = tmp_path / "out"
    # Early stopping too: both ranks leave the loop after epoch 2 of 3 (a rank stopping alone would hang).
    result = run_script("finetune.py", *_argv(photos, out, "--epochs", "3", "--tta", "flip", "--patience", "1",
                                              "--min-delta", "100"), processes=2, timeout=600)
    metrics = _metrics(out)
    assert metrics["num_processes"] == 2 and metrics["history"][0]["eval_count"] == 13
    assert [row["epoch"] for row in metrics["history"]] == [1, 2] and "early stopping" in result.stdout
    assert metrics["final"]["selected_epoch"] == 1
    for key, extra in (("eval", []), ("eval_tta", ["--tta", "flip"])):
        run_script("evaluate.py", out, photos / "val", "--batch-size", "4", "--output-dir", tmp_path / key, *extra)
        alone, expected = json.loads((tmp_path / key / "metrics.json").read_text()), metrics["selected"][key]
        for name in ("count", "accuracy", "macro_f1", "balanced_accuracy", "top5", "per_class", "confusion_matrix"):
            assert alone[name] == expected[name], (key, name)
        assert alone["loss"] == pytest.approx(expected["loss"], rel=1e-6)


def _select(progress, epoch, trained, ema=None, **config):
    from types import SimpleNamespace

    from hf_finetune.tasks.single_label import SingleLabel
    from hf_finetune.train.selection import select_epoch

    settings = {"select_metric": "accuracy", "min_delta": 0.0, "patience": None, **config}
    parts = SimpleNamespace(config=SimpleNamespace(**settings), accelerator=SimpleNamespace(num_processes=1),
                            task=SingleLabel(["cat", "dog"]))
    results = {"trained": {"accuracy": trained, "loss": 1 - trained}}
    if ema is not None:
        results["ema"] = {"accuracy": ema, "loss": 1 - ema}
    return select_epoch(parts, progress, epoch, results)


def test_selection_picks_the_better_weights_keeps_ties_and_counts_patience():
    from hf_finetune.train.checkpoints import TrainingProgress

    progress = TrainingProgress()
    assert _select(progress, 1, 0.5, ema=0.6, patience=2)
    assert progress.best == {"epoch": 1, "score": 0.6, "weights": "ema"}
    assert not _select(progress, 2, 0.6, ema=0.6, patience=2)  # a tie is no improvement: the earlier epoch stays
    assert progress.epochs_without_improvement == 1 and not progress.stopped_early
    assert _select(progress, 3, 0.7, ema=0.7, patience=2)  # trained and EMA tie: the trained weights
    assert progress.best["weights"] == "trained" and progress.epochs_without_improvement == 0
    assert not _select(progress, 4, 0.75, patience=2, min_delta=0.1)  # better, but not by more than min_delta
    assert not _select(progress, 5, 0.75, patience=2, min_delta=0.1)
    assert progress.stopped_early and progress.best["epoch"] == 3
    restored = TrainingProgress()
    restored.load_state_dict(json.loads(json.dumps(progress.state_dict())))  # as a checkpoint stores it
    assert (restored.best, restored.epochs_without_improvement, restored.stopped_early) == (
        progress.best, 2, True)
    lower = TrainingProgress()  # eval_loss: lower is better
    assert _select(lower, 1, 0.5, select_metric="eval_loss") and lower.best["score"] == 0.5
    assert _select(lower, 2, 0.6, select_metric="eval_loss") and lower.best["score"] == pytest.approx(0.4)



def test_two_process_ema_score_is_the_saved_emas_with_batchnorm_statistics_trained(tmp_path):
    """The d2l recipe trains BatchNorm statistics, so each rank's EMA averages its own; the EMA score recorded for
    an epoch must be that of the EMA weights the checkpoint saves (rank 0's), as one process scores them alone."""
    photos = make_image_folder(tmp_path / "photos", per_class=(16, 5))
    out = tmp_path / "out"
    run_script("finetune.py", *_argv(photos, out, "--recipe", "d2l", "--epochs", "1", "--model-ema",
                                     "--ema-decay", "0.5", "--keep-checkpoints", "1"), processes=2, timeout=600)
    recorded = _metrics(out)["history"][0]
    ema_model = tmp_path / "ema_model"
    ema_model.mkdir()
    (ema_model / "config.json").write_bytes((out / "config.json").read_bytes())
    (ema_model / "model.safetensors").write_bytes((list_checkpoints(out)[-1] / "ema.safetensors").read_bytes())
    run_script("evaluate.py", ema_model, photos / "val", "--batch-size", "4", "--output-dir", tmp_path / "ev")
    alone = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert alone["count"] == recorded["ema_eval_count"] == 10
    assert alone["loss"] == pytest.approx(recorded["ema_eval_loss"], rel=1e-6)
    assert alone["accuracy"] == recorded["ema_eval_acc"]
