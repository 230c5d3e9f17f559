"""Writing files so that a reader (or a run killed mid-write) never sees half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[str], object]) -> None:
    """`write(temporary_path)`, then rename it over `path`: `path` is the old file or the new one, never torn,
    also when several processes write it at once (each its own temporary file: sweeps sharing a folder)."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    write(str(partial))
    os.replace(partial, path)


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda partial: Path(partial).write_text(text, encoding="utf-8"))


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=2, default=str))


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in chunks (weights files can be gigabytes)."""
    import hashlib

    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
