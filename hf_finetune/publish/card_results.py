"""The card's results: model-index EvalResults and the body's tables, from metrics.json's "selected" report.

Each reported split (the eval split that chose the epoch, and a test split when the data has one) gets the
run's task's metrics in the YAML model-index (`Task.card_metrics`: for single-label, accuracy, macro-F1 and,
with at least 5 classes, top-5 accuracy); the body shows the task's rows (`Task.card_rows`, with and without
flip TTA), per class, and says how the weights were selected. A run recorded before model selection (no
"selected" report) keeps its single accuracy.
"""

from __future__ import annotations

from typing import Optional

from hf_finetune.tasks import task_of_run
from hf_finetune.tasks.calibration import temperature_summary

SPLIT_KEYS = ("eval", "test")  # metrics.json "selected" keys, in the order the card lists them


def metric_ids(run: dict, metrics: dict) -> list[str]:
    """The card's `metrics`: Hub metric ids of what the model-index reports."""
    return task_of_run(run).card_metric_ids if metrics.get("selected") else ["accuracy"]


def split_names(run: dict) -> dict[str, str]:
    data = run["data"]
    return {"eval": data.get("eval_split") or "eval", "test": data.get("test_split") or "test"}


def eval_results(run: dict, metrics: dict, dataset: dict) -> list:
    """huggingface_hub EvalResults for every reported split; `dataset` holds EvalResult's dataset_* fields."""
    from huggingface_hub import EvalResult

    report, names = metrics.get("selected"), split_names(run)
    common = dict(task_type="image-classification", task_name="Image Classification", **dataset)
    if not report:
        return [EvalResult(**common, dataset_split=names["eval"], metric_type="accuracy", metric_name="Accuracy",
                           metric_value=metrics["final"]["eval_acc"])]
    return [EvalResult(**common, dataset_split=names[split], metric_type=kind, metric_name=title,
                       metric_value=report[split][key], metric_args=args)
            for split in SPLIT_KEYS if split in report
            for key, kind, title, args in task_of_run(run).card_metrics if report[split].get(key) is not None]


def results_context(run: dict, metrics: dict) -> dict:
    """The template's `selection` (or None for an older run): sentence, split table, per-class table."""
    report = metrics.get("selected")
    if not report:
        return {"selection": None, "calibration": None}
    names, selected, config = split_names(run), report["selected"], run["config"]
    columns = [(split, names[split] + (" + flip TTA" if tta else "")) for split in SPLIT_KEYS
               for tta in (False, True) if split + ("_tta" if tta else "") in report]
    rows, task = [], task_of_run(run)
    for key, title in task.card_rows:
        values = [_value(report[split + ("_tta" if "TTA" in name else "")].get(key)) for split, name in columns]
        if any(values):
            rows.append([title] + values)
    per_class_split = "test" if "test" in report else "eval"
    # Multi-label calibration: each label's temperature, a column of the per-label table.
    temperatures = (report.get("calibration") or {}).get("temperatures")
    return {"calibration": calibration_context(report.get("calibration"), names), "selection": {
        "sentence": _sentence(selected, names, config, metrics, "test" in report)
        + task.decision_sentence(config.get("threshold"), names["eval"]),
        "columns": [name for _, name in columns], "rows": rows, "per_class_split": names[per_class_split],
        "label_word": task.per_label_key.removeprefix("per_"),  # class / label
        "per_class_header": [title for _, title in task.card_per_label] + (["temperature"] if temperatures else []),
        "per_class": [[table_cell(name)] + [_value(scores[key]) for key, _ in task.card_per_label]
                      + ([_value(temperatures[name])] if temperatures else [])
                      for name, scores in report[per_class_split][task.per_label_key].items()],
        "confusion_split": names[per_class_split]}}


def calibration_context(calibration: Optional[dict], names: dict) -> Optional[dict]:
    """The template's `calibration`: the temperature (or that there is one per label) and, per split, ECE (15
    bins) and NLL before and after."""
    if not calibration:
        return None
    rows = [[f"`{names[split]}`", *(_value(calibration[split][when][key]) for key in ("ece", "nll")
                                    for when in ("before", "after"))]
            for split in SPLIT_KEYS if split in calibration]
    per_label = "temperatures" in calibration
    return {"per_label": per_label, "temperature": None if per_label else f"{calibration['temperature']:.4f}",
            "summary": temperature_summary(calibration), "bins": calibration["bins"], "rows": rows,
            "fitted_on": names["eval"]}


def _sentence(selected: dict, names: dict, config: dict, metrics: dict, has_test: bool) -> str:
    weights = "the exponential moving average (EMA) of the weights" if selected["weights"] == "ema" else \
        "the trained weights"
    epochs = len(metrics["history"])
    if selected.get("metric") is None:
        text = f"The model is {weights} of the last epoch ({epochs}; `--save-last`)."
    else:
        text = (f"The model is {weights} of epoch {selected['epoch']} of {epochs}, the best by `{selected['metric']}`"
                f" on the `{names['eval']}` split, which therefore helped choose it")
        text += f"; the `{names['test']}` split did not." if has_test else "."
    if config.get("model_ema"):
        text += f" An EMA of the weights (decay {config.get('ema_decay')}) was evaluated beside them every epoch."
    if config.get("patience"):
        planned = config["epochs"]
        text += (f" Early stopping (patience {config['patience']}) stopped training after {epochs} of {planned} "
                 "epochs." if epochs < planned else f" Early stopping (patience {config['patience']}) did not stop "
                 "training.")
    if config.get("tta") == "flip":
        text += " Flip test-time augmentation (mean logits of each image and its mirror) is reported beside."
    return text


def _value(value: Optional[float]) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def table_cell(value) -> str:
    """A markdown table cell: a `|` in a label name would split it."""
    return str(value).replace("|", "\\|")
