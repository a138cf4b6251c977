"""The table of recipes: name -> class, in the order tables list them. Adding a recipe: its module, one line here."""

from __future__ import annotations

from .base import Recipe
from .dho import DHO
from .feature_kd import FeatureKD
from .kdpl import KDPL
from .logit_kd import LogitKD
from .promptkd import PromptKD

REGISTRY: dict[str, type[Recipe]] = {recipe.name: recipe for recipe in (LogitKD, PromptKD, KDPL, DHO, FeatureKD)}
RECIPES = tuple(REGISTRY)


def recipe_class(name: str) -> type[Recipe]:
    """The recipe called ``name``; ``ValueError`` naming the valid ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown recipe {name!r}; valid names: {', '.join(RECIPES)}")
    return REGISTRY[name]
