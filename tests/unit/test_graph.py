"""Selection order and cache keys."""

from __future__ import annotations

import pytest

from mlos_repro.errors import BadInputError
from mlos_repro.graph import ancestors, cache_key, select
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
