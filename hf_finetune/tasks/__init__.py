"""Tasks: what differs between kinds of classification (targets, loss, activation, decision, metrics, TTA).

`create_task` gives the object (`base.Task`) that training, evaluation, the card and serving ask.
"""

from __future__ import annotations

from typing import Sequence

from hf_finetune.errors import UserError
from hf_finetune.tasks.base import Task

SINGLE_LABEL, MULTI_LABEL = "single_label", "multi_label"


def create_task(name: str, label_names: Sequence[str], config=None, train_labels=None) -> Task:
    """The task `name` over `label_names`. With the run's `config` (a FinetuneConfig) and the train split's
    labels it trains with the run's loss options (--loss, smoothing, class weights, Mixup/CutMix); without, it serves
    evaluation and prediction."""
    from hf_finetune.tasks.multi_label import MultiLabel
    from hf_finetune.tasks.single_label import SingleLabel

    tasks = {SINGLE_LABEL: SingleLabel, MULTI_LABEL: MultiLabel}
    name = name.replace("-", "_")  # the data's and --task's spelling (single-label, multi-label)
    if name not in tasks:
        raise UserError(f"task {name!r}: unknown; one of {', '.join(tasks)}")
    if config is not None and config.loss not in (None, *tasks[name].losses):
        raise UserError(f"--loss {config.loss}: not a {name.replace('_', '-')} loss; single-label data trains with "
                        f"{', '.join(SingleLabel.losses)}, multi-label data with {', '.join(MultiLabel.losses)}")
    return tasks[name].create(label_names, config, train_labels)


def task_of_saved_model(config: dict, label_names: Sequence[str]) -> Task:
    """The task a saved model's config.json records (`Task.saved_config`), with its decisions; a model without
    a problem_type is single-label."""
    from hf_finetune.tasks.multi_label import MultiLabel

    if config.get("problem_type") == "multi_label_classification":
        return MultiLabel(label_names, config.get("thresholds"))
    return create_task(SINGLE_LABEL, label_names)


def task_of_run(run: dict) -> Task:
    """The task of a run's run_config.json (runs recorded before tasks were single-label)."""
    return create_task(run.get("task", SINGLE_LABEL), run["label_names"])


__all__ = ["MULTI_LABEL", "SINGLE_LABEL", "Task", "create_task", "task_of_run", "task_of_saved_model"]
