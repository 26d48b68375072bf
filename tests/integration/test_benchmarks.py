"""Every benchmark runs, in its --quick mode, so none can rot. (They print figures; the
suite asserts only that each ran to the end and printed its ratio against its baseline.)

Collected last (tests/conftest.py): by then the stages they measure are in the test store.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import PROJECT, suite_store

pytestmark = [pytest.mark.slow, pytest.mark.root]

BENCHMARKS = sorted(p.stem for p in (PROJECT / "benchmarks").glob("*.py") if p.stem != "__init__")


def test_every_benchmark_is_exercised() -> None:
    assert set(BENCHMARKS) == {"cli", "cluster", "diff", "engine", "flatcar", "images", "kernel", "rebuild", "sbom",
                               "store", "verify"}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_quick(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOS_REPRO")}
    env["MLOS_REPRO_STORE"] = str(suite_store())
    p = subprocess.run([sys.executable, f"benchmarks/{name}.py", "--quick"], cwd=PROJECT, env=env,
                       capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"\d\.\d+x\b", p.stdout), f"no ratio against a baseline printed:\n{p.stdout}"
