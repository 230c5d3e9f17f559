"""Shared test setup: an offline, hermetic environment, tiny generated image folders, a local Hub.

The Hub endpoint must be chosen before anything imports huggingface_hub (it reads HF_ENDPOINT at
import), so a free port is picked here, at import time, and the `hub` fixture serves on it. With
no server listening, any stray Hub lookup fails at once instead of hanging in retries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hub_server import LocalHub, free_port
from paths import FOOD101_MINI, HOTDOG_MINI, LITE0_WEIGHTS, REPO_ROOT, SHARED  # noqa: F401 (re-exported)

HERMETIC_ROOT = Path(tempfile.mkdtemp(prefix="hf_finetune_tests_"))
HUB_PORT = free_port()
os.environ.update({
    "HF_ENDPOINT": f"http://127.0.0.1:{HUB_PORT}",
    "HF_HOME": str(HERMETIC_ROOT / "hf_home"),
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_XET": "1",  # the local Hub serves plain HTTP files, not Xet storage
    "HF_FINETUNE_CACHE": str(HERMETIC_ROOT / "hf_finetune_cache"),
    # inductor's kernel cache does not key on ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA: one per session
    "TORCHINDUCTOR_CACHE_DIR": str(HERMETIC_ROOT / "torchinductor"),
    "TOKENIZERS_PARALLELISM": "false",
})

os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_HUB_OFFLINE", None)

# After the environment above: these import datasets and huggingface_hub, which read it once.
from hf_finetune.data.stream_loader import check_exact_resume_support  # noqa: E402
from hf_finetune.errors import UserError  # noqa: E402


def _streams_resume_exactly() -> bool:
    try:
        check_exact_resume_support()
        return True
    except UserError:
        return False


# --streaming's loader refuses datasets < 5.1 (the floors step installs 4.0): the tests that read a stream through
# it run where it works, and test_streaming_run checks the refusal where it does not.
STREAMS_RESUME_EXACTLY = _streams_resume_exactly()
needs_stream_loader = pytest.mark.skipif(not STREAMS_RESUME_EXACTLY, reason="--streaming needs datasets >= 5.1")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(HERMETIC_ROOT, ignore_errors=True)


def make_image_folder(root: Path, classes=("cat", "dog"), per_class=(8, 4), size=(40, 32),
                      splits=("train", "val")) -> Path:
    """A class-per-folder tree of small JPEGs whose colour depends on the class (learnable)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in zip(splits, per_class):
        for index, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.zeros((size[1], size[0], 3), dtype=np.float32)
                base[..., index % 3] = 200
                pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.jpg", quality=90)
    return root


def resolved(config, train_size: int = 200, num_processes: int = 1, pretrained: bool = True,
             layer_groups: bool = True, task: str = "single_label"):
    """`config` resolved as a run of `task` on `train_size` images with this model would resolve it (fp32, no
    workers)."""
    from hf_finetune.config import RunFacts, resolve_config
    from hf_finetune.hardware import Precision
    from hf_finetune.tasks import create_task

    plain_task = create_task(task, ["a"])
    return resolve_config(config, RunFacts(train_size, num_processes, pretrained, layer_groups,
                                           Precision("no", "a test's"), default_num_workers=0,
                                           default_select_metric=plain_task.default_select_metric,
                                           default_loss=plain_task.default_loss))


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "tiny")


@pytest.fixture(scope="session")
def hub():
    with LocalHub(HERMETIC_ROOT / "hub", port=HUB_PORT) as server:
        server.seed_model_repo("timm/tf_efficientnet_lite0.in1k", LITE0_WEIGHTS)
        yield server


@pytest.fixture(scope="session")
def hub_dataset(hub):
    """Factory: `push(repo_id, train=24, validation=6, num_shards=4, multi_label=False, truncated=())` uploads
    generated records (tests/stream_data.py) to the local Hub as a dataset repo of parquet shards, with `datasets`'
    own push_to_hub, and returns the repo id: train ids 0..train-1 in `num_shards` shards, validation ids after
    them in one. Stream it in this process, or in a subprocess with `hub_env`."""
    from stream_data import image_records, push_dataset_repo

    def push(repo_id: str, train: int = 24, validation: int = 6, num_shards: int = 4, multi_label: bool = False,
             truncated=()) -> str:
        splits = {"train": image_records(train, multi_label=multi_label, truncated=truncated),
                  "validation": image_records(validation, multi_label=multi_label, first=train)}
        return push_dataset_repo(repo_id, splits, {"train": num_shards, "validation": 1})
    return push


@pytest.fixture
def hub_env(hub) -> dict:
    """Environment for a subprocess that talks to the local Hub with a token."""
    return {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test_token"}


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


def run_script(script: str, *args, env=None, timeout=900, check=True, processes=1) -> subprocess.CompletedProcess:
    """Run scripts/<script> as a user would, capturing output; processes > 1 launches it with torchrun (gloo).
    A failure shows the whole output: a rank's own error comes before the launcher's long summary."""
    launcher = [*TORCHRUN, str(processes)] if processes > 1 else [sys.executable]
    result = subprocess.run([*launcher, str(REPO_ROOT / "scripts" / script), *map(str, args)],
                            capture_output=True, text=True, env=env or os.environ.copy(), timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result
