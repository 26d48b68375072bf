"""Selection order and cache keys."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlos_repro.errors import BadInputError
from mlos_repro.graph import CONTRACT_MODULES, PACKAGE, ancestors, cache_key, contract_digest, select
from mlos_repro.recipe.model import Input, InputKind, Stage


def _stage(name: str, *ups: str, run: str = "true") -> Stage:
    return Stage(name=name, builder="default", outputs=("o",), run=((run,),),
                 inputs=tuple(Input(u, InputKind.STAGE, f"stage:{u}", u) for u in ups))


STAGES = {s.name: s for s in (_stage("a"), _stage("b", "a"), _stage("c", "b"), _stage("d"))}


def test_select_takes_dependencies_in_order() -> None:
    assert select(STAGES, ["c"]) == ["a", "b", "c"]
    order = select(STAGES, [])
    assert set(order) == set(STAGES) and order.index("a") < order.index("b") < order.index("c")


def test_ancestors_are_every_stage_depended_on_directly_or_not() -> None:
    assert ancestors(STAGES, "c") == ["a", "b"]
    assert ancestors(STAGES, "a") == []
    diamond = {s.name: s for s in (_stage("x"), _stage("l", "x"), _stage("r", "x"), _stage("top", "l", "r"))}
    assert ancestors(diamond, "top") == ["l", "r", "x"]


def test_select_unknown_stage() -> None:
    with pytest.raises(BadInputError, match="unknown stage"):
        select(STAGES, ["zz"])


def test_cache_key_covers_every_ingredient() -> None:
    base = cache_key(STAGES["b"], "e" * 64, 1, {"a": "sha256:" + "0" * 64})
    assert base == cache_key(STAGES["b"], "e" * 64, 1, {"a": "sha256:" + "0" * 64})
    assert base != cache_key(_stage("b", "a", run="false"), "e" * 64, 1, {"a": "sha256:" + "0" * 64})
    assert base != cache_key(STAGES["b"], "f" * 64, 1, {"a": "sha256:" + "0" * 64})
    assert base != cache_key(STAGES["b"], "e" * 64, 2, {"a": "sha256:" + "0" * 64})
    assert base != cache_key(STAGES["b"], "e" * 64, 1, {"a": "sha256:" + "1" * 64})


# The cache key of one known stage. It changes only when the key's format, the toolkit
# version or the sandbox contract's code (graph.CONTRACT_MODULES) changes — and each such
# change rebuilds every stage for every user, so it must be deliberate: update this value in
# the same commit, and say why in its message.
GOLDEN_KEY = "bc5476ed6172a3b32b9499fc35d3c7ddb69f4f0bcc2e6790e78f61f7a5b6c477"


def test_the_cache_key_of_a_known_stage_changes_only_deliberately() -> None:
    stage = Stage(name="hello", builder="default", outputs=("hello.txt",),
                  run=(("sh", "-c", "cat /in/greeting/msg > /out/hello.txt"),),
                  inputs=(Input("greeting", InputKind.PATH, "path:recipes/data/greeting", "recipes/data/greeting"),))
    key = cache_key(stage, "e" * 64, 1700000000, {"greeting": "tree:" + "0" * 64})
    assert key == GOLDEN_KEY, (
        f"cache keys changed (now {key}): every stored stage will be rebuilt; if that is intended, "
        "set GOLDEN_KEY to it")


def test_the_sandbox_contract_digest_follows_its_code(tmp_path: Path) -> None:
    copy = tmp_path / "mlos_repro"
    for name in CONTRACT_MODULES:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGE / name, copy / name)
    assert contract_digest(copy) == contract_digest()
    for name in CONTRACT_MODULES:
        changed = tmp_path / f"changed-{name.replace('/', '-')}"
        shutil.copytree(copy, changed)
        with (changed / name).open("a") as f:
            f.write("\n# a change to the contract\n")
        assert contract_digest(changed) != contract_digest(), name
