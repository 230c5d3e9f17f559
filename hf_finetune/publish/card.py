"""The model card (README.md) of a run, rendered from metrics.json + run_config.json.

The template in model_cards/template.md owns the layout; this module turns the run's records into
front matter (ModelCardData) and ready-made table rows, so a new run_config/metrics key only needs
one more row here (see `_training_details`).
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path
from typing import Optional

from hf_finetune.publish.card_results import eval_results, metric_ids, results_context, table_cell
from hf_finetune.errors import UserError
from hf_finetune.files import write_text
from hf_finetune.recipes import recipe_card_rows
from hf_finetune.tasks import task_of_run

TEMPLATE_RELATIVE_PATH = Path("model_cards") / "template.md"
TAGS = ["image-classification", "timm", "transformers", "hf_finetune"]
# FinetuneConfig fields whose values are local paths: the card shows only their last component.
PATH_OPTIONS = {"data_dir", "cache_dir", "pretrained_path", "output_dir", "resume", "config", "label_map"}


def write_model_card(output_dir: Path, repo_id: Optional[str] = None, onnx: bool = False) -> Path:
    """Write OUTPUT_DIR/README.md; without `repo_id` the snippets name a placeholder repo. `onnx`: the repo
    holds the ONNX export (model.onnx + preprocessor.json), and the card shows how to run it."""
    output_dir = Path(output_dir)
    card = render_model_card(output_dir, repo_id, onnx)
    path = output_dir / "README.md"
    write_text(path, str(card))
    return path


def render_model_card(output_dir: Path, repo_id: Optional[str] = None, onnx: bool = False):
    """The huggingface_hub ModelCard of the run in OUTPUT_DIR (not written anywhere)."""
    from huggingface_hub import ModelCard

    run, metrics = read_run_records(output_dir)
    repo_id = repo_id or f"your-username/{Path(output_dir).resolve().name}"
    return ModelCard.from_template(_card_data(run, metrics, repo_id), template_path=str(find_template()),
                                   onnx=onnx, **_template_context(run, metrics, repo_id, Path(output_dir)))


def _card_data(run: dict, metrics: dict, repo_id: str):
    from huggingface_hub import ModelCardData

    source, data, config = run["source"], run["data"], run["config"]
    hub_dataset = data["name"] if config.get("dataset_name") else None  # a folder's name is no Hub id
    pretrained = bool(source.get("pretrained"))
    # A fine-tune is a derivative of its base weights and keeps their license (Hub ids are lower case).
    license = (source.get("license") or "").lower() or None
    return ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        tags=TAGS,
        license=license if pretrained else None,
        base_model=source.get("hub_id") if pretrained else None,
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=metric_ids(run, metrics),
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(run, metrics, dict(dataset_type=hub_dataset or "imagefolder",
                                                     dataset_name=_dataset_name(run),
                                                     dataset_config=config.get("dataset_config"))),
    )


def _template_context(run: dict, metrics: dict, repo_id: str, output_dir: Path) -> dict:
    config, task = run["config"], task_of_run(run)
    return dict(
        repo_id=repo_id, repo_name=repo_id.split("/")[-1], source=run["source"],
        source_name=_sanitize_value("--model", run["source"]["name"]),
        pretrained_file=_last_component(config["pretrained_path"]) if config.get("pretrained_path") else None,
        data=run["data"], dataset_name=_dataset_name(run),
        dataset_kind="hub" if config.get("dataset_name") else "folder" if config.get("data_dir") else "hotdog",
        head_lr_mult=f"{config['head_lr_mult']:g}" if config.get("param_group", True) else None,
        num_classes=len(run["label_names"]), labels=_label_rows(run),
        has_label_matches=bool(run.get("label_matches")),
        final_rows=_final_rows(metrics["final"], task.accuracy_name),
        epoch_columns=_epoch_columns(metrics["history"], task.accuracy_name),
        epoch_rows=_epoch_rows(metrics["history"]), has_curves=(output_dir / "training_curves.png").is_file(),
        has_confusion=(output_dir / "confusion_matrix.png").is_file(),
        has_per_label_ap=(output_dir / "per_label_ap.png").is_file(),
        has_calibration_plot=(output_dir / "calibration.png").is_file(), **results_context(run, metrics),
        hyperparameters=_hyperparameter_rows(run, metrics), param_groups=_param_group_rows(run),
        training_details=_training_details(run, metrics),
        comparison=(output_dir / "comparison.md").read_text() if (output_dir / "comparison.md").is_file() else None,
        command=" ".join(sanitize_command(run.get("command") or [])),
        versions=[(name, version) for name, version in run.get("versions", {}).items() if version],
    )


def _dataset_name(run: dict) -> str:
    name = run["data"]["name"]
    return name if run["config"].get("dataset_name") else _last_component(name)


def read_run_records(output_dir: Path) -> tuple[dict, dict]:
    records = []
    for name in ("run_config.json", "metrics.json"):
        path = Path(output_dir) / name
        if not path.is_file():
            raise UserError(f"{output_dir} has no {name}: point at the --output-dir of a finished "
                            "scripts/finetune.py run")
        records.append(json.loads(path.read_text()))
    return records[0], records[1]


def find_template() -> Path:
    """model_cards/template.md beside the package (source/editable) or under <prefix>/share (wheel)."""
    data_roots = [sys.prefix, sysconfig.get_path("data"),  # venv/system installs
                  sysconfig.get_path("data", sysconfig.get_preferred_scheme("user"))]  # pip install --user
    roots = [Path(__file__).resolve().parents[2]] + [Path(root) / "share" / "hf_finetune" for root in data_roots]
    for root in roots:
        if (root / TEMPLATE_RELATIVE_PATH).is_file():
            return root / TEMPLATE_RELATIVE_PATH
    raise UserError(f"model card template {TEMPLATE_RELATIVE_PATH} not found (looked under "
                    f"{', '.join(map(str, roots))}); reinstall hf_finetune")


def sanitize_command(argv: list[str]) -> list[str]:
    """The command as typed, with every local path reduced to its last component (no user or host names)."""
    cleaned = []
    for index, arg in enumerate(argv):
        if arg.startswith("--"):
            option, equals, value = arg.partition("=")
            cleaned.append(f"{option}={_sanitize_value(option, value)}" if equals else arg)
        else:
            previous = argv[index - 1] if index else ""
            option = previous if previous.startswith("--") and "=" not in previous else ""
            cleaned.append(_sanitize_value(option, arg))
    return cleaned


def _sanitize_value(option: str, value: str) -> str:
    if value.startswith("local-dir:"):
        return "local-dir:" + _last_component(value[len("local-dir:"):])
    looks_local = value.startswith(("/", "~", "./", "../", "\\")) or value[1:3] in (":\\", ":/")
    if looks_local or option.lstrip("-").replace("-", "_") in PATH_OPTIONS:
        return _last_component(value)
    return value


def _last_component(path: str) -> str:
    return Path(path.replace("\\", "/").rstrip("/")).name or path


def _number(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _label_rows(run: dict) -> list[dict]:
    matches = {match["label"]: match for match in run.get("label_matches") or []}
    rows = []
    for index, label in enumerate(run["label_names"]):
        match = matches.get(label)
        source_class = ""
        if match:
            source_class = f"{match['source_index']}" + (f" ({table_cell(match['source_label'])})"
                                                        if match.get("source_label") else "")
        rows.append({"index": index, "name": table_cell(label), "source_class": source_class})
    return rows


def _final_rows(final: dict, accuracy_name: str) -> list[tuple[str, str]]:
    """eval_acc / train_acc named for what they are (the task's accuracy_name: multi-label's exact match)."""
    rows = [(f"eval {accuracy_name}", _number(final["eval_acc"])), ("eval loss", _number(final.get("eval_loss"))),
            (f"train {accuracy_name}", _number(final.get("train_acc"))),
            ("train loss", _number(final.get("train_loss"))),
            ("eval images", final.get("eval_count")), ("train examples/sec", _number(final.get("examples_per_sec"), 1)),
            ("total time (s)", _number(final.get("total_seconds"), 1))]
    return [(name, value) for name, value in rows if value not in (None, "")]


def _epoch_columns(history: list[dict], accuracy_name: str) -> list[str]:
    groups = _lr_groups(history[0]) if history else []
    accuracy = "acc" if accuracy_name == "accuracy" else accuracy_name
    return (["epoch", "train loss", f"train {accuracy}", "eval loss", f"eval {accuracy}", "examples/sec"]
            + [f"lr ({g})" for g in groups])


def _epoch_rows(history: list[dict]) -> list[list[str]]:
    return [[str(row["epoch"]), _number(row.get("train_loss")), _number(row.get("train_acc")),
             _number(row.get("eval_loss")), _number(row.get("eval_acc")), _number(row.get("examples_per_sec"), 1)]
            + [f"{row['lr'][group]:.3g}" for group in _lr_groups(row)] for row in history]


def _lr_groups(row: dict) -> list[str]:
    # With layer-wise decay there is a group per depth: the table keeps the lowest and the head (the extremes).
    groups = list(row.get("lr", {}))
    return groups if len(groups) <= 2 else [groups[0], groups[-1]]


def _hyperparameter_rows(run: dict, metrics: dict) -> list[tuple[str, str]]:
    config = run["config"]
    processes = run.get("num_processes", metrics.get("num_processes", 1))
    accumulation = config.get("gradient_accumulation_steps", 1)
    head = (f"x{config['head_lr_mult']:g} the backbone LR (lr {config['lr'] * config['head_lr_mult']:g})"
            if config.get("param_group", True) else "none: one parameter group at the backbone LR")
    rows = [
        ("optimizer", config["optimizer"] + (f" (momentum {config['momentum']:g})"
                                             if config["optimizer"] == "sgd" else "")),
        ("backbone learning rate", f"{config['lr']:g}, for the mean loss over the global batch (the d2l chapter "
                                   "sums the loss: its 5e-5 at batch 128 equals 6.4e-3 here)"),
        ("head learning rate", head),
        ("weight decay", f"{config['weight_decay']:g}"),
        ("schedule", f"{config['lr_scheduler']}, {config.get('warmup_steps', 0)} warm-up steps"),
        ("epochs", config["epochs"]),
        ("global batch size", f"{config['batch_size']} = {run.get('per_device_batch_size', '?')} per device x "
                              f"{processes} process(es) x {accumulation} accumulation step(s)"),
        ("devices", ", ".join(metrics.get("devices", [])) or "?"),
        ("mixed precision", _describe_precision(run)),
        ("seed", config["seed"]),
    ] + recipe_card_rows(run)
    return [(name, table_cell(value)) for name, value in rows]


def _describe_precision(run: dict) -> str:
    precision = run.get("mixed_precision", "no")
    name = "fp32" if precision == "no" else precision
    return f"{name} ({run['mixed_precision_reason']})" if run.get("mixed_precision_reason") else name


def _param_group_rows(run: dict) -> list[tuple[str, str, str, str]]:
    return [(table_cell(group["name"]), f"{group['lr']:g}", f"{group['weight_decay']:g}", f"{group['num_params']:,}")
            for group in run.get("param_groups", [])]


def _training_details(run: dict, metrics: dict) -> list[tuple[str, str]]:
    """Optional facts that later features record; each is shown only when the run recorded it."""
    rows = []
    frozen = _describe_frozen(run.get("frozen") or {})
    if frozen:
        rows.append(("frozen layers", frozen))
    if metrics.get("bad_files") is not None:  # only the count: run_config's list names local files
        rows.append(("unreadable images skipped", metrics["bad_files"]))
    if run.get("label_matches"):
        rows.append(("head rows copied from the source classifier", len(run["label_matches"])))
    return [(name, table_cell(value)) for name, value in rows]


def _describe_frozen(frozen: dict) -> str:
    parts = []
    if frozen.get("groups"):
        parts.append(f"groups {frozen['groups']}")
    if frozen.get("fraction"):
        parts.append(f"bottom {frozen['fraction']:.0%} of the backbone")
    if frozen.get("num_params"):
        parts.append(f"{frozen['num_params']:,} parameters")
    if frozen.get("head_warmup_epochs"):
        parts.append(f"whole backbone for the first {frozen['head_warmup_epochs']} epoch(s) (head warm-up)")
    if frozen.get("batchnorm_frozen"):
        parts.append("all BatchNorm statistics")
    return "; ".join(parts)

