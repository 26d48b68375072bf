"""The pipelines as a library: what `build`, `build --verify` and `release` do, without the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mlos_repro import pipelines
from mlos_repro.errors import BadInputError
from mlos_repro.inspect.report import DiffoscopeSettings
from mlos_repro.rebuild.variations import parse_vary
from mlos_repro.sign.keys import DEFAULT_UID, init_keys
from mlos_repro.store import Store
from tests.conftest import PROJECT

TOY = """
[[stage]]
name = "words"
outputs = ["words.txt"]
run = [["sh", "-c", "echo {token} > /out/words.txt"]]

[[stage]]
name = "count"
outputs = ["count.txt", "leak.txt"]
run = [["sh", "-c", "wc -c < /in/words/words.txt > /out/count.txt; hostname > /out/leak.txt"]]
[stage.inputs]
words = "stage:words"
"""


def test_build_then_verify_build_as_library_calls(shared_store: Path, repo: Callable[..., Path],
                                                   unique: str, tmp_path: Path,
                                                   gnupg_key: Callable[[str], Path]) -> None:
    recipes = repo(TOY.replace("{token}", unique))
    progress: list[tuple[str, str]] = []
    options = pipelines.BuildOptions(recipes_dir=recipes, out_dir=tmp_path / "out",
                                     gnupghome=gnupg_key("toy <toy@mlos.example>"))
    built = pipelines.build(options, Store(shared_store), progress=lambda e: progress.append((e.name, e.state)))
    assert ("words", "running") in progress and ("count", "done") in progress
    manifest = json.loads(built.manifest.read_text())
    assert set(manifest["stages"]) == {"words", "count"}
    assert (tmp_path / "out/words/words.txt").read_text() == unique + "\n"
    assert built.summary()["stages"]["count"]["cached"] is False

    checked = pipelines.verify_build(built, parse_vary("-all,+hostname"), DiffoscopeSettings(60, 1 << 20))
    verdicts = {(o.stage, o.output): o.verdict for o in checked.outputs}
    assert verdicts[("words", "words.txt")] == "identical"
    assert verdicts[("count", "count.txt")] == "identical"
    assert verdicts[("count", "leak.txt")] == "differs"
    assert built.summary()["reproducible"] is False
    assert json.loads((tmp_path / "out/verify.json").read_text())["reproducible"] is False


def test_release_refuses_a_build_manifest_it_cannot_read(shared_store: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    init_keys(keys, DEFAULT_UID)
    build_out = tmp_path / "out"
    build_out.mkdir()
    (build_out / "manifest.json").write_text('{"stages": ["not", "a", "table"]}')
    options = pipelines.ReleaseOptions(keys_dir=keys, out_dir=tmp_path / "release", from_dir=build_out,
                                       recipes_dir=PROJECT / "recipes")
    with pytest.raises(BadInputError, match="cannot read the build's manifest"):
        pipelines.release(options, Store(shared_store))
    assert not (tmp_path / "release").exists()
