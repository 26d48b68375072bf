"""Both sandbox backends give identical outputs for the same stage."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import mlos

STAGES = r"""
[[stage]]
name = "compile"
outputs = ["hello", "facts.txt"]
run = [
  ["sh", "-c", "cc -O2 -o /out/hello /in/src/hello.c"],
  ["sh", "-c", "{ env | grep -v ^PWD= | sort; cat /etc/hostname; ls / ; ls -l /in; umask; id; } > /out/facts.txt"],
]
[stage.inputs]
src = "path:data"
"""


def test_podman_and_bwrap_outputs_are_identical(shared_store: Path, repo: Callable[..., Path],
                                                tmp_path: Path) -> None:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.fail("the podman backend test needs podman and runc: run scripts/install-deps")
    recipes = repo(STAGES)
    (recipes.parent / "data").mkdir()
    (recipes.parent / "data" / "hello.c").write_text('int main(void) { return 0; }\n')
    outs = {}
    for backend in ("bwrap", "podman"):
        result = mlos("build", "--no-cache", "--sandbox", backend, "--recipes", recipes,
                      "--out", tmp_path / backend, "--store", shared_store, "--json")
        assert result.code == 0, result.stderr
        outs[backend] = json.loads(result.stdout)["stages"]["compile"]["outputs"]
    facts = (tmp_path / "podman" / "compile" / "facts.txt").read_text()
    assert "MLOS_STAGE=compile" in facts and "HOSTNAME" not in facts and "container=" not in facts
    assert outs["bwrap"] == outs["podman"], (
        (tmp_path / "bwrap" / "compile" / "facts.txt").read_text() + "\n---\n" + facts)


def test_verify_under_podman_reports_what_it_cannot_vary(shared_store: Path, repo: Callable[..., Path]) -> None:
    recipes = repo("""
        [[stage]]
        name = "leak"
        outputs = ["umask.txt"]
        run = [["sh", "-c", "umask > /out/umask.txt"]]
    """)
    out = recipes.parent / "out"
    result = mlos("build", "--verify", "--sandbox", "podman", "--recipes", recipes, "--out", out,
                  "--store", shared_store)
    assert result.code == 1, result.stderr
    report = json.loads((out / "verify.json").read_text())
    skipped = {s["name"]: s["reason"] for s in report["variations"]["skipped"]}
    assert skipped["user_group"] == "not supported by the podman sandbox"
    assert "umask" in [a["name"] for a in report["variations"]["applied"]]
    assert "+0002" in Path(report["outputs"][0]["report"]["txt"]).read_text()
