"""`scripts/export.py RUN --format onnx --quantize int8`: model.int8.onnx beside model.onnx, kept only if it agrees.

onnxruntime's static quantization (QDQ format, int8 weights per output channel, uint8 activations) calibrated
on a few hundred of the run's training images, decoded and cropped by the model's own preprocessing
(preprocessor.json through serve/preprocess.py, as `--onnx` prediction feeds it). The int8 model is then run
beside the fp32 one on the run's whole eval split: it is kept only if the two agree on the top-1 label of at
least MIN_AGREEMENT of the images, or, for a multi-label model, if its mAP is at most MAX_MAP_DROP below the
fp32 model's (top-1 agreement means nothing there; the share of images whose decided labels are all the same is
reported beside). `model.int8.json` records the agreement, both accuracies (or mAPs) and the calibration.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from hf_finetune.errors import UserError, first_line
from hf_finetune.files import write_json
from hf_finetune.hardware import available_cpus, one_thread
from hf_finetune.tasks import MULTI_LABEL
from hf_finetune.serve.onnx_model import (INT8_FILE, INT8_RECORD, ONNX_FILE, OnnxClassifier, inference_session,
                                          load_onnx_classifier)

Labels = Union[str, list[str]]  # an image's class folder name, or a manifest row's label names

# Top-1 agreement with the fp32 model on the eval split below which the int8 model is not kept: at most 2 images
# in 100 may change their label, so the accuracy moves by at most 2 points (the goal is 1; measured: BENCHMARKS.md).
MIN_AGREEMENT = 0.98
# Multi-label: the int8 eval mAP may be at most 1 point (absolute) below the fp32 one, the accuracy goal.
MAX_MAP_DROP = 0.01
CALIBRATION_IMAGES = 300
BATCH_SIZE = 32


@dataclass
class QuantizeResult:
    int8_path: Path
    # share of eval images whose top-1 label (multi-label: whose every decision) is the same in fp32 and int8
    agreement: float
    eval_images: int
    calibration_images: int
    fp32_accuracy: Optional[float]  # against the eval split's folder labels, when they are the model's labels
    int8_accuracy: Optional[float]
    min_agreement: float = MIN_AGREEMENT
    fp32_map: Optional[float] = None  # multi-label: eval mAP of each, and the rule that keeps int8
    int8_map: Optional[float] = None
    max_map_drop: Optional[float] = None

    @property
    def kept(self) -> bool:
        if self.max_map_drop is not None:
            return self.fp32_map - self.int8_map <= self.max_map_drop
        return self.agreement >= self.min_agreement

    def summary(self) -> str:
        """What the check found, against what it required."""
        if self.max_map_drop is not None:
            return (f"eval mAP fp32 {self.fp32_map:.4f}, int8 {self.int8_map:.4f} (required: at most "
                    f"{self.max_map_drop * 100:g} point below fp32); every decision agrees on {self.agreement:.1%} "
                    f"of {self.eval_images} eval images")
        accuracy = (f"; eval accuracy fp32 {self.fp32_accuracy:.4f}, int8 {self.int8_accuracy:.4f}"
                    if self.int8_accuracy is not None else "")
        return (f"top-1 agrees with fp32 on {self.agreement:.1%} of {self.eval_images} eval images (required "
                f"{self.min_agreement:.0%}){accuracy}")


def quantize_int8(run_dir: Path, export_dir: Path, min_agreement: float = MIN_AGREEMENT,
                  max_map_drop: float = MAX_MAP_DROP) -> QuantizeResult:
    """EXPORT_DIR/model.int8.onnx from EXPORT_DIR/model.onnx, calibrated and checked on RUN_DIR's image folder or
    manifests; UserError (and nothing written) when it agrees with fp32 on less than `min_agreement` of the eval
    images (multi-label: when its eval mAP is more than `max_map_drop` below fp32's)."""
    from hf_finetune.serve.onnx_model import require

    require("onnx", "onnxruntime")
    export_dir = Path(export_dir)
    train_files, eval_files = run_images(Path(run_dir))
    fp32 = load_onnx_classifier(export_dir)
    calibration = random.Random(0).sample(train_files, min(CALIBRATION_IMAGES, len(train_files)))
    staging = Path(tempfile.mkdtemp(prefix=".int8-", dir=export_dir))  # same filesystem: the move is a rename
    try:
        quantize_static_qdq(export_dir / ONNX_FILE, staging / INT8_FILE, fp32, [path for path, _ in calibration])
        int8 = replace(fp32, session=inference_session(staging / INT8_FILE))
        if fp32.task.name == MULTI_LABEL:
            result = compare_multi_label(fp32, int8, eval_files, staging / INT8_FILE, len(calibration), max_map_drop)
        else:
            result = compare(fp32, int8, eval_files, staging / INT8_FILE, len(calibration), min_agreement)
        if not result.kept:
            raise UserError(f"the int8 model falls short: {result.summary()}; not kept ({ONNX_FILE} is unchanged; "
                            "serve it in fp32)")
        os.replace(staging / INT8_FILE, export_dir / INT8_FILE)
        result.int8_path = export_dir / INT8_FILE
        fp32_sha256 = hashlib.sha256((export_dir / ONNX_FILE).read_bytes()).hexdigest()
        write_json(export_dir / INT8_RECORD, {**asdict(result), "int8_path": INT8_FILE, "fp32_sha256": fp32_sha256,
                                              "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, "
                                                        "uint8 activations, MinMax calibration"})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def run_images(run_dir: Path) -> tuple[list[tuple[Path, Labels]], list[tuple[Path, Labels]]]:
    """(path, class folder name, or a manifest's list of label names) of the train and eval images of the run's
    local image folder or manifests."""
    from hf_finetune.data.folders import find_splits
    from hf_finetune.data.manifest import recorded_manifest_rows

    record = run_dir / "run_config.json"
    if not record.is_file():
        raise UserError(f"{run_dir} has no run_config.json: --quantize int8 calibrates on a finished run's images; "
                        "pass the run's --output-dir")
    run = json.loads(record.read_text())
    config = run.get("config", {})
    manifests = recorded_manifest_rows(config)
    if manifests is not None:
        if "eval" not in manifests:
            raise UserError("--quantize int8 checks the int8 model on the run's eval manifest, and this run held its "
                            "eval images out of train: train with an eval manifest (val.csv, --eval-file)")
        return manifests["train"], manifests["eval"]
    data_dir = config.get("data_dir")
    if not data_dir or not Path(data_dir).is_dir():
        raise UserError(f"--quantize int8 needs the run's local image folder ({data_dir or 'a Hub dataset'} is not "
                        "one here): it calibrates on its train split and checks on its eval split")
    train_dir, eval_dir = find_splits(Path(data_dir), config.get("train_split") or "train", config.get("eval_split"))
    if eval_dir is None:
        raise UserError(f"{data_dir} has no eval split folder: --quantize int8 checks the int8 model on one")
    return labelled_files(train_dir), labelled_files(eval_dir)


def labelled_files(split_dir: Path) -> list[tuple[Path, str]]:
    from hf_finetune.data.folders import IMAGE_EXTENSIONS

    return [(path, class_dir.name) for class_dir in sorted(split_dir.iterdir()) if class_dir.is_dir()
            for path in sorted(class_dir.rglob("*"))
            if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")]


def model_inputs(classifier: OnnxClassifier, paths: list[Path]):
    """Batches of the model's float input for `paths`, preprocessed as `--onnx` prediction does (unreadable files
    are an error: the run's own images were all readable when it trained)."""
    from hf_finetune.serve.predict import eval_crop

    with ThreadPoolExecutor(available_cpus()) as pool:
        for start in range(0, len(paths), BATCH_SIZE):
            with one_thread():
                crops = list(pool.map(lambda path: eval_crop(classifier.transform, path),
                                      paths[start:start + BATCH_SIZE]))
            yield classifier.transform.normalize(torch.stack(crops)).numpy()


def quantize_static_qdq(fp32_path: Path, int8_path: Path, fp32: OnnxClassifier, calibration: list[Path]) -> None:
    """onnxruntime's quantize_static on the shape-inferred, optimized fp32 graph."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = model_inputs(fp32, calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {fp32.input_name: batch}

    prepared = int8_path.with_name("prepared.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    except Exception as error:  # onnxruntime raises many types (graph, calibration, serialization)
        raise UserError(f"onnxruntime could not quantize {fp32_path}: {first_line(error)}; nothing was written") \
            from None


def compare(fp32: OnnxClassifier, int8: OnnxClassifier, eval_files: list[tuple[Path, str]], int8_path: Path,
            calibration_images: int, min_agreement: float) -> QuantizeResult:
    """Top-1 agreement of the two models on the eval images, and each one's accuracy against the folder labels."""
    fp32_top, int8_top = [], []
    for batch in model_inputs(fp32, [path for path, _ in eval_files]):  # the same inputs for both models
        fp32_top.append(fp32.session.run(None, {fp32.input_name: batch})[0].argmax(-1))
        int8_top.append(int8.session.run(None, {int8.input_name: batch})[0].argmax(-1))
    fp32_top, int8_top = np.concatenate(fp32_top), np.concatenate(int8_top)
    index = {name: position for position, name in enumerate(fp32.label_names)}
    # A manifest's row holds a list: one label name for a single-label run.
    truth = [index.get(name if isinstance(name, str) else "".join(name[:1])) for _, name in eval_files]
    known = None not in truth
    accuracy = (lambda top: float(np.mean(top == np.array(truth)))) if known else (lambda top: None)
    return QuantizeResult(int8_path, float(np.mean(fp32_top == int8_top)), len(eval_files), calibration_images,
                          accuracy(fp32_top), accuracy(int8_top), min_agreement)


def compare_multi_label(fp32: OnnxClassifier, int8: OnnxClassifier, eval_files: list[tuple[Path, list[str]]],
                        int8_path: Path, calibration_images: int, max_map_drop: float) -> QuantizeResult:
    """Each model's eval mAP against the manifest's labels (the task's metrics), and the share of images whose
    decisions at the model's thresholds are all the same in fp32 and int8."""
    task = fp32.task
    logits = {"fp32": [], "int8": []}
    for batch in model_inputs(fp32, [path for path, _ in eval_files]):  # the same inputs for both models
        for name, model in (("fp32", fp32), ("int8", int8)):
            logits[name].append(torch.from_numpy(model.session.run(None, {model.input_name: batch})[0]))
    fp32_logits, int8_logits = torch.cat(logits["fp32"]), torch.cat(logits["int8"])
    index = {name: position for position, name in enumerate(fp32.label_names)}
    targets = torch.zeros_like(fp32_logits)
    for row, (_, names) in enumerate(eval_files):
        targets[row, [index[name] for name in names if name in index]] = 1
    maps = {}
    for name, values in (("fp32", fp32_logits), ("int8", int8_logits)):
        metrics = task.create_metrics()
        metrics.update(values, targets)
        maps[name] = metrics.compute()["map"]
    if maps["fp32"] is None:
        raise UserError("the eval manifest has no image with any of the model's labels: --quantize int8 cannot "
                        "check the int8 model's mAP on it")
    agreement = float((task.decisions(fp32_logits) == task.decisions(int8_logits)).all(dim=1).double().mean())
    return QuantizeResult(int8_path, agreement, len(eval_files), calibration_images, None, None,
                          fp32_map=maps["fp32"], int8_map=maps["int8"], max_map_drop=max_map_drop)
