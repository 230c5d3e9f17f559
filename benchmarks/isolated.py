"""Run one configuration in a fresh interpreter (`python -m benchmarks.measure`), so its peak memory is its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import REPO


def measure_isolated(spec: dict) -> dict:
    """Run one configuration in a fresh interpreter and return what it measured."""
    # The child imports `benchmarks` (and hf_finetune) from this checkout, whatever the caller's directory.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    process = subprocess.run([sys.executable, "-m", "benchmarks.measure", json.dumps(spec)], capture_output=True,
                             text=True, env={**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": path})
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise SystemExit(f"configuration {spec} failed:\n{process.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])
