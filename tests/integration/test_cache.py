"""The stage cache: nothing runs twice, a change rebuilds exactly its dependants."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import mlos

GRAPH = """
[[stage]]
name = "up"
outputs = ["up.txt"]
run = [["sh", "/in/script/up.sh"]]
[stage.inputs]
msg = "path:data/msg"
script = "path:data/script"

[[stage]]
name = "down"
outputs = ["down.txt"]
run = [["sh", "-c", "tr a-z A-Z < /in/up/up.txt > /out/down.txt"]]
[stage.inputs]
up = "stage:up"

[[stage]]
name = "other"
outputs = ["other.txt"]
run = [["sh", "-c", "echo independent > /out/other.txt"]]
"""


def _build(recipes: Path, store: Path) -> dict[str, bool]:
    result = mlos("build", "--recipes", recipes, "--out", recipes.parent / "out", "--store", store,
                  "--json")
    assert result.code == 0, result.stderr
    return {name: s["cached"] for name, s in json.loads(result.stdout)["stages"].items()}


def test_cache_hits_and_precise_rebuilds(shared_store: Path, repo: Callable[..., Path],
                                         tmp_path: Path, unique: str) -> None:
    recipes = repo(GRAPH)
    data = recipes.parent / "data"
    (data / "script").mkdir(parents=True)
    (data / "msg").write_text(f"hello {unique}\n")  # unique per run: a cold cache
    (data / "script" / "up.sh").write_text("cat /in/msg > /out/up.txt\n")

    first = _build(recipes, shared_store)
    assert first["up"] is False and first["down"] is False
    out = recipes.parent / "out"
    assert (out / "down" / "down.txt").read_text() == f"HELLO {unique.upper()}\n"

    # A second build executes nothing.
    assert _build(recipes, shared_store) == {"up": True, "down": True, "other": True}

    # Changing one input rebuilds exactly the stages that depend on it.
    (data / "msg").write_text(f"changed {unique}\n")
    assert _build(recipes, shared_store) == {"up": False, "down": False, "other": True}
    assert (out / "down" / "down.txt").read_text().startswith("CHANGED")

    # An upstream rebuild with identical output stops the cascade.
    (data / "script" / "up.sh").write_text("# same output, different script\ncat /in/msg > /out/up.txt\n")
    assert _build(recipes, shared_store) == {"up": False, "down": True, "other": True}

    # --no-cache runs everything again, with identical results.
    before = (out / "manifest.json").read_bytes()
    result = mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store, "--no-cache",
                  "--json")
    assert result.code == 0
    assert not any(s["cached"] for s in json.loads(result.stdout)["stages"].values())
    assert (out / "manifest.json").read_bytes() == before


def test_selecting_a_stage_builds_its_dependencies_only(shared_store: Path,
                                                        repo: Callable[..., Path]) -> None:
    recipes = repo(GRAPH)
    data = recipes.parent / "data"
    (data / "script").mkdir(parents=True)
    (data / "msg").write_text("x\n")
    (data / "script" / "up.sh").write_text("cat /in/msg > /out/up.txt\n")
    result = mlos("build", "down", "--recipes", recipes, "--out", recipes.parent / "out",
                  "--store", shared_store, "--json")
    assert result.code == 0, result.stderr
    assert set(json.loads(result.stdout)["stages"]) == {"up", "down"}
    manifest = json.loads((recipes.parent / "out" / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"up", "down"}
    assert not (recipes.parent / "out" / "other").exists()
