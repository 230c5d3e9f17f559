"""The label column of a Hub dataset as a ClassLabel: one list of class names, and every split (train, eval,
test) encodes a label to the same class index. A column of label lists (multi-label) becomes lists of names
(`label_set_rows`) that label_sets.py encodes.

datasets' own `class_encode_column` sorts integers as strings ("10" before "2") and encodes each split on its
own, and a cast to a ClassLabel takes an integer as the index: neither keeps the splits consistent.
"""

from __future__ import annotations

from hf_finetune.errors import UserError


def class_names(train, column: str) -> list[str]:
    """The label names, in class-index order: a ClassLabel's own names, else the train split's distinct labels
    sorted as what they are (integers numerically: 2 before 10, so integer labels keep their order)."""
    import datasets

    feature = train.features["label"]
    if isinstance(feature, datasets.ClassLabel):
        return feature.names
    if not isinstance(feature, datasets.Value):  # a nested dict, an Image...: lists went to label_set_rows
        raise UserError(f"label column {column!r} holds {type(feature).__name__} values, not classes: pick a "
                        "label column of integers, strings, a ClassLabel or lists of them with --label-column")
    if not feature.dtype.startswith(("int", "uint", "string", "large_string")):
        raise UserError(f"label column {column!r} holds {feature.dtype} values, not classes: a label must be an "
                        "integer, a string or a ClassLabel (cast the column, or pick another with --label-column)")
    return [str(label) for label in sorted(train.unique("label"))]


def class_encoded(split, label_names: list[str], what: str):
    """The split with a ClassLabel `label` of `label_names`, whatever its raw labels were. A ClassLabel split
    must have the same names; raw labels are encoded by name (an integer through its string: cast straight to
    a ClassLabel, an integer would be taken as the index), so a split lacking a class still fits."""
    import datasets

    feature = split.features["label"]
    if isinstance(feature, datasets.ClassLabel):
        if feature.names != label_names:
            raise UserError(f"{what} has labels {feature.names[:5]}..., train {label_names[:5]}...: they must be "
                            "the same classes in the same order")
        return split
    unknown = sorted(set(map(str, split.unique("label"))) - set(label_names))
    if unknown:
        raise UserError(f"{what} has label(s) that train does not: {', '.join(unknown[:10])}")
    features = split.features.copy()
    features["label"] = datasets.ClassLabel(names=label_names)
    # One pass (as class_encode_column makes), written to the datasets cache once and reused by later runs.
    return split.map(_label_indices, batched=True, input_columns="label", features=features,
                     fn_kwargs={"index": {name: index for index, name in enumerate(label_names)}},
                     desc=f"Encoding the labels of {what}")


def _label_indices(labels: list, index: dict[str, int]) -> dict:
    return {"label": [index[str(label)] for label in labels]}


def is_label_list(feature) -> bool:
    """A List / Sequence of ClassLabel, string or integer values: several labels per example."""
    import datasets

    inner = getattr(feature, "feature", None)
    return (isinstance(feature, (datasets.List, datasets.LargeList))
            and (isinstance(inner, datasets.ClassLabel)
                 or isinstance(inner, datasets.Value) and inner.dtype.startswith(("int", "uint", "string", "large_"))))


def label_set_rows(split, delimiter=None):
    """The split with `label` as a list of label names per row, from a ClassLabel, a Value, or a list of either;
    a name is split by `delimiter` when given (folders named by label combination: `red_dress` -> red, dress)."""
    import datasets

    feature = split.features["label"]
    inner = getattr(feature, "feature", feature) if is_label_list(feature) else feature
    if not isinstance(inner, (datasets.ClassLabel, datasets.Value)):
        raise UserError(f"label column holds {type(feature).__name__} values, not classes or lists of classes")
    features = split.features.copy()
    features["label"] = datasets.Sequence(datasets.Value("string"))
    return split.map(_names_of_row, batched=True, input_columns="label", features=features,
                     fn_kwargs={"names": getattr(inner, "names", None), "listed": is_label_list(feature),
                                "delimiter": delimiter},
                     desc="Reading the label names")


def _names_of_row(labels: list, names, listed: bool, delimiter) -> dict:
    def named(value) -> list[str]:
        name = names[value] if names is not None else str(value)
        return [part for part in name.split(delimiter) if part] if delimiter else [name]

    return {"label": [[part for value in (row or []) for part in named(value)] if listed else named(row)
                      for row in labels]}
