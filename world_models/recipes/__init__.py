"""Generation recipes, one module each, registered as one family (:mod:`.base`).

Importing the package registers the shipped recipes, in the order the experiment lists their rows:
``perturb`` (the negative control), ``recover`` (with its ``recover-parent`` variant) and ``retarget``.
"""

from . import perturb, recover, retarget  # noqa: E402,F401  (registers them)
from .base import (
    Parent,
    Recipe,
    accepted,
    accepted_demos,
    generate_in_simulator,
    generate_in_world_model,
    get_recipe,
    recipe_names,
    recipe_spec,
    recipes,
    register,
    seed_parents,
    unregister,
    written_counts,
)

__all__ = [
    "Parent",
    "Recipe",
    "accepted",
    "accepted_demos",
    "generate_in_simulator",
    "generate_in_world_model",
    "get_recipe",
    "recipe_names",
    "recipe_spec",
    "recipes",
    "register",
    "seed_parents",
    "unregister",
    "written_counts",
]
