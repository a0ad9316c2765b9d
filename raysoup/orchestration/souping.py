"""Soup stage driver: cook each recipe with the Ray kitchen, write its soup, and keep the
resume rules (a complete soup cooked from the same candidate set is not cooked again)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from raysoup import storage
from raysoup.checkpoints.ingredient import remove_stale_tmp
from raysoup.orchestration import metrics
from raysoup.orchestration.evaluation import EvalPool
from raysoup.orchestration.kitchen import RayKitchen, journal_path
from raysoup.orchestration.reduction import shard_plan
from raysoup.orchestration.soup_files import (
    RECIPE_FILE,
    candidate_set,
    cooked_soup_id,
    write_result,
)
from raysoup.soup import Candidate, get_recipe

log = logging.getLogger(__name__)


def cook_soups(recipes: list[str], candidates: list[Candidate], soups_dir: Path,
               num_shards: int, pool: EvalPool, cfg=None,
               anchor: Candidate | None = None) -> dict[str, Path]:
    """Cook every recipe whose soup directory is not complete yet, or was cooked from another
    candidate set (`candidate_set`: names and sha256); returns recipe → directory.

    `cfg`: the `soup` config section (each method's settings); `anchor`: the zero-shot
    ingredient (WiSE-FT, Model Stock and the task-vector methods start from it)."""
    if not candidates:
        raise ValueError("no ingredients to make soups from; run the sweep first")
    plan = shard_plan(candidates[0].path, num_shards)
    if stale := remove_stale_tmp(soups_dir):
        log.info("soup: removed %d partial soup(s) of an interrupted run", len(stale))
    by_name = {c.name: c for c in [*([anchor] if anchor else []), *candidates]}
    cooked_from = candidate_set(candidates, anchor)
    kitchen = RayKitchen(pool, plan, anchor, soups_dir, cooked_from["soup_id"])
    out = {}
    for name in recipes:
        soup_dir = soups_dir / name
        cooked = cooked_soup_id(soup_dir)
        if cooked == cooked_from["soup_id"]:
            log.info("soup %s: already cooked", name)
            out[name] = soup_dir
            continue
        if cooked is not None or storage.is_file(soup_dir / RECIPE_FILE):
            log.info("soup %s: cooked from other ingredients; cooking again from %d", name,
                     len(candidates))
        result = get_recipe(name, cfg).cook(candidates, kitchen)
        metrics.soup_decisions(name, result.trace)
        log.info("soup %s: %d ingredients %s %s", name, len(result.ingredients),
                 result.ingredients, result.stats or "")
        write_result(soup_dir, name, result, {n: c.path for n, c in by_name.items()}, plan,
                     anchor, cooked_from)
        # A method's journal, if it kept one: the complete soup directory is the record now.
        journal = journal_path(soups_dir, name)
        journal.unlink(missing_ok=True)
        storage.delete(journal)
        out[name] = soup_dir
    return out


def read_recipe(soup_dir: Path) -> dict:
    return json.loads(storage.read_text(soup_dir / RECIPE_FILE))
