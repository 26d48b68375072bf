"""Recipes: what is built. model.py holds the types, loader.py turns TOML into them."""

from mlos_repro.recipe.loader import load_recipes
from mlos_repro.recipe.model import BuilderConfig, Environment, Input, InputKind, RecipeSet, Stage

__all__ = ["BuilderConfig", "Environment", "Input", "InputKind", "RecipeSet", "Stage",
           "load_recipes"]
