"""Ingredients on disk: safetensors + manifest, written atomically, read without unpickling;
import of foreign checkpoints (importer.py)."""

from raysoup.checkpoints.importer import (
    CheckpointImportError,
    Imported,
    Target,
    experiment_target,
    import_checkpoint,
    import_checkpoints,
    read_checkpoint,
)
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
    "CheckpointImportError",
    "Imported",
    "IngredientError",
    "Target",
    "experiment_target",
    "import_checkpoint",
    "import_checkpoints",
    "list_ingredients",
    "load_state_dict",
    "read_checkpoint",
    "read_manifest",
    "verify_ingredient",
    "weights_path",
    "write_ingredient",
]
