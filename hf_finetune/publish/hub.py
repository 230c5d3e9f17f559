"""Publish a finished run to the Hub in one commit, then pull it back by name and check its logits.

The token is never handled here: HfApi and the downloads find it themselves (HF_TOKEN or the cached
login), so it cannot leak into logs, files or the card.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import torch

from hf_finetune.publish.card import read_run_records, write_model_card
from hf_finetune.errors import UserError, first_line
from hf_finetune.files import sha256_of, write_json
from hf_finetune.serve.predict import load_classifier
from hf_finetune.tasks import task_of_run

logger = logging.getLogger(__name__)

# Exactly what a push publishes: the model in timm's Hub layout, its card and the card's picture.
PUSHED_FILES = ("config.json", "model.safetensors", "README.md", "training_curves.png",
                "confusion_matrix.png", "per_label_ap.png", "calibration.png")
# Runs recorded before model selection have no confusion matrix, multi-label runs per-label APs instead of it;
# runs with --calibrate none no calibration.png.
OPTIONAL_FILES = {"confusion_matrix.png", "per_label_ap.png", "calibration.png"}
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
# create_repo, the card's YAML check and the commit POST are not retried by huggingface_hub itself.
RETRY_WAITS = (1.0, 2.0, 4.0, 8.0)
MAX_RETRY_AFTER = 60.0
Result = TypeVar("Result")


def push_to_hub(output_dir: Path, repo_id: str, private: bool = True) -> str:
    """Create `repo_id` if needed, commit the model, card and curves in one commit, verify; the commit URL."""
    from huggingface_hub import HfApi

    output_dir = Path(output_dir)
    check_push_possible(repo_id)
    run, metrics = read_run_records(output_dir)  # also a clear error for a folder that is no finished run
    missing = [name for name in PUSHED_FILES
               if name != "README.md" and name not in OPTIONAL_FILES and not (output_dir / name).is_file()]
    if missing:
        raise UserError(f"{output_dir} lacks {', '.join(missing)}: push the --output-dir of a finished run")

    api = HfApi()
    retry_command = f"python scripts/push.py {output_dir} {repo_id}"
    repo_url = with_retries(f"create the Hub repo {repo_id}", retry_command,
                             lambda: api.create_repo(repo_id, private=private, exist_ok=True))
    repo_id = repo_url.repo_id  # with the namespace the Hub filled in for a bare name
    message = (f"Upload fine-tuned model (eval {task_of_run(run).accuracy_name} "
               f"{metrics['final']['eval_acc']:.4f})")
    # Operations are consumed by a commit attempt, so every retry builds fresh ones (and looks at the repo's
    # export afresh). A retry after a commit whose answer was lost uploads nothing: create_commit drops files the
    # Hub already has, and the export it removed is no longer there to remove.
    commit = with_retries(f"upload {output_dir} to {repo_id}", retry_command,
                           lambda: _commit_run(api, output_dir, repo_id, message))
    verify_pushed(output_dir, repo_id, commit.oid)
    return commit.commit_url


def _commit_run(api, output_dir: Path, repo_id: str, message: str):
    """One commit: the run's files added, the repo's ONNX export removed unless it was made from these weights."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    stale, kept = _repo_export(api, repo_id, sha256_of(output_dir / "model.safetensors"))
    write_model_card(output_dir, repo_id, onnx=kept)  # the card names the real repo, and its export if kept
    return api.create_commit(
        repo_id,
        [CommitOperationAdd(path_in_repo=name, path_or_fileobj=output_dir / name) for name in PUSHED_FILES
         if (output_dir / name).is_file()] + [CommitOperationDelete(path_in_repo=name) for name in stale],
        commit_message=message + ("; remove the ONNX export of other weights" if stale else ""),
    )


def _repo_export(api, repo_id: str, model_sha256: str) -> tuple[list[str], bool]:
    """(the repo's export files made from other weights than `model_sha256`, whether an export of them stays)."""
    from huggingface_hub import hf_hub_download

    from hf_finetune.serve.onnx_model import EXPORT_FILES, INT8_FILES, PREPROCESSOR_FILE

    present = [name for name in api.list_repo_files(repo_id) if name in EXPORT_FILES + INT8_FILES]
    if PREPROCESSOR_FILE in present:
        config = json.loads(Path(hf_hub_download(repo_id, PREPROCESSOR_FILE)).read_text())
        if config.get("weights_sha256") == model_sha256 and set(EXPORT_FILES) <= set(present):
            return [], True
    return present, False


def push_onnx(export_dir: Path, repo_id: str, run_dir: Optional[Path] = None, extra_files: Sequence[str] = ()) -> str:
    """Add EXPORT_DIR's model.onnx + preprocessor.json (and `extra_files` of it: the int8 export) to `repo_id` in
    one commit, with the run's model card regenerated to show onnxruntime usage when `run_dir` (a finished run) is
    given; the commit URL. Refused when the repo's model.safetensors is not the one the export was made from
    (downloaded to compare)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from hf_finetune.serve.onnx_model import EXPORT_FILES, PREPROCESSOR_FILE

    export_dir = Path(export_dir)
    check_push_possible(repo_id)
    files = {name: export_dir / name for name in (*EXPORT_FILES, *extra_files)}
    api = HfApi()
    retry_command = f"python scripts/export.py {run_dir or export_dir} --format onnx --push-to-hub {repo_id}"
    if not with_retries(f"find the Hub repo {repo_id}", retry_command, lambda: api.repo_exists(repo_id)):
        raise UserError(f"no model repo {repo_id} on the Hub (or no access to it): push the model first "
                        f"(scripts/push.py), then its ONNX export")
    exported_from = json.loads(files[PREPROCESSOR_FILE].read_text()).get("weights_sha256")
    if with_retries(f"read {repo_id}'s weights", retry_command, lambda: _weights_sha256(repo_id)) != exported_from:
        raise UserError(f"{repo_id} holds other weights than the export was made from: push the model first "
                        f"(python scripts/push.py {run_dir or 'RUN'} {repo_id}), then its export")
    if run_dir is not None:
        files["README.md"] = write_model_card(run_dir, repo_id, onnx=True)
    commit = with_retries(f"upload the ONNX export to {repo_id}", retry_command, lambda: api.create_commit(
        repo_id, [CommitOperationAdd(path_in_repo=name, path_or_fileobj=path) for name, path in files.items()],
        commit_message="Add ONNX export (model.onnx + preprocessor.json), checked against onnxruntime"))
    return commit.commit_url


def _weights_sha256(repo_id: str) -> Optional[str]:
    """The sha256 of the repo's model.safetensors (None: it has none), downloaded: the Hub states a sha256 only
    for LFS files, and a small model's weights may be a plain git file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from hf_finetune.serve.onnx_model import WEIGHTS_FILE

    try:
        return sha256_of(hf_hub_download(repo_id, WEIGHTS_FILE))
    except EntryNotFoundError:
        return None


def check_push_possible(repo_id: str) -> None:
    """Fail fast (e.g. before training) on a malformed repo id or a missing token; no network access."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UserError(f"invalid repo id {repo_id!r}: {error}") from None
    if get_token() is None:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")


def verify_pushed(output_dir: Path, repo_id: str, revision: str) -> None:
    """Download `repo_id@revision` afresh and require the local model's labels and logits on a fixed batch."""
    local = load_classifier(output_dir)
    # A fresh cache: the check must read what the Hub serves, not files cached by an earlier pull.
    with tempfile.TemporaryDirectory(prefix="hf_finetune_verify_") as cache_dir:
        try:
            pulled = load_classifier(f"hf-hub:{repo_id}@{revision}", cache_dir=Path(cache_dir))
        except UserError as error:
            raise UserError(f"pushed {repo_id}@{revision[:8]} but could not pull it back to verify it ({error})")
    if pulled.label_names != local.label_names:
        raise UserError(f"{repo_id}@{revision[:8]} has labels {pulled.label_names[:5]}..., not the local "
                        f"{local.label_names[:5]}...; run scripts/push.py {output_dir} {repo_id} again")
    batch = fixed_batch(local.model)
    with torch.no_grad():
        expected, actual = local.model(batch), pulled.model(batch)
    if not torch.allclose(expected, actual, rtol=1e-4, atol=1e-5):
        difference = (expected - actual).abs().max().item()
        raise UserError(f"{repo_id}@{revision[:8]} pulled back gives other logits than {output_dir} (max abs "
                        f"difference {difference:.3g}); run scripts/push.py {output_dir} {repo_id} again")


def fixed_batch(model: torch.nn.Module, size: int = 4) -> torch.Tensor:
    """Seeded inputs at the model's own input size: the same batch for the local and the pulled model."""
    from timm.data import resolve_model_data_config

    input_size = resolve_model_data_config(model)["input_size"]
    return torch.randn(size, *input_size, generator=torch.Generator().manual_seed(0))


def with_retries(action: str, retry_command: str, call: Callable[[], Result]) -> Result:
    """`call()`, retried with backoff on transient Hub errors (5xx, 429, network); UserError when it gives up."""
    for attempt, wait in enumerate((*RETRY_WAITS, None), start=1):
        try:
            return call()
        except Exception as error:
            if not _is_hub_failure(error):
                raise
            status = _status_of(error)
            if wait is None or (status is not None and status not in TRANSIENT_STATUS):
                raise UserError(_give_up_message(action, status, _describe(error), attempt, retry_command)) from None
            retry_after = _retry_after(error)
            delay = wait if retry_after is None else min(retry_after, MAX_RETRY_AFTER)
            logger.warning("could not %s (%s); retrying in %.0f s [%d/%d]", action, _describe(error), delay,
                           attempt, len(RETRY_WAITS))
            time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _is_hub_failure(error: Exception) -> bool:
    """An HTTP error answer of the Hub, or a network failure on the way to it. huggingface_hub raises its own
    HfHubHTTPError for answers, but lets its HTTP client's errors through for the network (requests', httpx's or
    httpx2's, by version): those are recognised by the module of the client it uses (`get_session()`), so no
    particular client is imported here."""
    from huggingface_hub import get_session
    from huggingface_hub.errors import HfHubHTTPError

    transport = type(get_session()).__module__.split(".")[0]
    return isinstance(error, (HfHubHTTPError, ConnectionError)) or type(error).__module__.split(".")[0] == transport


def _give_up_message(action: str, status, error_text: str, attempts: int, retry_command: str) -> str:
    if status in (401, 403):
        return (f"could not {action}: the Hub refused the token ({status}); use a token with write access to "
                "that namespace (HF_TOKEN or `hf auth login`)")
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return f"could not {action}{tries}: {error_text}; the local output is intact, retry with `{retry_command}`"


def _status_of(error) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _retry_after(error) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:  # an HTTP-date: fall back to our own backoff
        return None


def _describe(error: Exception) -> str:
    status = _status_of(error)
    text = first_line(error)
    return f"HTTP {status}: {text}" if status and str(status) not in text else text


def push_once(output_dir: Path, repo_id: str, private: bool) -> None:
    """Push, unless this exact model already went to this repo (a re-run pushes nothing twice)."""
    record_path = output_dir / "push.json"
    model_digest = sha256_of(output_dir / "model.safetensors")
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get(repo_id) == model_digest:
        print(f"already pushed to {repo_id}: nothing to push")
        return
    print(f"pushed: {push_to_hub(output_dir, repo_id, private=private)}")
    write_json(record_path, {**record, repo_id: model_digest})
