"""The labelled images scripts/evaluate.py scores, each with the indices of its labels in the model's label list.

DATA is a manifest (a .csv or .jsonl file, or a folder with manifests named after the splits, train.csv beside
val.csv: its first eval split's, as training picks it; read by data/manifest.py as training reads it), or a
class-per-folder tree (one split's class folders, or a tree of split folders: its first eval split). Folders named
by label combination (`red_dress/`) give their images every label in their name with `label_delimiter` ('_').
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from hf_finetune.config import EVAL_SPLIT_NAMES
from hf_finetune.data.manifest import MANIFEST_SUFFIXES, find_manifest, load_manifest
from hf_finetune.errors import UserError
from hf_finetune.serve.batch_predict import is_image_name

SPLIT_FOLDERS = ("train", *EVAL_SPLIT_NAMES)
LabelledImages = list[tuple[str, list[int]]]  # (image path, indices of its labels)


def find_labelled_images(data: Path, label_names: list[str],
                         label_delimiter: Optional[str] = None) -> tuple[str, LabelledImages]:
    """(the split evaluated, [(path, label indices)]) of DATA. Labels the model does not know are an error."""
    manifest = _manifest_of(data)
    if manifest is not None:
        table = load_manifest(manifest, None, None, label_delimiter, cache_dir=None)
        return manifest.stem, _indexed(list(zip(table["image"], table["label"])), label_names, f"{manifest}: label(s)")
    if not data.is_dir():
        raise UserError(f"{data}: no such folder or manifest; give a class-per-folder tree (DATA/<class>/*.jpg), "
                        "its root, or a .csv/.jsonl manifest")
    folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    names = {p.name for p in folders}
    if names & set(SPLIT_FOLDERS) and not names & set(label_names):
        split = next((name for name in EVAL_SPLIT_NAMES if name in names), None)
        if split is None:
            raise UserError(f"{data} has no {'/'.join(EVAL_SPLIT_NAMES)} folder to evaluate; name one split's folder")
        return split, find_labelled_images(data / split, label_names, label_delimiter)[1]
    rows = [(str(path), _folder_labels(folder.name, label_delimiter)) for folder in folders
            for path in sorted(folder.rglob("*")) if path.is_file() and is_image_name(path)]
    if not rows:
        raise UserError(f"{data}: no images in class folders")
    unknown = f"{data}'s class folders: label(s)" if label_delimiter else f"{data}: class folder(s)"
    return data.name, _indexed(rows, label_names, unknown)


def _manifest_of(data: Path) -> Optional[Path]:
    """DATA itself when it is a manifest file; else the first eval split's manifest in the folder DATA."""
    if data.is_file():
        if data.suffix not in MANIFEST_SUFFIXES:
            raise UserError(f"{data}: a manifest is a .csv or .jsonl file; or give a class-per-folder tree")
        return data
    if not data.is_dir():
        return None
    return next((found for name in EVAL_SPLIT_NAMES for found in [find_manifest(data, name)] if found), None)


def _folder_labels(name: str, delimiter: Optional[str]) -> list[str]:
    return [part for part in name.split(delimiter) if part] if delimiter else [name]


def _indexed(rows: list[tuple[str, list[str]]], label_names: list[str], unknown_what: str) -> LabelledImages:
    index = {name: position for position, name in enumerate(label_names)}
    unknown = sorted({name for _, names in rows for name in names if name not in index})
    if unknown:
        raise UserError(f"{unknown_what} {', '.join(unknown)} are not labels of the model "
                        f"({', '.join(label_names)}); remove them or evaluate a model trained on them")
    return [(path, [index[name] for name in names]) for path, names in rows]
