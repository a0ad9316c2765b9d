"""Ingredients on disk: safetensors + manifest, written atomically, read without unpickling."""

from raysoup.checkpoints.ingredient import (
    FORMAT,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    IngredientError,
    list_ingredients,
    load_state_dict,
    read_manifest,
    verify_ingredient,
    weights_path,
    write_ingredient,
)

__all__ = [
    "FORMAT",
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "IngredientError",
    "list_ingredients",
    "load_state_dict",
    "read_manifest",
    "verify_ingredient",
    "weights_path",
    "write_ingredient",
]
