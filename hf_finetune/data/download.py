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

from filelock import FileLock

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
    """Fetch `url` to `dest` unless a file with the right SHA-1 is already there. Not safe for processes that
    share `dest` at once: download_and_extract calls it under a file lock."""
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
    """Return the folder the verified zip extracts to, downloading and extracting it only the first time.
    Processes that share the cache (nodes on one disk, ranks on one machine) take turns under a file lock:
    the first downloads and extracts, the others wait and find the folder done."""
    name = Path(url).name
    target = cache_dir / f"{Path(name).stem}-{sha1[:8]}"
    if target.is_dir():  # renamed into place only once extracted from a verified archive
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir / f"{target.name}.lock"):
        if not target.is_dir():
            _extract(download_file(url, cache_dir / name, sha1), target)
    return target


def _extract(archive: Path, target: Path) -> None:
    # Extract beside the target and rename, so an interrupted extraction is never mistaken for a done one.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def hotdog_dir(cache_dir: Path) -> Path:
    """The d2l hotdog set: train/{hotdog,not-hotdog} and test/{hotdog,not-hotdog}."""
    return download_and_extract(HOTDOG_URL, HOTDOG_SHA1, cache_dir) / "hotdog"
