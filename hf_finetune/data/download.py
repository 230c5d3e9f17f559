"""Download, verify and extract the d2l hotdog archive once into a cache folder.

Hand-written because the archive lives on d2l's data server, not on the Hub, so neither
`huggingface_hub` nor `datasets` can fetch it; the logic mirrors d2l's own `download_extract`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from hf_finetune.errors import UserError

D2L_DATA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/"
HOTDOG_URL = D2L_DATA_URL + "hotdog.zip"
HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"
# Offline, DNS fails at once; a reachable but silent server must not hang the run either.
DOWNLOAD_TIMEOUT_S = 15


def default_cache_dir() -> Path:
    return Path(os.environ.get("HF_FINETUNE_CACHE", Path.home() / ".cache" / "hf_finetune"))


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, dest: Path, sha1: str) -> Path:
    """Fetch `url` to `dest` unless a file with the right SHA-1 is already there."""
    if dest.is_file() and sha1_of(dest) == sha1:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(dest.suffix + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise UserError(
            f"could not download {url} ({reason}); offline or behind a firewall? "
            "Pass --data-dir PATH to a folder of class sub-folders instead"
        ) from None
    actual = sha1_of(partial)
    if actual != sha1:
        partial.unlink()
        raise UserError(f"{url} downloaded with SHA-1 {actual}, expected {sha1}; the file is corrupt or "
                        "has changed: retry, or pass --data-dir PATH")
    os.replace(partial, dest)
    return dest


def download_and_extract(url: str, sha1: str, cache_dir: Path) -> Path:
    """Return the folder the verified zip extracts to, extracting it only the first time."""
    archive = download_file(url, cache_dir / Path(url).name, sha1)
    target = cache_dir / f"{archive.stem}-{sha1[:8]}"
    if target.is_dir():
        return target
    # Extract beside the target and rename, so an interrupted extraction is never mistaken for a done one.
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".extract-"))
    try:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def hotdog_dir(cache_dir: Path) -> Path:
    """The d2l hotdog set: train/{hotdog,not-hotdog} and test/{hotdog,not-hotdog}."""
    return download_and_extract(HOTDOG_URL, HOTDOG_SHA1, cache_dir) / "hotdog"
