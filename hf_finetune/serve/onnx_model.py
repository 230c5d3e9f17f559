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
from hf_finetune.data.images import ImageSettings
from hf_finetune.serve.preprocess import EvalPreprocess
from hf_finetune.tasks import Task, task_of_saved_model

ONNX_FILE, PREPROCESSOR_FILE = "model.onnx", "preprocessor.json"
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


def preprocessor_config(model: torch.nn.Module, label_names: list[str], task_config: Optional[dict] = None) -> dict:
    """What preprocessor.json holds for `model` (its resolved timm data config), its labels and its task's
    config.json entries (`Task.saved_config`: a multi-label model's problem_type and thresholds)."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    settings = ImageSettings.from_data_config(config)
    return {
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "layout": "NCHW", "dtype": "float32",
        **{key: _plain(config.get(key)) for key in DATA_CONFIG_KEYS},
        "crop_mode": settings.crop_mode,
        "resize_shorter_side": settings.short_side,
        "label_names": list(label_names),
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


def load_onnx_classifier(name_or_path: Union[str, Path]) -> OnnxClassifier:
    """model.onnx + preprocessor.json from a local folder or a Hub model repo (`user/model`, `hf-hub:user/model`)."""
    require("onnxruntime")
    import onnxruntime

    folder = _local_files(name_or_path)
    try:
        config = json.loads((folder / PREPROCESSOR_FILE).read_text())
        settings = ImageSettings.from_data_config(config)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{folder / PREPROCESSOR_FILE}: unreadable ({first_line(error)}); export the model again "
                        "with scripts/export.py") from None
    providers = [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if name in onnxruntime.get_available_providers()]
    try:
        session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), providers=providers)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        raise UserError(f"onnxruntime cannot load {folder / ONNX_FILE}: {first_line(error)}") from None
    return OnnxClassifier(session, EvalPreprocess(settings), list(config["label_names"]), config["input_name"],
                          {key: config[key] for key in ("problem_type", "thresholds") if key in config})


def _local_files(name_or_path: Union[str, Path]) -> Path:
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
                                            allow_patterns=[ONNX_FILE, PREPROCESSOR_FILE]))
        except Exception as error:  # missing, private, offline
            raise UserError(f"could not download {ONNX_FILE} from {source}: {first_line(error)}; check the name, "
                            "and for a private repo set HF_TOKEN or run `hf auth login`") from None
    missing = [file for file in (ONNX_FILE, PREPROCESSOR_FILE) if not (folder / file).is_file()]
    if missing:
        raise UserError(f"{source} has no {' or '.join(missing)}: export it with "
                        f"`python scripts/export.py {source} --format onnx` (--push-to-hub to publish it)")
    return folder
