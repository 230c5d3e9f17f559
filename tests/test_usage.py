"""`--help`'s usage line names the command the user typed, however the tool was started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

CONSOLE_SCRIPT = Path(sys.executable).parent / "hf-finetune"


def _usage(*command) -> str:
    result = subprocess.run([*map(str, command), "--help"], capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.splitlines()[0]


@pytest.mark.parametrize("command, prog", [
    ((sys.executable, "-m", "hf_finetune"), "python -m hf_finetune"),
    ((sys.executable, REPO_ROOT / "scripts" / "finetune.py"), "finetune.py"),
])
def test_usage_line_names_the_command(command, prog):
    assert _usage(*command).startswith(f"usage: {prog} [-h]")


def test_usage_line_of_the_console_script():
    if not CONSOLE_SCRIPT.exists():
        pytest.skip("the package is not installed (pip install -e .): no hf-finetune console script")
    assert _usage(CONSOLE_SCRIPT).startswith("usage: hf-finetune [-h]")
