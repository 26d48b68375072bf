"""The project's default graph builds; the toolchain stage rebuilds bit for bit and verifies.

The kernel stage is built here too (from the store, where tests/integration/test_kernel.py
put it); its own reproducibility test is there, so it is not rebuilt twice more here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PROJECT, mlos

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_default_graph_builds_and_toolchain_is_reproducible(shared_store: Path, tmp_path: Path) -> None:
    first = mlos("build", "--recipes", PROJECT / "recipes", "--out", tmp_path / "a",
                 "--store", shared_store, "--json")
    assert first.code == 0, first.stderr
    assert {"toolchain", "kernel"} <= set(json.loads(first.stdout)["stages"])
    second = mlos("build", "toolchain", "--no-cache", "--recipes", PROJECT / "recipes",
                  "--out", tmp_path / "b", "--store", shared_store, "--json")
    assert second.code == 0, second.stderr
    assert not any(s["cached"] for s in json.loads(second.stdout)["stages"].values())
    manifest_a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest_a["stages"]["toolchain"] == manifest_b["stages"]["toolchain"]

    verified = mlos("build", "toolchain", "--verify", "--recipes", PROJECT / "recipes",
                    "--out", tmp_path / "v", "--store", shared_store)
    assert verified.code == 0, verified.stderr
    report = json.loads((tmp_path / "v" / "verify.json").read_text())
    assert report["reproducible"] is True and report["outputs"]
    assert all(o["verdict"] == "identical" for o in report["outputs"])

    hello = tmp_path / "a" / "toolchain" / "hello"
    run = subprocess.run([hello], capture_output=True, text=True, check=True)
    assert run.stdout.startswith("MLOS toolchain check: 12.")
    assert "gcc-12 12.2.0" in (tmp_path / "a" / "toolchain" / "toolchain.txt").read_text()
