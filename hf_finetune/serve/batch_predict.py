"""Prediction over many files: inputs expanded from files, folders and globs, decoded on threads, batched,
run by PyTorch (on the best device) or onnxruntime, optionally with horizontal-flip test-time augmentation.

Decoding and the eval crop are training's evaluation's (preprocess.EvalPreprocess). An unreadable file is
reported with its reason and skipped; the others are predicted.
"""

from __future__ import annotations

import glob
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from hf_finetune.data.folders import IMAGE_EXTENSIONS
from hf_finetune.hardware import available_cpus, one_thread
from hf_finetune.data.images import BadImageError
from hf_finetune.serve.predict import Classifier
from hf_finetune.serve.preprocess import EvalPreprocess
from hf_finetune.tasks import Task


@dataclass
class Failure:
    path: str
    reason: str


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (label, score), most likely first: the task's top_labels
    decided: Optional[list[tuple[str, float]]] = None  # multi-label: the labels above their thresholds


@dataclass
class TorchRunner:
    """A Classifier's model on `device`: uint8 crops in, logits out."""

    classifier: Classifier
    device: torch.device = field(default_factory=lambda: best_device())

    def __post_init__(self):
        self.classifier.model.to(self.device)

    @property
    def transform(self) -> EvalPreprocess:
        return self.classifier.transform

    @property
    def label_names(self) -> list[str]:
        return self.classifier.label_names

    @property
    def task(self) -> Task:
        return self.classifier.task

    def logits(self, crops: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.classifier.model(self.transform.normalize(crops.to(self.device))).float().cpu()


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[Failure]]:
    """Image files named by `inputs` (files; folders, recursively; globs), in order, each once; and the
    inputs that named nothing."""
    found, missing, seen = [], [], set()
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            matches = sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_name(p))
        elif path.exists():
            matches = [given]  # named explicitly: tried whatever its extension
        else:
            matches = sorted(p for p in glob.glob(given, recursive=True) if Path(p).is_file() and is_image_name(p))
        if not matches:
            missing.append(Failure(given, "no such file, or no images in that folder or pattern"))
        for match in matches:
            if match not in seen:
                seen.add(match)
                found.append(match)
    return found, missing


def is_image_name(path) -> bool:
    name = Path(path).name
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def predict_files(runner, paths: Sequence[str], batch_size: int = 32, top_k: int = 5, tta: Optional[str] = None,
                  progress: bool = True) -> Iterator[Prediction | Failure]:
    """Per file, in order, its Prediction or its Failure. `runner`: TorchRunner or onnx_model.OnnxClassifier."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(paths), unit="img", disable=not progress or len(paths) <= batch_size, leave=False)
    # JPEG decoding and torch's uint8 resize release the GIL: a thread per core decodes a batch in parallel.
    with ThreadPoolExecutor(available_cpus()) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            with one_thread():  # per-image work on one thread each, as in the eval loader
                crops = list(pool.map(lambda path: crop_or_failure(runner.transform, path), chunk))
            good = [(path, crop) for path, crop in zip(chunk, crops) if not isinstance(crop, Failure)]
            results = iter(_classify(runner, [crop for _, crop in good], top_k, tta) if good else [])
            for path, crop in zip(chunk, crops):
                yield crop if isinstance(crop, Failure) else Prediction(path, *next(results))
            bar.update(len(chunk))
    bar.close()


def crop_or_failure(transform: EvalPreprocess, path: str):
    try:
        return transform.crop(path)
    except BadImageError as error:
        return Failure(path, str(error))


def _classify(runner, crops: list[torch.Tensor], top_k: int, tta: Optional[str]) -> list[tuple[list, Optional[list]]]:
    """Per crop: its top-k (label, score) pairs and the task's decided labels (None for single-label)."""
    batch = torch.stack(crops)
    logits = runner.logits(batch)
    if tta == "flip":  # as tta.flip_tta_logits
        logits = runner.task.merge_tta(logits, runner.logits(batch.flip(-1)))
    decided = runner.task.decided_labels(logits) or [None] * len(crops)
    return list(zip(runner.task.top_labels(logits, top_k), decided))


def write_predictions(path: Path, predictions: list[Prediction], top_k: int) -> None:
    """CSV (path, label_1, probability_1, ...) or JSON lines ({"path", "labels", "probabilities"}), by suffix; a
    multi-label model's rows add its decided labels: "predicted" (space-separated in CSV, as a manifest's
    labels) and, in JSONL, "predicted_scores"."""
    import csv
    import io
    import json

    from hf_finetune.files import write_text

    if path.suffix == ".jsonl":
        text = "".join(json.dumps({"path": p.path, "labels": [label for label, _ in p.top],
                                   "probabilities": [probability for _, probability in p.top], **_decided(p)}) + "\n"
                       for p in predictions)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        columns = max((len(p.top) for p in predictions), default=top_k)  # top_k, or every label when fewer
        decided = any(p.decided is not None for p in predictions)
        writer.writerow(["path"] + (["predicted"] if decided else []) + [
            f"{column}_{rank}" for rank in range(1, columns + 1) for column in ("label", "probability")])
        for p in predictions:
            cells = [value for label, probability in p.top for value in (label, f"{probability:.6f}")]
            writer.writerow([p.path] + ([" ".join(label for label, _ in p.decided or [])] if decided else []) + cells)
        text = buffer.getvalue()
    write_text(path, text)



def _decided(prediction: Prediction) -> dict:
    if prediction.decided is None:
        return {}
    return {"predicted": [label for label, _ in prediction.decided],
            "predicted_scores": [score for _, score in prediction.decided]}
