"""The package's shape, as the README's Architecture section draws it.

The import contracts themselves (layers, no cycles, pure rules, the sandbox apart) are
import-linter's, in pyproject.toml, run by `make test`; these are the checks it cannot make.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "proxy"
SUBPACKAGES = sorted(p.parent.relative_to(ROOT).as_posix().replace("/", ".")
                     for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE)
MAX_LINES = 400


@pytest.mark.parametrize("module", SUBPACKAGES)
def test_each_subpackage_imports_alone(module: str) -> None:
    """In a fresh interpreter, with nothing imported before it: no hidden import order."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("module", SUBPACKAGES)
def test_each_subpackage_says_what_it_owns(module: str) -> None:
    init = ROOT / module.replace(".", "/") / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text()))
    assert docstring is not None, init
    assert len(docstring) >= 120, f"{init}: say what the package owns and what it may import"
    assert "TODO" not in docstring


def test_no_module_is_over_the_size_a_reader_can_hold() -> None:
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}


def test_tests_mirror_the_package() -> None:
    """Every folder of tests/ is a subpackage's, but e2e/ (the end-to-end suites)."""
    folders = {p.name for p in (ROOT / "tests").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders - {"e2e"} <= packages
