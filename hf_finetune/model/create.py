"""Create the classifier from any timm source, give it a new head, and save it in timm's Hub layout."""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from hf_finetune.errors import UserError, first_line
from hf_finetune.model.labels import source_label_names

# pretrained_cfg keys that describe the source checkpoint, not the fine-tuned model.
SOURCE_ONLY_CFG_KEYS = ("hf_hub_id", "hf_hub_filename", "url", "file", "source", "tag", "origin_url", "paper_ids",
                        "paper_name", "notes", "label_descriptions", "label_offset", "state_dict", "description",
                        "license")


@dataclass
class SourceModel:
    """What the fine-tuned model came from: recorded in run_config.json and the model card."""

    name: str  # as the user gave it
    architecture: str
    pretrained: bool
    hub_id: Optional[str] = None  # the source weights' Hub repo, the card's base_model
    tag: Optional[str] = None
    license: Optional[str] = None
    label_names: Optional[list[str]] = None  # the source classifier's classes (e.g. ImageNet)
    classifier_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def classifier_names(model: nn.Module) -> list[str]:
    """Names of the classifier module(s), from the model's pretrained_cfg, else get_classifier()."""
    names = model.pretrained_cfg.get("classifier") or ()
    names = [names] if isinstance(names, str) else list(names)
    present = [name for name in names if _has_submodule(model, name)]
    if present:
        return present
    head = model.get_classifier()
    found = [name for name, module in model.named_modules() if module is head and name]
    if not found:
        raise UserError(f"cannot find the classifier of {type(model).__name__}; timm models expose it via "
                        "pretrained_cfg['classifier'] or get_classifier()")
    return found


def head_parameter_names(model: nn.Module) -> set[str]:
    return {f"{module}.{param}" for module in classifier_names(model)
            for param, _ in model.get_submodule(module).named_parameters()}


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _check_model_name(name: str) -> None:
    import timm

    if name.startswith(("hf-hub:", "local-dir:")) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"closest timm names: {', '.join(close)}" if close else "see timm.list_models('*pattern*')"
    raise UserError(f"unknown model {name!r}; {hint}")


def _constructor_size(model: nn.Module, img_size: Optional[int]) -> dict:
    """`img_size` for a constructor that builds the input size in (a ViT's position embedding, resampled from
    the pretrained one by timm); a CNN takes any size, and its constructor has no such argument. Other sizes
    reach the data config through pretrained_cfg (create_classifier)."""
    return {"img_size": img_size} if img_size and model.pretrained_cfg.get("fixed_input_size") else {}


def _load_weights_file(path: str) -> dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code from a file
    except Exception as error:  # safetensors, zipfile and the unpickler raise many types for a damaged file
        raise _unreadable_weights(path, first_line(error)) from None
    if not isinstance(state, dict):
        raise _unreadable_weights(path, f"it holds a {type(state).__name__}")
    return state.get("state_dict", state.get("model", state))


def _unreadable_weights(path: str, problem: str) -> UserError:
    return UserError(f"--pretrained-path {path}: not a readable weights file ({problem}); give a .safetensors or "
                     "a state dict saved with torch.save, copied whole")


def _create_source_model(name: str, pretrained: bool, pretrained_path: Optional[str],
                         img_size: Optional[int], drop_path: float = 0.0) -> nn.Module:
    import timm

    _check_model_name(name)
    # Only when asked: a model without stochastic depth refuses the keyword.
    extra = {"drop_path_rate": drop_path} if drop_path else {}
    if not pretrained_path:
        try:
            model = timm.create_model(name, pretrained=pretrained, **extra)
            size = _constructor_size(model, img_size)
            return timm.create_model(name, pretrained=pretrained, **size, **extra) if size else model
        except Exception as error:  # timm/hub raise many types: bad tag, offline, missing files
            raise UserError(f"could not create {name!r} (pretrained={pretrained}): {first_line(error)}; check the "
                            "name and tag, pass --pretrained-path FILE, or --no-pretrained") from None
    state = _load_weights_file(pretrained_path)
    model = timm.create_model(name, pretrained=False, **extra)
    size = _constructor_size(model, img_size)
    # The file's classifier may have any number of classes (e.g. a previous fine-tune): size the head to it.
    head_weight = state.get(f"{classifier_names(model)[0]}.weight")
    num_classes = model.num_classes if head_weight is None else head_weight.shape[0]
    if size or num_classes != model.num_classes:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **size, **extra)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = str(error).splitlines()  # the first says "Error(s) in loading state_dict"; the second which
        raise UserError(f"--pretrained-path {pretrained_path} does not fit {name}: "
                        f"{lines[1].strip() if len(lines) > 1 else error}") from None
    return model


def create_classifier(name: str, label_names: list[str], pretrained: bool = True,
                      pretrained_path: Optional[str] = None,
                      img_size: Optional[int] = None, drop_path: float = 0.0) -> tuple[nn.Module, SourceModel]:
    """The timm model with its classifier reset to `label_names` and Xavier-initialized (the chapter);
    `drop_path`: timm's drop_path_rate (stochastic depth)."""
    model = _create_source_model(name, pretrained, pretrained_path, img_size, drop_path)
    source_cfg = dict(model.pretrained_cfg)
    source = SourceModel(
        name=name,
        architecture=source_cfg.get("architecture", name),
        pretrained=pretrained or bool(pretrained_path),
        hub_id=source_cfg.get("hf_hub_id") if pretrained and not pretrained_path else None,
        tag=source_cfg.get("tag"),
        license=source_cfg.get("license"),
        label_names=source_label_names(source_cfg),
        classifier_state={key: value.detach().clone() for key, value in model.state_dict().items()
                          if key in head_parameter_names(model)},
    )
    model.reset_classifier(len(label_names))
    for module_name in classifier_names(model):
        for layer in model.get_submodule(module_name).modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(layer.weight)
    set_label_names(model, label_names, license=source.license if source.pretrained else None)
    if img_size:
        # The data config (and so the transforms and the saved config) follows pretrained_cfg.
        model.pretrained_cfg["input_size"] = (model.pretrained_cfg["input_size"][0], img_size, img_size)
        model.pretrained_cfg.pop("test_input_size", None)
    return model, source


def set_label_names(model: nn.Module, label_names: list[str], license: Optional[str] = None) -> None:
    """Overwrite the source's pretrained_cfg (1000 classes, tag, hub id, labels) to describe this model."""
    cfg = {key: value for key, value in model.pretrained_cfg.items() if key not in SOURCE_ONLY_CFG_KEYS}
    cfg.update(num_classes=len(label_names), label_names=list(label_names))
    if license:
        cfg["license"] = license  # a fine-tune is a derivative of the base weights: it keeps their license
    model.pretrained_cfg = cfg


def unwrap(model: nn.Module) -> nn.Module:
    """The model without Accelerate's DDP and torch.compile wrappers, so parameter names are its own."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_torch_compile=False)


def save_classifier(model: nn.Module, output_dir: Path, task_config: Optional[dict] = None) -> None:
    """Write model.safetensors + config.json that timm (`local-dir:`/`hf-hub:`) and transformers both load, with
    timm's public `save_for_hf` into a staging folder, then each file renamed into place. `task_config`: the
    task's top-level config.json entries (Task.saved_config)."""
    import copy
    import tempfile

    from timm.models import save_for_hf

    output_dir.mkdir(parents=True, exist_ok=True)
    # safetensors refuses non-contiguous tensors, which channels_last weights are: save a contiguous copy.
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".saving-") as staging:
        save_for_hf(plain, staging, model_config={"label_names": model.pretrained_cfg["label_names"]},
                    safe_serialization=True)
        config_path = Path(staging) / "config.json"
        # timm records num_classes in model_args too; transformers' TimmWrapper passes num_classes itself and
        # fails with "multiple values for keyword argument 'num_classes'". The top-level num_classes suffices.
        config = json.loads(config_path.read_text())
        config.get("model_args", {}).pop("num_classes", None)
        if not config.get("model_args"):
            config.pop("model_args", None)
        config.update(task_config or {})
        config_path.write_text(json.dumps(config, indent=2))
        for name in ("model.safetensors", "config.json"):
            os.replace(Path(staging) / name, output_dir / name)
