"""Soup stage driver: run each recipe, reduce its soup on Ray, evaluate it, log it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ray

from raysoup.orchestration.reduction import add_ingredient, shard_plan, write_soup
from raysoup.soup import Candidate, get_recipe

log = logging.getLogger(__name__)


class RunningSumScorer:
    """`SoupScorer` over a shard-parallel running sum held in Ray's object store.

    Each candidate costs one shard-parallel add (θ_c read once) and one held-out evaluation;
    the candidate soup is sum × 1/k, bit-identical to the final reduction of the same list.
    """

    def __init__(self, actor, plan: list[list[str]], on_try=None):
        self.actor, self.plan, self.on_try = actor, plan, on_try
        self.sum_refs: list | None = None
        self.pending: list | None = None
        self.k = 0

    def start(self, first: Candidate) -> None:
        self.sum_refs, self.k = add_ingredient(None, first.path, self.plan), 1

    def try_add(self, candidate: Candidate) -> float:
        self.pending = add_ingredient(self.sum_refs, candidate.path, self.plan)
        correct, n = ray.get(self.actor.evaluate_sum.remote(self.pending, 1.0 / (self.k + 1),
                                                            ["heldout"]))["heldout"]
        if self.on_try:
            self.on_try(candidate.name, correct / n)
        return correct / n

    def commit(self) -> None:
        self.sum_refs, self.pending, self.k = self.pending, None, self.k + 1


def soup_model_name(recipe: str) -> str:
    return f"{recipe}_soup"


def cook_soups(recipes: list[str], candidates: list[Candidate], soups_dir: Path,
               num_shards: int, actor) -> dict[str, Path]:
    """Cook every recipe whose soup directory is not complete yet; returns recipe → directory."""
    if not candidates:
        raise ValueError("no ingredients to make soups from; run the sweep first")
    plan = shard_plan(candidates[0].path, num_shards)
    by_name = {c.name: c for c in candidates}
    out = {}
    for name in recipes:
        soup_dir = soups_dir / name
        if (soup_dir / "recipe.json").exists():
            log.info("soup %s: already cooked", name)
            out[name] = soup_dir
            continue
        recipe = get_recipe(name)
        scorer = RunningSumScorer(actor, plan, on_try=lambda c, a: log.info(
            "  greedy: tried %s → held-out %.4f", c, a)) if recipe.needs_scorer else None
        result = recipe.cook(candidates, scorer)
        log.info("soup %s: %d ingredients %s", name, len(result.ingredients), result.ingredients)
        write_soup(soup_dir, [by_name[i].path for i in result.ingredients], result.weights, plan, {
            "recipe": name, "ingredients": result.ingredients, "weights": result.weights,
            "trace": result.trace,
        })
        out[name] = soup_dir
    return out


def read_recipe(soup_dir: Path) -> dict:
    return json.loads((soup_dir / "recipe.json").read_text())
