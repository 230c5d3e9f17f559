"""A checkpoint's identity: what it must have been made with to be resumed, so that a resumed (or re-run) command
is the run it says it is. It is read from the resolved record (`config.resolve_config`), saved beside each
checkpoint as identity.json, and compared when a run starts from one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from hf_finetune.errors import UserError

# The options a resume may change: they cannot change what is trained or reported. Where the data is read from
# (what it is, is checked by its fingerprints and label names), how fast and in which arithmetic it runs (the same
# computation: workers, cache, memory format, compilation, autocast precision), and where the results go.
RESULT_NEUTRAL = frozenset({
    "data_dir", "data_files", "eval_data_files", "dataset_name", "dataset_config", "cache_dir", "train_split",
    "eval_split", "image_column", "label_column", "max_bad_fraction", "cache", "num_workers", "channels_last",
    "compile", "mixed_precision", "output_dir", "resume", "keep_checkpoints", "push_to_hub", "hub_public", "report_to"})


def run_identity(config, label_names: list[str], fingerprints: tuple[str, str], num_processes: int) -> dict:
    """What a checkpoint must have been made with to be resumed: every option of the resolved record except the
    RESULT_NEUTRAL ones, the data (fingerprints of the train and eval splits, the classes) and the process count."""
    options = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)
               if field.init and field.name not in RESULT_NEUTRAL}
    return {**options, "label_names": label_names, "train_data": fingerprints[0], "eval_data": fingerprints[1],
            "num_processes": num_processes}


def check_identity(path: Path, identity: dict) -> None:
    """Refuse, in one line naming each difference, to resume a checkpoint made with other training options, data,
    classes or process layout. More --epochs are allowed on a constant schedule only: there the longer run is
    the same run continued, while a cosine schedule (or a warm-up share) was planned for the epochs it had."""
    saved = json.loads((path / "identity.json").read_text())
    start_over = ("pass --resume none to start over (the earlier run is moved aside into "
                  "OUTPUT_DIR/previous-run-<time>/) or use another --output-dir")
    if "optimizer" not in saved:
        raise UserError(f"cannot resume {path}: it was made by an older hf_finetune that did not record every "
                        f"training option; {start_over}")
    differences = [_difference(key, saved.get(key), value) for key, value in identity.items()
                   if saved.get(key) != value and not _more_epochs_allowed(key, saved, identity)]
    if differences:
        raise UserError(f"cannot resume {path}: it was made with other settings: {'; '.join(differences)}; rerun "
                        f"with the original flags, or {start_over}")


def _more_epochs_allowed(key: str, saved: dict, identity: dict) -> bool:
    return key == "epochs" and identity["lr_scheduler"] == "constant" and identity["epochs"] > saved["epochs"]


def _difference(key: str, saved, now) -> str:
    if key in ("train_data", "eval_data"):
        return f"{key}: other images (fingerprint {saved}, now {now})"
    if key in ("label_names", "num_processes"):
        return f"{key} {saved} (now {now})"
    return f"--{key.replace('_', '-')} {_shown(saved)} (now {_shown(now)})"


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
