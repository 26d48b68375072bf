"""mypy --strict, ruff, the import layers and the toolkit's declared and locked dependencies are part of the suite."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

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


def _third_party_imports(root: Path) -> set[str]:
    found: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            found |= {n.split(".")[0] for n in names}
    return {n for n in found if n not in sys.stdlib_module_names and n != "mlos_repro"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_third_party_import_of_the_toolkit_is_declared() -> None:
    declared = {_name(r) for r in tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    undeclared = {module: providers.get(module) for module in _third_party_imports(PROJECT / "mlos_repro")
                  if not {_name(d) for d in providers.get(module, [])} & declared}
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    text = (PROJECT / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+) \\$", text, re.M))
    blocks = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", text.split("\n", 1)[1])
    assert all("--hash=sha256:" in block for block in blocks), "a pin without a hash"
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["test"],
              *project["build-system"]["requires"]]
    locked = {_name(n) for n in pins}
    assert {_name(r) for r in wanted} <= locked, {_name(r) for r in wanted} - locked
    # What runs is what is locked.
    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # e.g. the build backend in an environment made otherwise
        assert installed == version, f"{name}: {installed} installed, {version} locked (run make deps)"
