"""Labels as sets: one label or several per image, for manifests, Hub list columns and label-combination folders.

Every such source first gives each row a list of label names (its `label` column: a list of strings). This
module then chooses the task, checks the labels (the pre-flight) and encodes every split with the same class
indices: single-label as today's `ClassLabel` column, multi-label as a `Sequence(ClassLabel)` column of class
indices per row (the task turns them into multi-hot targets).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from hf_finetune.errors import UserError

logger = logging.getLogger(__name__)

SINGLE_LABEL, MULTI_LABEL = "single-label", "multi-label"


@dataclass
class EncodedLabels:
    splits: dict  # split key (train, eval, test) -> Dataset with an encoded `label` column
    label_names: list[str]
    task: str  # SINGLE_LABEL or MULTI_LABEL
    task_reason: str  # why: the start-up line says "task: <task> (<reason>)"


def sorted_names(labels) -> list[str]:
    """Distinct label names in class-index order: integers numerically (2 before 10), else as strings."""
    distinct = set(labels)
    if distinct and all(str(name).lstrip("-").isdigit() for name in distinct):
        return [str(name) for name in sorted(distinct, key=int)]
    return sorted(map(str, distinct))


def infer_task(lists: dict[str, list[list[str]]], split_names: dict[str, str], forced: str) -> tuple[str, str]:
    """(task, why): multi-label when any row (of train, else of an evaluated split) has no label or several,
    unless --task forces one; --task single-label refuses such rows (it would have to drop labels)."""
    odd = {key: _odd_rows(rows, split_names[key]) for key, rows in lists.items()}
    # Why, in one phrase: train's rows when they decide, else the evaluated split's that do.
    counts = odd["train"] or ", ".join(filter(None, odd.values()))
    if forced == SINGLE_LABEL and counts:
        raise UserError(f"--task single-label, but {counts}: use --task multi-label (or auto), or give each "
                        "image exactly one label")
    if forced == MULTI_LABEL:
        return MULTI_LABEL, "forced by --task multi-label" + (f"; {counts}" if counts else "")
    if forced == SINGLE_LABEL:
        return SINGLE_LABEL, "forced by --task single-label"
    if counts:
        return MULTI_LABEL, counts
    return SINGLE_LABEL, f"every one of {len(lists['train'])} train rows has exactly one label"


def _odd_rows(rows: list[list[str]], split: str) -> str:
    """"3 of 800 train rows have several labels, 2 of 800 have no label", or "" when every row has one."""
    several, none = sum(len(labels) > 1 for labels in rows), sum(not labels for labels in rows)
    parts = ([f"{several} of {len(rows)} {split} rows have several labels"] if several else []) + (
        [f"{none} of {len(rows)}{'' if several else f' {split} rows'} have no label"] if none else [])
    return ", ".join(parts)


def preflight(lists: dict[str, list[list[str]]], label_names: list[str], split_names: dict[str, str]) -> None:
    """The label checks before anything is decoded or trained: labels only in an evaluated split (error: the
    model has no output for them), labels with no positive in train (warning: the model can only learn to say
    no, and their scores mean nothing), images without labels (a warning: in a multi-label task they are
    negatives for every label; infer_task refused them for a single-label one). Duplicate rows are checked where
    rows have paths (manifest.check_rows)."""
    known = set(label_names)
    for key, rows in lists.items():
        unknown = sorted({name for labels in rows for name in labels} - known)
        if unknown:
            raise UserError(f"split {split_names[key]} has label(s) that train does not: {', '.join(unknown[:10])}"
                            f"{' ...' if len(unknown) > 10 else ''}; the model would have no output for them: "
                            "add training images with them, or remove them from that split")
    in_train = {name for labels in lists["train"] for name in labels}
    unseen = [name for name in label_names if name not in in_train]
    if unseen:
        logger.warning("label(s) with no positive in train: %s; the model can only learn to say no to them "
                       "(add training images that have them)", ", ".join(unseen[:10]))
    for key, rows in lists.items():
        empty = sum(not labels for labels in rows)
        if empty:  # a single-label task has none: infer_task refused them
            logger.warning("%d of %d %s rows have no label: they train and score as negatives for every label",
                           empty, len(rows), split_names[key])


def encode_label_sets(splits: dict, split_names: dict[str, str], forced_task: str,
                      label_names: Optional[list[str]] = None) -> EncodedLabels:
    """Choose the task, run the pre-flight and encode each split's `label` lists of names with one class index
    per name. `label_names`: the class order when the source has one (a Sequence(ClassLabel)), else the train
    split's distinct labels sorted (integers numerically)."""
    lists = {key: split["label"] for key, split in splits.items()}
    task, reason = infer_task(lists, split_names, forced_task)
    if label_names is None:
        label_names = sorted_names(name for labels in lists["train"] for name in labels)
    preflight(lists, label_names, split_names)
    if len(label_names) < 2:
        raise UserError(f"the training labels are {label_names}: a classifier needs at least two")
    encoded = {key: _encoded(split, label_names, task, split_names[key]) for key, split in splits.items()}
    return EncodedLabels(encoded, label_names, task, reason)


def _encoded(split, label_names: list[str], task: str, what: str):
    import datasets

    features = split.features.copy()
    names = datasets.ClassLabel(names=label_names)
    features["label"] = names if task == SINGLE_LABEL else datasets.Sequence(names)
    # One pass, written to the datasets cache once and reused by later runs.
    return split.map(_indices, batched=True, input_columns="label", features=features,
                     fn_kwargs={"index": {name: index for index, name in enumerate(label_names)},
                                "single": task == SINGLE_LABEL},
                     desc=f"Encoding the labels of {what}")


def _indices(rows: list[list[str]], index: dict[str, int], single: bool) -> dict:
    if single:
        return {"label": [index[labels[0]] for labels in rows]}
    return {"label": [sorted({index[name] for name in labels}) for labels in rows]}
