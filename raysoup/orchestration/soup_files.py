"""A cooked soup on disk: `soups/<recipe>/` with its `recipe.json` (what it was made of, how,
and from which candidate set), the shards of a weight soup, or an ensemble's member list.
Writing a method's result, reading it back for evaluation, the report and MLflow."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from raysoup import storage
from raysoup.checkpoints import read_manifest
from raysoup.orchestration.reduction import write_soup
from raysoup.reduce import Blend
from raysoup.soup import Candidate, RecipeResult

RECIPE_FILE = "recipe.json"


def integers_source(paths: list[Path], anchor: Candidate | None) -> int | None:
    """With the zero-shot anchor in a soup, integer buffers come from the first fine-tuned
    ingredient: fine-tuning advanced BatchNorm's step counter, so they cannot all match (the
    counter is unused in eval mode and by BatchNorm's default momentum update)."""
    if anchor is None or Path(anchor.path) not in {Path(p) for p in paths}:
        return None
    return next((i for i, p in enumerate(paths) if Path(p) != Path(anchor.path)), None)


def model_name(recipe: str, kind: str) -> str:
    """The results.parquet model name: `<recipe>_soup`, or `ensemble` for the ensemble."""
    return "ensemble" if kind == "ensemble" else f"{recipe}_soup"


def candidate_set(candidates: list[Candidate], anchor: Candidate | None) -> dict:
    """What every soup of a soup stage is cooked from, with its soup id: the candidates and
    the zero-shot anchor by name and tensor-file sha256 (from their manifests). A soup whose
    recorded id differs (ingredients added, removed or replaced) is stale."""
    def digests(cands: list[Candidate]) -> dict[str, str]:
        return {c.name: read_manifest(c.path)["sha256"] for c in sorted(cands, key=lambda c: c.name)}

    members = {"candidates": digests(candidates),
               "anchor": digests([anchor]) if anchor is not None else None}
    text = json.dumps(members, sort_keys=True)
    return {**members, "soup_id": hashlib.sha256(text.encode()).hexdigest()[:16]}


def cooked_soup_id(soup_dir: Path) -> str | None:
    """The soup id recorded in a cooked recipe directory (None: not cooked, or cooked before
    soups recorded their candidate set)."""
    try:
        return json.loads(storage.read_text(Path(soup_dir) / RECIPE_FILE)).get("soup_id")
    except FileNotFoundError:
        return None


def soup_identity(soup_dir: Path) -> tuple[str, str]:
    """(model name, kind) of a cooked recipe directory."""
    meta = json.loads(storage.read_text(soup_dir / RECIPE_FILE))
    kind = meta.get("kind", "soup")
    return meta.get("model") or model_name(meta.get("recipe", soup_dir.name), kind), kind


def ensemble_members(soup_dir: Path) -> list[Path] | None:
    """The member ingredient directories of an ensemble directory; None for anything else."""
    file = Path(soup_dir) / RECIPE_FILE
    try:
        meta = json.loads(storage.read_text(file))
    except FileNotFoundError:
        return None
    if meta.get("kind") != "ensemble":
        return None
    # Stored relative to the ensemble directory, so a moved workdir still resolves.
    return [(Path(soup_dir) / p).resolve() for p in meta["paths"]]


def recipe_files(soups_dir: Path) -> list[Path]:
    """`<soups_dir>/<recipe>/recipe.json` of every complete soup (local or remote workdir)."""
    return [Path(soups_dir) / rel for rel in storage.list_files(soups_dir)
            if rel.count("/") == 1 and rel.endswith(f"/{RECIPE_FILE}")
            and not rel.startswith(".")]


def inference_costs(soups_dir: Path) -> dict[str, int]:
    """model name → forward passes per input, for the models that need more than one."""
    out = {}
    for file in recipe_files(soups_dir):
        meta = json.loads(storage.read_text(file))
        if meta.get("inference_cost", 1) > 1:
            out[soup_identity(file.parent)[0]] = meta["inference_cost"]
    return out


def run_params(meta: dict) -> dict:
    """The scalar facts of a recipe.json (kind, α, inference cost, peak memory...) as MLflow
    params; lists (weights, traces) stay in the recipe.json artifact."""
    flat = {**meta, **{f"memory_{k}": v for k, v in meta.get("memory", {}).items()}}
    skip = {"recipe", "num_shards"}
    return {k: v for k, v in flat.items()
            if k not in skip and isinstance(v, int | float | str | bool)}


def write_result(soup_dir: Path, recipe: str, result: RecipeResult, paths: dict[str, Path],
                 plan: list[list[str]], anchor: Candidate | None = None,
                 cooked_from: dict | None = None) -> Path:
    """A weight soup (shards + index + recipe.json) or an ensemble listing (recipe.json only).
    `cooked_from`: the `candidate_set` it was cooked from, recorded in recipe.json."""
    meta = {"recipe": recipe, "model": model_name(recipe, result.kind), "kind": result.kind,
            "ingredients": result.ingredients, "weights": result.weights,
            "trace": result.trace, **result.info, **(cooked_from or {})}
    members = [paths[name] for name in result.ingredients]
    if result.kind == "ensemble":
        return _write_ensemble(soup_dir, meta, members)
    if result.kind != "soup":
        raise ValueError(f"recipe {recipe}: unknown result kind {result.kind!r}")
    if result.tensor_weights:
        meta["tensor_weights"] = result.tensor_weights
    blend = Blend(tuple(result.weights), result.tensor_weights, result.merge, result.scale,
                  integers_source(members, anchor))
    if result.merge is not None:
        meta["merge"] = {"scale": result.scale, "base": result.ingredients[0]}
    return write_soup(soup_dir, members, blend, plan, meta)


def _write_ensemble(out_dir: Path, meta: dict, members: list[Path]) -> Path:
    with storage.atomic_dir(out_dir) as tmp:
        meta = {**meta, "paths": [os.path.relpath(p, out_dir) for p in members]}
        (tmp / RECIPE_FILE).write_text(json.dumps(meta, indent=2))
    return out_dir
