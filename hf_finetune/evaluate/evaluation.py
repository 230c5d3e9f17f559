"""Evaluate a saved model (a run's output folder or a Hub id) on a class-per-folder tree, as training evaluates.

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

from hf_finetune.serve.batch_predict import Failure, TorchRunner, crop_or_failure, is_image_name
from hf_finetune.config import EVAL_SPLIT_NAMES
from hf_finetune.errors import UserError
from hf_finetune.hardware import available_cpus, one_thread
from hf_finetune.serve.predict import Classifier

SPLIT_FOLDERS = ("train", *EVAL_SPLIT_NAMES)
OUTPUT_FILES = ("metrics.json", "confusion_matrix.png", "mistakes.png")  # what scripts/evaluate.py writes


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


def find_labelled_images(data: Path, label_names: list[str]) -> tuple[str, list[tuple[str, int]]]:
    """(the split evaluated, [(path, label index)]) of DATA: a tree with split folders (its first eval split,
    as training picks it) or one split's class folders. Class folders the model does not know are an error."""
    if not data.is_dir():
        raise UserError(f"{data}: no such folder; give a class-per-folder tree (DATA/<class>/*.jpg) or its root")
    folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    names = {p.name for p in folders}
    if names & set(SPLIT_FOLDERS) and not names & set(label_names):
        split = next((name for name in EVAL_SPLIT_NAMES if name in names), None)
        if split is None:
            raise UserError(f"{data} has no {'/'.join(EVAL_SPLIT_NAMES)} folder to evaluate; name one split's folder")
        return split, find_labelled_images(data / split, label_names)[1]
    unknown = sorted(names - set(label_names))
    if unknown:
        raise UserError(f"{data}: class folder(s) {', '.join(unknown)} are not labels of the model "
                        f"({', '.join(label_names)}); remove them or evaluate a model trained on them")
    images = [(str(path), label_names.index(folder.name)) for folder in folders
              for path in sorted(folder.rglob("*")) if path.is_file() and is_image_name(path)]
    if not images:
        raise UserError(f"{data}: no images in class folders")
    return data.name, images


def evaluate_folder(classifier: Classifier, data: Path, tta: bool = False, batch_size: int = 32,
                    mistakes: int = 16, mixed_precision: str = "no") -> dict:
    """The task's metrics on DATA, plus "split", "tta", "unreadable" ([{path, reason}]) and
    "mistakes" ([{path, true, predicted, probability}] most confident first). `mixed_precision` "bf16"/"fp16":
    the forward under that autocast, as a run with that precision evaluated (its run_config.json says which)."""
    runner = TorchRunner(classifier)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    autocast = torch.autocast(runner.device.type, dtype=dtype, enabled=dtype is not None)
    split, images = find_labelled_images(Path(data), runner.label_names)
    task = runner.task
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
            batch, labels = torch.stack([crop for _, crop in good]), torch.tensor([label for (_, label), _ in good])
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


def _mistakes(kept: list[tuple[str, int]], probabilities: torch.Tensor, task, k: int) -> list:
    labels = torch.tensor([label for _, label in kept])
    names = task.label_names
    return [{"path": kept[index][0], "true": names[kept[index][1]], "predicted": names[predicted],
             "probability": probability}
            for index, predicted, probability in task.confident_mistakes(probabilities, labels, k)]


def plot_mistake_grid(mistakes: list[dict], classifier: Classifier, path: Path) -> None:
    """mistakes.png: the eval crops the model saw, titled with the true and predicted labels."""
    from hf_finetune.evaluate.mistakes import plot_mistakes

    images = [classifier.transform.crop(item["path"]).permute(1, 2, 0).numpy() for item in mistakes]
    plot_mistakes(images, [m["true"] for m in mistakes], [m["predicted"] for m in mistakes],
                  [m["probability"] for m in mistakes], path)


def describe(result: dict, task, unreadable: Optional[int] = None) -> str:
    skipped = len(result["unreadable"]) if unreadable is None else unreadable
    return (f"{result['split']}: {result['count']} images{' (+flip TTA)' if result['tta'] == 'flip' else ''}: "
            f"{task.summary_line(result)}" + (f"; {skipped} unreadable image(s) skipped" if skipped else ""))
