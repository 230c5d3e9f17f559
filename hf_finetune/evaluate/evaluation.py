"""Evaluate a saved model (a run's output folder or a Hub id) on labelled images (a class-per-folder tree or a
manifest: evaluate/labelled.py), as training evaluates.

Images are decoded and cropped by `preprocess.EvalPreprocess` (training's eval decode and transform), scored
with the model's task (its losses, metrics and TTA merge, as training scores them), optionally with flip TTA,
so a run's selected-epoch numbers are reproduced. Unreadable images are reported, skipped and counted.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import torch

from hf_finetune.errors import UserError
from hf_finetune.evaluate.labelled import find_labelled_images
from hf_finetune.hardware import available_cpus, one_thread
from hf_finetune.serve.batch_predict import Failure, TorchRunner, crop_or_failure
from hf_finetune.serve.predict import Classifier

# what scripts/evaluate.py writes (a single-label model a confusion matrix, a multi-label one per-label APs)
OUTPUT_FILES = ("metrics.json", "confusion_matrix.png", "per_label_ap.png", "mistakes.png", "report.md")


def check_output_dir(output_dir: Path, overwrite: bool = False) -> None:
    """Refuse, before evaluating, to write over files an earlier evaluation did not make there: a run's
    metrics.json and confusion matrix (`--output-dir RUN`), which its card and a later push need."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output-dir {output_dir} is a file: name a folder")
    present = [name for name in OUTPUT_FILES if (output_dir / name).exists()]
    if not present or overwrite or _is_evaluation(output_dir / "metrics.json"):
        return
    raise UserError(f"{output_dir} holds {', '.join(present)} that no evaluation wrote (a training run's?): "
                    "choose another --output-dir, or pass --overwrite to replace them")


def _is_evaluation(metrics: Path) -> bool:
    """metrics.json as evaluate_folder writes it ("unreadable" and "mistakes"; a run's has "history")."""
    try:
        record = json.loads(metrics.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"unreadable", "mistakes"} <= set(record) and "history" not in record


def evaluate_folder(classifier: Classifier, data: Path, tta: bool = False, batch_size: int = 32,
                    mistakes: int = 16, mixed_precision: str = "no", label_delimiter: Optional[str] = None) -> dict:
    """The task's metrics on DATA, plus "split", "tta", "unreadable" ([{path, reason}]) and "mistakes" (the task's
    most confident ones, `Task.confident_mistakes`, each with its image's path). `mixed_precision` "bf16"/"fp16":
    the forward under that autocast, as a run with that precision evaluated (its run_config.json says which)."""
    runner = TorchRunner(classifier)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    autocast = torch.autocast(runner.device.type, dtype=dtype, enabled=dtype is not None)
    task = runner.task
    split, images = find_labelled_images(Path(data), runner.label_names, label_delimiter)
    images = [(path, _target(task, indices, path)) for path, indices in images]
    metrics = task.create_metrics()
    unreadable, kept, probabilities = [], [], []
    with ThreadPoolExecutor(available_cpus()) as pool:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            with one_thread():  # per-image work on one thread each, as in the eval loader
                crops = list(pool.map(lambda item: crop_or_failure(runner.transform, item[0]), chunk))
            unreadable += [{"path": crop.path, "reason": crop.reason} for crop in crops if isinstance(crop, Failure)]
            good = [(item, crop) for item, crop in zip(chunk, crops) if not isinstance(crop, Failure)]
            if not good:
                continue
            batch = torch.stack([crop for _, crop in good])
            labels = torch.stack([torch.as_tensor(label) for (_, label), _ in good])
            with autocast:
                logits = runner.logits(batch)
                if tta:  # as tta.flip_tta_logits
                    logits = task.merge_tta(logits, runner.logits(batch.flip(-1)))
            metrics.update(logits, labels, task.eval_losses(logits, labels))
            kept += [item for item, _ in good]
            probabilities.append(task.probabilities(logits))
    if not kept:
        raise UserError(f"{data}: none of the {len(images)} images could be read")
    return {**metrics.compute(), "split": split, "tta": "flip" if tta else "none", "mixed_precision": mixed_precision,
            "unreadable": unreadable,
            "mistakes": _mistakes(kept, torch.cat(probabilities), task, mistakes)}


def _target(task, indices: list[int], path: str):
    """An image's label indices as the task's target: the class index (single-label: exactly one label), or what
    the task's label_encoder makes of them (multi-label: a multi-hot vector), as the loaders do."""
    if task.label_encoder is not None:
        return task.label_encoder(indices)
    if len(indices) != 1:
        raise UserError(f"{path}: {len(indices)} labels, but the model is single-label (one class per image)")
    return indices[0]


def _mistakes(kept: list[tuple[str, object]], probabilities: torch.Tensor, task, k: int) -> list:
    labels = torch.stack([torch.as_tensor(label) for _, label in kept])
    return [{"path": kept[mistake.pop("index")][0], **mistake}
            for mistake in task.confident_mistakes(probabilities, labels, k)]


def plot_mistake_grid(mistakes: list[dict], classifier: Classifier, path: Path) -> None:
    """mistakes.png: the eval crops the model saw, each captioned by the task (what was wrong, how sure)."""
    from hf_finetune.evaluate.mistakes import plot_mistakes

    images = [classifier.transform.crop(item["path"]).permute(1, 2, 0).numpy() for item in mistakes]
    plot_mistakes(images, [classifier.task.mistake_caption(mistake) for mistake in mistakes], path)


def describe(result: dict, task, unreadable: Optional[int] = None) -> str:
    skipped = len(result["unreadable"]) if unreadable is None else unreadable
    return (f"{result['split']}: {result['count']} images{' (+flip TTA)' if result['tta'] == 'flip' else ''}: "
            f"{task.summary_line(result)}" + (f"; {skipped} unreadable image(s) skipped" if skipped else ""))
