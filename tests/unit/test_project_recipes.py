"""The project's own recipes load, and their lock is current."""

from __future__ import annotations

from mlos_repro.env.lockfile import locked_environment
from mlos_repro.recipe import load_recipes
from tests.conftest import PROJECT


def test_project_recipes_load_and_lock_is_current() -> None:
    recipes = load_recipes(PROJECT / "recipes")
    assert "toolchain" in recipes.stages
    for name in recipes.builder.environments:
        env, locked = locked_environment(recipes.builder, name)  # raises when stale
        assert locked.packages and env.name == name
