"""Soup stage driver: run each recipe, reduce its soup on Ray, evaluate it, log it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from raysoup import storage
from raysoup.checkpoints.ingredient import remove_stale_tmp
from raysoup.orchestration import metrics
from raysoup.orchestration.evaluation import EvalPool
from raysoup.orchestration.recipes import (
    RayKitchen,
    candidate_set,
    cooked_soup_id,
    write_result,
)
from raysoup.orchestration.reduction import add_ingredient, shard_plan
from raysoup.soup import Candidate, get_recipe
from raysoup.soup.base import needs_kitchen
from raysoup.soup.journal import DecisionJournal

log = logging.getLogger(__name__)


class RunningSumScorer:
    """`SoupScorer` over a shard-parallel running sum held in Ray's object store.

    Each candidate costs one shard-parallel add (θ_c read once) and one held-out evaluation;
    the candidate soup is sum × 1/k, bit-identical to the final reduction of the same list.
    A window of candidates is scored at once: with A actors and M candidates, each candidate
    gets A // M actors that score slices of the held-out split (data parallel), and the
    candidates run side by side (speculation). Counts are summed, so the accuracy is exactly
    that of a single whole-split evaluation.
    """

    def __init__(self, pool: EvalPool, plan: list[list[str]], on_try=None):
        self.pool, self.plan, self.on_try = pool, plan, on_try
        self.sum_refs: list | None = None
        self.pending: dict[str, list] = {}
        self.k = 0
        self.evaluations = 0

    def start(self, first: Candidate) -> None:
        self.sum_refs, self.k = add_ingredient(None, first.path, self.plan), 1

    def score(self, candidates: list[Candidate]) -> list[float]:
        self.pending = {c.name: add_ingredient(self.sum_refs, c.path, self.plan)
                        for c in candidates}
        parts = max(1, len(self.pool) // len(candidates))
        scale = 1.0 / (self.k + 1)
        calls, owner = [], []
        for j, cand in enumerate(candidates):
            refs = self.pending[cand.name]
            for i in range(parts):
                calls.append(lambda a, r=refs, p=(i, parts): a.evaluate_sum.remote(
                    r, scale, ["heldout"], p))
                owner.append(j)
        counts = [[0, 0] for _ in candidates]
        for j, scores in zip(owner, self.pool.run(calls), strict=True):
            correct, n = scores["heldout"]
            counts[j][0] += correct
            counts[j][1] += n
        self.evaluations += len(candidates)
        accs = [c / n for c, n in counts]
        if self.on_try:
            for cand, acc in zip(candidates, accs, strict=True):
                self.on_try(cand.name, acc)
        return accs

    def commit(self, candidate: Candidate) -> None:
        refs = self.pending.pop(candidate.name, None)
        if refs is None:  # replayed from the journal: never scored in this process
            refs = add_ingredient(self.sum_refs, candidate.path, self.plan)
        self.sum_refs, self.pending, self.k = refs, {}, self.k + 1


def soup_model_name(recipe: str) -> str:
    return f"{recipe}_soup"


def journal_path(soups_dir: Path, recipe: str) -> Path:
    # Hidden, next to the soups: a soup directory appears only once complete.
    return soups_dir / f".{recipe}.journal.jsonl"


def cook_soups(recipes: list[str], candidates: list[Candidate], soups_dir: Path,
               num_shards: int, pool: EvalPool, speculation: int = 1, cfg=None,
               anchor: Candidate | None = None) -> dict[str, Path]:
    """Cook every recipe whose soup directory is not complete yet, or was cooked from another
    candidate set (`candidate_set`: names and sha256); returns recipe → directory.

    `cfg`: the `soup` config section (recipe settings); `anchor`: the zero-shot ingredient
    (WiSE-FT and Model Stock interpolate from it)."""
    if not candidates:
        raise ValueError("no ingredients to make soups from; run the sweep first")
    plan = shard_plan(candidates[0].path, num_shards)
    if stale := remove_stale_tmp(soups_dir):
        log.info("soup: removed %d partial soup(s) of an interrupted run", len(stale))
    by_name = {c.name: c for c in [*([anchor] if anchor else []), *candidates]}
    kitchen = RayKitchen(pool, plan, anchor)
    cooked_from = candidate_set(candidates, anchor)
    out = {}
    for name in recipes:
        soup_dir = soups_dir / name
        cooked = cooked_soup_id(soup_dir)
        if cooked == cooked_from["soup_id"]:
            log.info("soup %s: already cooked", name)
            out[name] = soup_dir
            continue
        if cooked is not None or storage.is_file(soup_dir / "recipe.json"):
            log.info("soup %s: cooked from other ingredients; cooking again from %d", name,
                     len(candidates))
        recipe = get_recipe(name, cfg)
        if name == "greedy":
            recipe.speculation = speculation
        journal = DecisionJournal(journal_path(soups_dir, name), cooked_from["soup_id"]) \
            if recipe.needs_scorer else None
        scorer = RunningSumScorer(pool, plan, on_try=lambda c, a, r=name: log.info(
            "  %s: tried %s → held-out %.4f", r, c, a)) if recipe.needs_scorer else None
        if needs_kitchen(recipe):
            scorer = kitchen
        result = recipe.cook(candidates, scorer, journal=journal) if journal else \
            recipe.cook(candidates, scorer)
        metrics.soup_decisions(name, result.trace)
        log.info("soup %s: %d ingredients %s %s", name, len(result.ingredients),
                 result.ingredients, result.stats or "")
        write_result(soup_dir, name, result, {n: c.path for n, c in by_name.items()}, plan,
                     anchor, cooked_from)
        if journal:
            # The complete soup directory is the record now.
            journal.path.unlink(missing_ok=True)
            storage.delete(journal.path)
        out[name] = soup_dir
    return out


def read_recipe(soup_dir: Path) -> dict:
    return json.loads(storage.read_text(soup_dir / "recipe.json"))
