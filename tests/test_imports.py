"""What the code imports. Every third-party package is declared in pyproject.toml: what hf_finetune/ and
scripts/ import in the dependencies (or an optional extra, for the optional features), what the tests and the
benchmarks they run import in the dependencies or the `test` extra; a package that arrives only as another
package's dependency may vanish when that package changes. No module imports another one's private names."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
FIRST_PARTY = {"hf_finetune", "benchmarks"}


def _declared(*extras: str, all_extras: bool = False) -> set[str]:
    optional = PROJECT["optional-dependencies"]
    specs = PROJECT["dependencies"] + [spec for extra in (optional if all_extras else extras)
                                       for spec in optional[extra]]
    return {canonicalize_name(Requirement(spec).name) for spec in specs}


def imported_distributions(*folders: str) -> dict[str, set[str]]:
    """{distribution: files that import it} over the third-party top-level imports of the .py files in
    `folders`; an import no installed distribution provides maps to "<not installed: NAME>"."""
    providers = importlib.metadata.packages_distributions()
    files = [path for folder in folders for path in (REPO_ROOT / folder).rglob("*.py")]
    local = FIRST_PARTY | {path.stem for path in files}  # conftest, paths, hub_server: tests import them bare
    found: dict[str, set[str]] = {}
    for path in files:
        for top in _top_level_imports(path) - local - set(sys.stdlib_module_names):
            for distribution in providers.get(top, [f"<not installed: {top}>"]):
                found.setdefault(canonicalize_name(distribution), set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folders, declared", [
    (("hf_finetune", "scripts"), _declared(all_extras=True)),
    (("tests", "benchmarks"), _declared("test")),
])
def test_every_third_party_import_is_declared(folders, declared):
    imported = imported_distributions(*folders)
    missing = {name: sorted(files)[:3] for name, files in imported.items() if name not in declared}
    assert not missing, f"imported by {', '.join(folders)} but not declared in pyproject.toml: {missing}"


def test_the_package_itself_needs_no_extra():
    """Only the optional features (ONNX, the sweep, the demo page, streaming) may import what the plain install
    lacks."""
    optional_only = set(imported_distributions("hf_finetune", "scripts")) - _declared()
    assert optional_only <= _declared("onnx", "sweep", "demo", "stream") - _declared(), optional_only


def test_the_check_sees_an_undeclared_import():
    assert "pyarrow" in imported_distributions("tests") and "pyarrow" not in _declared()


def test_no_module_imports_another_modules_private_names():
    """An underscore name is its module's own business: what another module needs is public (or moved)."""
    private = []
    for path in [*(REPO_ROOT / "hf_finetune").rglob("*.py"), *(REPO_ROOT / "scripts").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hf_finetune"):
                private += [f"{path.relative_to(REPO_ROOT)}: {node.module}.{alias.name}" for alias in node.names
                            if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not private
