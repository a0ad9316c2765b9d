"""`raysoup export MODEL --format open_clip|safetensors --out DIR`: a soup or an ingredient of a
workdir as files that load without raysoup."""

from __future__ import annotations

from pathlib import Path

from raysoup import storage
from raysoup.export.open_clip_dir import (
    ExportError,
    base_clip_state,
    export_open_clip,
    export_safetensors,
    model_info,
)
from raysoup.models.families import family_of
from raysoup.workdir import (
    CONFIG_SNAPSHOT,
    MANIFEST_FILE,
    IngredientManifest,
    SoupRecord,
    Workdir,
    read_snapshot,
)


def _describe(model_dir: Path, workdir: Path) -> dict:
    """Model card facts: recipe, ingredients, weights, and the accuracies raysoup measured."""
    from raysoup.evaluate import results as res

    record = SoupRecord.read_if_any(model_dir)
    if record is not None:
        extra = {"model": record.name, "recipe": record.recipe,
                 "ingredients": record.ingredients, "weights": record.weights}
    else:
        extra = {"model": model_dir.name, "recipe": "single model", "ingredients": [model_dir.name]}
    table = res.read_results(Workdir(workdir).results)
    extra["accuracy"] = res.accuracies_of_model(table, extra["model"])
    return extra


def export_model(model_dir: Path, fmt: str | None, out: Path, overwrite: bool = False) -> Path:
    """Export `model_dir` (WORKDIR/soups/<recipe> or WORKDIR/ingredients/<name>) as `fmt`
    (None: the family's first format: open_clip, or hf for text).
    An existing `out` raysoup did not write is refused, or with `overwrite` moved aside."""
    model_dir = Path(model_dir)
    workdir = Workdir.of_model(model_dir)
    zeroshot = workdir.zeroshot
    if not storage.is_file(workdir.snapshot) or not storage.is_file(zeroshot / MANIFEST_FILE):
        raise ExportError(f"{model_dir}: not a soup or ingredient of a raysoup workdir (expected "
                          f"WORKDIR/soups/<recipe> or WORKDIR/ingredients/<name> next to "
                          f"WORKDIR/{CONFIG_SNAPSHOT})")
    formats = family_of(IngredientManifest.read(zeroshot).meta).export_formats
    fmt = fmt or formats[0]
    if fmt not in formats:
        raise ExportError(f"--format {fmt!r}: use one of {', '.join(formats)}")
    if family_of(IngredientManifest.read(zeroshot).meta).name == "hf_text":
        from raysoup.export.hf_dir import export_text

        return export_text(model_dir, zeroshot, fmt, out, _describe(model_dir, workdir.root),
                           overwrite)
    info = model_info(zeroshot, **_describe(model_dir, workdir.root))
    if fmt == "safetensors":
        return export_safetensors(model_dir, info, out, overwrite)
    cfg = read_snapshot(workdir.root)
    return export_open_clip(model_dir, info, base_clip_state(cfg.model, info), out,
                            overwrite)
