"""mypy --strict and ruff are part of the suite."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import PROJECT


def test_mypy_strict() -> None:
    p = subprocess.run([sys.executable, "-m", "mypy", "--strict"], cwd=PROJECT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_ruff() -> None:
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "mlos_repro", "tests", "benchmarks", "stage-tools"],
                       cwd=PROJECT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_import_layers() -> None:
    """The package's layers (pyproject's [tool.importlinter]): no module imports from above it."""
    p = subprocess.run([sys.executable, "-m", "importlinter.cli"], cwd=PROJECT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
