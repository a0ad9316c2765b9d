"""Proposals of the soup-aware search (`sweep.search: soup`); pure, no Tune.

A trial's objective is what it did to the anytime soup (`soup/anytime.py`): joined (or
restarted it) or was rejected. Trial i is proposed from the offers of trials 0..i-L (L: the
sweep's max_concurrent, the trials that may still be running), each drawn with its own
generator seeded by (seed, i), so the proposals are the same for a given seed whatever the
timing, and a resumed sweep proposes what the first one would have.

After `initial` random draws, a share `explore` of the proposals are fresh draws; the others
perturb the strongest member of the current soup (`Dist.perturb`: continuous hyper-parameters
moved by `step` of their range, in log space for loguniform; choices redrawn half the time;
integers redrawn, so seeds stay diverse), keeping of a few perturbations the one farthest from the trials the soup
rejected: the search stays in the region whose ingredients join and stops proposing where they
are rejected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raysoup.config import SoupSearchCfg
from raysoup.search.distributions import ABSENT, as_dist
from raysoup.soup.anytime import REJECTED, Offer

CANDIDATES = 16


def draw(space: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A random configuration (Tune's distributions: loguniform/uniform/randint in [lo, hi))."""
    return {name: as_dist(space[name]).draw(rng) for name in sorted(space)}


def distance(space: Mapping[str, Any], a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Over the searched dimensions: continuous ones in units of their range, a differing
    choice 0.5; integers (seeds) do not count (they carry no region)."""
    total = 0.0
    for name, dist in space.items():
        if name in a and name in b:
            total += as_dist(dist).gap2(a[name], b[name])
    return math.sqrt(total)


def perturb(space: Mapping[str, Any], parent: Mapping[str, Any], rng: np.random.Generator,
            step: float) -> dict[str, Any]:
    """Each dimension near the parent's value (`Dist.perturb`), in sorted order: the draws
    from `rng` are the same for a given space."""
    fresh = draw(space, rng)
    return {name: as_dist(space[name]).perturb(parent.get(name, ABSENT), fresh[name], rng, step)
            for name in sorted(space)}


def propose(space: Mapping[str, Any], seed: int, index: int, history: Sequence[Offer],
            settings: SoupSearchCfg) -> dict[str, Any]:
    """Trial `index`'s configuration from the offers of the trials before it (`history`)."""
    rng = np.random.default_rng([seed, index])
    members = set(history[-1].soup) if history else set()
    kept = [o for o in history if o.trial in members]  # the soup's current members
    rejected = [o.hparams for o in history if o.outcome == REJECTED]
    if index < settings.initial or not kept or rng.random() < settings.explore:
        return draw(space, rng)  # explore: a fresh draw, never scored against the others
    # Exploit: perturb the soup's strongest member (its own held-out accuracy), and of a few
    # perturbations keep the one farthest from the rejected trials. Not the one nearest the
    # members: that pulls every proposal onto the first trials' choices.
    parent = max(kept, key=lambda o: (o.heldout or 0.0, -o.index)).hparams
    best, best_score = None, -math.inf
    for _ in range(CANDIDATES):
        cand = perturb(space, parent, rng, settings.step)
        score = min((distance(space, cand, r) for r in rejected), default=0.0)
        if score > best_score:
            best, best_score = cand, score
    return best
