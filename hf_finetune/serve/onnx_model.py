"""An exported classifier as onnxruntime runs it: model.onnx + preprocessor.json, no torch forward.

preprocessor.json holds everything needed to feed model.onnx: timm's data config keys (input_size,
interpolation, crop_pct, crop_mode, mean, std), the input/output names and the label names, plus the steps
spelled out in `PREPROCESSING` (what `preprocess.EvalPreprocess` does, exactly as in training's evaluation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from hf_finetune.errors import UserError, first_line
from hf_finetune.files import sha256_of
from hf_finetune.data.images import ImageSettings
from hf_finetune.serve.preprocess import EvalPreprocess
from hf_finetune.tasks import Task, task_of_saved_model

ONNX_FILE, PREPROCESSOR_FILE = "model.onnx", "preprocessor.json"
INT8_FILE = "model.int8.onnx"  # scripts/export.py --quantize int8: the same inputs and outputs, int8 inside
INT8_RECORD = "model.int8.json"  # how it was made and checked, with the sha256 of the model.onnx it came from
EXPORT_FILES = (ONNX_FILE, PREPROCESSOR_FILE)  # an export's files: published, replaced and removed together
INT8_FILES = (INT8_FILE, INT8_RECORD)  # made from model.onnx: stale with it
WEIGHTS_FILE = "model.safetensors"  # preprocessor.json's weights_sha256 is this file's, beside it when exported
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
EXTRA_HINT = 'pip install -e ".[onnx]"'
DATA_CONFIG_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
PREPROCESSING = [
    "decode to 8-bit RGB: EXIF orientation applied; 16-bit values divided by 257; transparent pixels composited "
    "on white; CMYK, grayscale and palette images converted (hf_finetune.data.images.load_rgb)",
    "JPEGs are decoded by libjpeg at the largest 1/2, 1/4 or 1/8 scale whose shorter side stays >= "
    "resize_shorter_side (PIL Image.draft); then the shorter side is reduced to resize_shorter_side (never enlarged), "
    "antialiased, with `interpolation`, on uint8 (torchvision.transforms.v2.functional.resize)",
    "resize the shorter side to floor(input_size / crop_pct) ('squash': both sides), antialiased, then center crop "
    "to input_size (H, W): timm's eval transform, on uint8",
    "float32 = (uint8 / 255 - mean) / std per channel, NCHW, batch of any size, fed as `input_name`",
    "`output_name` is the logits per label_names; softmax gives the probabilities, or, with problem_type "
    "multi_label_classification, a sigmoid per label, present at or above its entry of `thresholds`",
]


def require(*modules: str) -> None:
    """One line naming the extra when an optional ONNX package is missing."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"{name} is not installed: ONNX export and --onnx need the onnx extra, "
                            f"`{EXTRA_HINT}`") from None


def preprocessor_config(model: torch.nn.Module, label_names: list[str], weights_sha256: Optional[str],
                        task_config: Optional[dict] = None) -> dict:
    """What preprocessor.json holds for `model` (its resolved timm data config), its labels, the sha256 of the
    model.safetensors it was exported from (None: a source without one) and its task's config.json entries
    (`Task.saved_config`: a multi-label model's problem_type and thresholds)."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    settings = ImageSettings.from_data_config(config)
    return {
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "layout": "NCHW", "dtype": "float32",
        **{key: _plain(config.get(key)) for key in DATA_CONFIG_KEYS},
        "crop_mode": settings.crop_mode,
        "resize_shorter_side": settings.short_side,
        "label_names": list(label_names),
        "weights_sha256": weights_sha256,
        **(task_config or {}),
        "preprocessing": PREPROCESSING,
    }


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@dataclass
class OnnxClassifier:
    session: "onnxruntime.InferenceSession"  # noqa: F821
    transform: EvalPreprocess
    label_names: list[str]
    input_name: str = INPUT_NAME
    task_config: dict = field(default_factory=dict)  # preprocessor.json's problem_type and thresholds, if any

    @property
    def task(self) -> Task:
        return task_of_saved_model(self.task_config, self.label_names)

    def logits(self, crops: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of uint8 eval crops (NCHW), computed by onnxruntime."""
        inputs = self.transform.normalize(crops).cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: inputs})[0])


def load_onnx_classifier(name_or_path: Union[str, Path], onnx_file: str = ONNX_FILE) -> OnnxClassifier:
    """`onnx_file` (model.onnx, or INT8_FILE) + preprocessor.json from a local folder or a Hub model repo
    (`user/model`, `hf-hub:user/model`)."""
    require("onnxruntime")

    folder = _local_files(name_or_path, onnx_file)
    try:
        config = json.loads((folder / PREPROCESSOR_FILE).read_text())
        settings = ImageSettings.from_data_config(config)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{folder / PREPROCESSOR_FILE}: unreadable ({first_line(error)}); export the model again "
                        "with scripts/export.py") from None
    check_export_is_current(folder, config)
    return OnnxClassifier(inference_session(folder / onnx_file), EvalPreprocess(settings),
                          list(config["label_names"]), config["input_name"],
                          {key: config[key] for key in ("problem_type", "thresholds") if key in config})


def inference_session(path: Path) -> "onnxruntime.InferenceSession":  # noqa: F821
    """An onnxruntime session for PATH, on CUDA when onnxruntime has it."""
    import onnxruntime

    providers = [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if name in onnxruntime.get_available_providers()]
    try:
        return onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        raise UserError(f"onnxruntime cannot load {path}: {first_line(error)}") from None


def check_export_is_current(folder: Path, config: dict) -> None:
    """Refuse an export that sits beside other weights than it was made from (retrained into the same folder).
    A Hub repo is kept consistent by the push itself (hub.push_to_hub removes a stale export), and its download
    here holds no weights to compare with."""
    weights = folder / WEIGHTS_FILE
    if weights.is_file() and config.get("weights_sha256") != sha256_of(weights):
        raise UserError(f"{folder / ONNX_FILE} was exported from other weights than {weights} (trained again "
                        f"since?): export it again with `python scripts/export.py {folder} --format onnx`")


def _local_files(name_or_path: Union[str, Path], onnx_file: str = ONNX_FILE) -> Path:
    """The folder holding model.onnx and preprocessor.json, downloaded from the Hub when it is a repo id."""
    from hf_finetune.serve.predict import timm_model_name

    name = timm_model_name(name_or_path)
    if name.startswith("local-dir:"):
        folder, source = Path(name[len("local-dir:"):]), str(name_or_path)
    else:
        from huggingface_hub import snapshot_download

        source, _, revision = name[len("hf-hub:"):].partition("@")
        try:
            folder = Path(snapshot_download(source, revision=revision or None,
                                            allow_patterns=[onnx_file, PREPROCESSOR_FILE]))
        except Exception as error:  # missing, private, offline
            raise UserError(f"could not download {onnx_file} from {source}: {first_line(error)}; check the name, "
                            "and for a private repo set HF_TOKEN or run `hf auth login`") from None
    missing = [file for file in (onnx_file, PREPROCESSOR_FILE) if not (folder / file).is_file()]
    if missing == [INT8_FILE]:
        raise UserError(f"{source} has no {INT8_FILE}: make it with "
                        f"`python scripts/export.py RUN --format onnx --quantize int8`")
    if missing:
        raise UserError(f"{source} has no {' or '.join(missing)}: export it with "
                        f"`python scripts/export.py {source} --format onnx` (--push-to-hub to publish it)")
    if onnx_file == INT8_FILE and (folder / ONNX_FILE).is_file() and (folder / INT8_RECORD).is_file():
        check_int8_source(folder)
    return folder


def check_int8_source(folder: Path) -> None:
    """UserError when FOLDER's model.int8.onnx was quantized from another model.onnx than the one beside it (an
    export without --quantize since): it would silently serve older weights."""
    import hashlib

    recorded = json.loads((folder / INT8_RECORD).read_text()).get("fp32_sha256")
    if recorded != hashlib.sha256((folder / ONNX_FILE).read_bytes()).hexdigest():
        raise UserError(f"{folder / INT8_FILE} was quantized from an earlier {ONNX_FILE}: make it again with "
                        "`python scripts/export.py RUN --format onnx --quantize int8`")
