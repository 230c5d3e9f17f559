"""A finished run's --output-dir built by hand (tiny timm model, no training) for card/push/predict tests."""

from __future__ import annotations

from pathlib import Path

from hf_finetune.config import FinetuneConfig
from hf_finetune.files import write_json
from hf_finetune.model import create_classifier, save_classifier
from hf_finetune.plots import plot_confusion_matrix
from hf_finetune.report import library_versions, plot_training_curves

LABELS = ["hot dog", "not_hotdog", "taco|burrito"]  # a space and a `|` exercise the label table


def _epoch(epoch: int, eval_acc: float) -> dict:
    return {"epoch": epoch, "train_loss": 0.9 / epoch, "train_acc": 0.5 + 0.1 * epoch, "eval_loss": 0.8 / epoch,
            "eval_acc": eval_acc, "train_count": 24, "eval_count": 12, "examples_per_sec": 123.4 + epoch,
            "epoch_seconds": 1.5, "lr": {"backbone": 0.0064, "head": 0.064}}


def make_finished_run(output_dir: Path, model_name: str = "test_resnet", labels=LABELS, seed: int = 0,
                      command: list[str] | None = None, **run_extras) -> Path:
    import torch

    torch.manual_seed(seed)
    model, source = create_classifier(model_name, list(labels), pretrained=False)
    save_classifier(model, output_dir)
    history = [_epoch(1, 0.5833333333333334), _epoch(2, 0.9166666666666666)]
    metrics = {"history": history, "final": {**history[-1], "total_seconds": 3.0}, "devices": ["cpu"],
               "num_processes": 1, "selected": _selected_report(list(labels), history[-1]["eval_acc"])}
    config = FinetuneConfig(recipe="d2l", model=model_name, data_dir="/home/alice/photos/tiny",
                            output_dir=str(output_dir), epochs=2, batch_size=8, seed=seed).validate()
    run_config = {
        "config": config.to_dict(),
        "command": command or ["/home/alice/work/scripts/finetune.py", "--model", model_name,
                               "--data-dir", "/home/alice/photos/tiny", f"--output-dir={output_dir}",
                               "--epochs", "2", "--batch-size", "8"],
        "source": {"name": model_name, "architecture": source.architecture, "pretrained": False,
                   "hub_id": None, "tag": None, "license": None},
        "data": {"name": "tiny", "eval_split": "val", "train_size": 24, "eval_size": 12},
        "label_names": list(labels),
        "param_groups": [{"name": "backbone", "lr": 0.0064, "weight_decay": 7.8125e-06, "num_params": 1000},
                         {"name": "head", "lr": 0.064, "weight_decay": 7.8125e-06, "num_params": 30}],
        "num_processes": 1, "per_device_batch_size": 8, "mixed_precision": "no", "versions": library_versions(),
        **run_extras,
    }
    write_json(output_dir / "metrics.json", metrics)
    write_json(output_dir / "run_config.json", run_config)
    plot_training_curves(history, output_dir / "training_curves.png")
    evaluated = metrics["selected"]["eval"]
    plot_confusion_matrix(evaluated["confusion_matrix"], evaluated["label_names"], output_dir / "confusion_matrix.png")
    return output_dir


def _selected_report(labels: list[str], accuracy: float) -> dict:
    """metrics.json's "selected": what a run computes with metrics.ClassificationMetrics at its end (12 images)."""
    import torch

    from hf_finetune.metrics import ClassificationMetrics

    true = torch.arange(12) % len(labels)
    predicted = torch.where(torch.arange(12) < round(accuracy * 12), true, (true + 1) % len(labels))
    metrics = ClassificationMetrics(len(labels), labels)
    metrics.update(predicted, true)
    evaluated = {**metrics.compute(), "loss": 0.4}
    return {"selected": {"epoch": 2, "weights": "trained", "score": 0.4, "metric": "eval_loss",
                         "rule": "best eval_loss on the eval split"}, "eval": evaluated}
