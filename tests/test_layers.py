"""The package's layers (pyproject.toml's import-linter contract): a lower layer never imports a higher one."""
from __future__ import annotations

import shutil
import subprocess

from conftest import REPO_ROOT


def test_import_contract_holds():
    lint = shutil.which("lint-imports")
    assert lint, "import-linter is a test dependency (pip install -e '.[test]')"
    result = subprocess.run([lint, "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout
