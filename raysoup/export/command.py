"""`raysoup export MODEL --format open_clip|safetensors --out DIR`: a soup or an ingredient of a
workdir as files that load without raysoup."""

from __future__ import annotations

import json
from pathlib import Path

from raysoup import storage
from raysoup.export.open_clip_dir import (
    ExportError,
    base_clip_state,
    export_open_clip,
    export_safetensors,
    model_info,
)

FORMATS = ("open_clip", "safetensors")


def _describe(model_dir: Path, workdir: Path) -> dict:
    """Model card facts: recipe, ingredients, weights, and the accuracies raysoup measured."""
    from raysoup.evaluate import results as res

    recipe_file = model_dir / "recipe.json"
    if storage.is_file(recipe_file):
        meta = json.loads(storage.read_text(recipe_file))
        extra = {"model": meta.get("model") or f"{meta['recipe']}_soup", "recipe": meta["recipe"],
                 "ingredients": meta["ingredients"], "weights": meta.get("weights")}
    else:
        extra = {"model": model_dir.name, "recipe": "single model", "ingredients": [model_dir.name]}
    table = res.read_results(workdir / "results.parquet")
    extra["accuracy"] = res.accuracies_of_model(table, extra["model"])
    return extra


def export_model(model_dir: Path, fmt: str, out: Path) -> Path:
    """Export `model_dir` (WORKDIR/soups/<recipe> or WORKDIR/ingredients/<name>) as `fmt`."""
    from raysoup.config import load_experiment
    from raysoup.orchestration.pipeline import CONFIG_SNAPSHOT
    from raysoup.prepare import ZEROSHOT

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    model_dir = Path(model_dir)
    workdir = model_dir.parent.parent
    zeroshot = workdir / "ingredients" / ZEROSHOT
    if not storage.is_file(workdir / CONFIG_SNAPSHOT) or not storage.is_file(
            zeroshot / "manifest.json"):
        raise ExportError(f"{model_dir}: not a soup or ingredient of a raysoup workdir (expected "
                          f"WORKDIR/soups/<recipe> or WORKDIR/ingredients/<name> next to "
                          f"WORKDIR/{CONFIG_SNAPSHOT})")
    info = model_info(zeroshot, **_describe(model_dir, workdir))
    if fmt == "safetensors":
        return export_safetensors(model_dir, info, out)
    cfg = load_experiment(workdir / CONFIG_SNAPSHOT)
    return export_open_clip(model_dir, info, base_clip_state(cfg.model, info), out)
