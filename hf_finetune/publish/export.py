"""ONNX export of a fine-tuned classifier, checked against onnxruntime before anything is kept.

The model is exported with torch.onnx (the dynamo exporter) at its own input size with a dynamic batch
axis, beside preprocessor.json (onnx_model.py). Both are written to a staging folder inside the output
folder and moved in only after onnxruntime reproduced PyTorch's logits on a fixed batch and on real images
preprocessed from preprocessor.json alone; a failed export leaves the output folder as it was.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from hf_finetune.errors import UserError, first_line
from hf_finetune.files import sha256_of, write_json
from hf_finetune.serve.onnx_model import EXPORT_FILES, INPUT_NAME, ONNX_FILE, OUTPUT_NAME, PREPROCESSOR_FILE, \
    WEIGHTS_FILE, load_onnx_classifier, preprocessor_config, require
from hf_finetune.serve.predict import Classifier, load_classifier, timm_model_name

logger = logging.getLogger(__name__)

# |onnxruntime - torch| <= ATOL + RTOL * |torch|, elementwise on float32 logits. Both run the same float32
# math, but onnxruntime folds BatchNorm into convolutions and picks its own kernels and summation order, so
# results differ by rounding: measured up to 6e-6 on logits of magnitude 7 (tf_efficientnet_lite0), 1e-7 on
# the tiny test models. The bounds sit >10x above that and far below what a wrong operator, weight or
# preprocessing step causes (differences of 1e-2 and more, enough to reorder the top-k).
ATOL, RTOL = 1e-4, 1e-3
NUM_CHECK_IMAGES = 3


@dataclass
class ExportResult:
    onnx_path: Path
    preprocessor_path: Path
    max_abs_difference: float
    checked_images: int


def export_onnx(source: str, output_dir: Optional[Path] = None,
                check_images: Optional[Sequence[Path]] = None) -> ExportResult:
    """Export SOURCE (a run's output folder or a Hub id) to OUTPUT_DIR/model.onnx + preprocessor.json, verified."""
    require("onnx", "onnxscript", "onnxruntime")
    output_dir = _output_dir(source, output_dir)
    classifier = load_classifier(source)
    images = list(check_images) if check_images is not None else default_check_images(source)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=output_dir))  # same filesystem: moves are renames
    try:
        export_model(classifier.model, staging / ONNX_FILE)
        config = preprocessor_config(classifier.model, classifier.label_names, source_weights_sha256(source),
                                     classifier.task.saved_config())
        write_json(staging / PREPROCESSOR_FILE, config)
        difference = verify_export(staging, classifier, images[:NUM_CHECK_IMAGES])
        config["verified"] = {"max_abs_difference": difference, "atol": ATOL, "rtol": RTOL,
                              "real_images": len(images[:NUM_CHECK_IMAGES])}
        write_json(staging / PREPROCESSOR_FILE, config)
        for name in EXPORT_FILES:
            os.replace(staging / name, output_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(output_dir / ONNX_FILE, output_dir / PREPROCESSOR_FILE, difference,
                        len(images[:NUM_CHECK_IMAGES]))


def _output_dir(source: str, output_dir: Optional[Path]) -> Path:
    if output_dir is not None:
        return Path(output_dir)
    if Path(source).is_dir():
        return Path(source)  # beside the run's model.safetensors
    raise UserError(f"{source} is not a local folder: name where the export goes with --output-dir")


def source_weights_sha256(source: str) -> Optional[str]:
    """The sha256 of SOURCE's model.safetensors (a run folder's, or the Hub repo's file timm just downloaded and
    cached), which the export records as the weights it was made from; None for a source without one."""
    name = timm_model_name(source)
    if name.startswith("local-dir:"):
        weights = Path(name[len("local-dir:"):]) / WEIGHTS_FILE
        return sha256_of(weights) if weights.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo_id, _, revision = name[len("hf-hub:"):].partition("@")
    try:
        return sha256_of(hf_hub_download(repo_id, WEIGHTS_FILE, revision=revision or None))
    except EntryNotFoundError:  # a repo with pytorch_model.bin only
        return None


def export_model(model: torch.nn.Module, path: Path) -> None:
    """torch.onnx export at the model's own input size, float32, with a dynamic batch axis, in one file."""
    from hf_finetune.publish.hub import fixed_batch

    model = model.float().eval()
    example = fixed_batch(model, size=2)
    batch = torch.export.Dim("batch", min=1, max=4096)
    captured = io.StringIO()  # the exporter prints its progress; shown only when it fails
    try:
        with contextlib.redirect_stdout(captured), torch.no_grad():
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), dynamo=True, external_data=False)
    except Exception as error:  # the exporter raises many types (export, conversion, serialization)
        logger.debug("torch.onnx output:\n%s", captured.getvalue())
        raise UserError(f"torch.onnx could not export {type(model).__name__}: {first_line(error)}; "
                        "nothing was written") from None


def verify_export(folder: Path, classifier: Classifier, images: Sequence[Path]) -> float:
    """Run FOLDER's model.onnx in onnxruntime on a fixed batch and on `images` preprocessed from its
    preprocessor.json alone; the max abs logit difference from PyTorch, or UserError beyond the tolerance."""
    from hf_finetune.publish.hub import fixed_batch
    from hf_finetune.serve.predict import eval_crop

    exported = load_onnx_classifier(folder)
    if exported.label_names != classifier.label_names:
        raise UserError(f"{PREPROCESSOR_FILE} names other labels than the model: nothing was written")
    fixed = fixed_batch(classifier.model, size=3)  # not the export's batch of 2: the batch axis is dynamic
    with torch.no_grad():
        pairs = [("a fixed random batch", classifier.model(fixed),
                  torch.from_numpy(exported.session.run(None, {exported.input_name: fixed.numpy()})[0]))]
        if images:
            crops = torch.stack([eval_crop(classifier.transform, image) for image in images])
            onnx_crops = torch.stack([eval_crop(exported.transform, image) for image in images])
            pairs.append((f"{len(images)} real images", classifier.model(classifier.transform.normalize(crops)),
                          exported.logits(onnx_crops)))
    worst = 0.0
    for what, expected, actual in pairs:
        difference = (actual - expected).abs().max().item()
        worst = max(worst, difference)
        if not torch.allclose(actual, expected, rtol=RTOL, atol=ATOL):
            raise UserError(f"onnxruntime's logits differ from PyTorch's on {what} by up to {difference:.3g} (allowed "
                            f"{ATOL:g} + {RTOL:g} x |logit|): the export is wrong, nothing was written")
    return worst


def default_check_images(source: str) -> list[Path]:
    """A few images of the run's own data folder (its run_config.json), when SOURCE is a run that has one."""
    from hf_finetune.data.folders import IMAGE_EXTENSIONS

    record = Path(source) / "run_config.json"
    if not record.is_file():
        return []
    data_dir = json.loads(record.read_text()).get("config", {}).get("data_dir")
    if not data_dir or not Path(data_dir).is_dir():
        return []
    files = (path for path in sorted(Path(data_dir).rglob("*")) if path.suffix.lower() in IMAGE_EXTENSIONS)
    return [path for _, path in zip(range(NUM_CHECK_IMAGES), files)]
