"""How a script's processes exit once a multi-process run is done: with the run's exit code, whatever torch's
threads still do."""

from __future__ import annotations

import subprocess

from conftest import TORCHRUN

# A stand-in for the race CI met (rank 0 aborted after its last line, "eval +flip TTA", and torchrun reported
# the finished run as failed): DDP's reducer keeps the gloo process group, and its worker threads, alive past
# destroy_process_group, and a worker that frees a Python tensor late takes the GIL while the interpreter
# finalizes, which aborts the process. Here the worker frees a Python object whose finalizer takes the GIL over
# and over, so the moment that is rare in a real run is certain.
LATE_GLOO_THREAD = '''
import os
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hf_finetune.cli import run_cli
from hf_finetune.errors import TrainingStopped


class Lingering:
    def __del__(self):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.001)


def main():
    dist.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
    completed = threading.Event()

    def on_completion(future):
        completed.set()
        return Lingering()  # held by nothing but the future, which the gloo worker frees after this returns

    dist.all_reduce(torch.ones(1), async_op=True).get_future().then(on_completion)
    completed.wait()
    dist.destroy_process_group()
    print("rank finished", flush=True)
    # Once a rank exits non-zero torchrun stops the others: each waits for the other's line first (through files,
    # as the process group is gone), so a loaded machine's slower rank is not stopped before it printed.
    here = Path(__file__).parent
    (here / f"finished-{os.environ['RANK']}").touch()
    deadline = time.monotonic() + 120
    while len(list(here.glob("finished-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    if sys.argv[1] == "stopped":
        raise TrainingStopped("stopped by SIGTERM")


run_cli(main)
'''


def _launch(tmp_path, outcome: str) -> subprocess.CompletedProcess:
    script = tmp_path / "late_gloo_thread.py"
    script.write_text(LATE_GLOO_THREAD)
    return subprocess.run([*TORCHRUN, "2", str(script), outcome], capture_output=True, text=True, timeout=300)


def test_a_finished_multi_process_run_exits_0_while_a_gloo_thread_still_needs_python(tmp_path):
    result = _launch(tmp_path, "finished")
    assert result.stdout.count("rank finished") == 2, result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    assert "terminate called" not in result.stderr


def test_a_stopped_multi_process_run_keeps_its_exit_code_while_a_gloo_thread_still_needs_python(tmp_path):
    result = _launch(tmp_path, "stopped")
    assert result.stdout.count("rank finished") == 2, result.stderr
    assert "SIGABRT" not in result.stderr and "terminate called" not in result.stderr, result.stderr[-3000:]
    assert "exitcode  : 75" in result.stderr, result.stderr[-3000:]
    assert result.returncode != 0
