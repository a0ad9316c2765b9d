"""Proposals of the soup-aware search (`sweep.search: soup`); pure, no Tune.

A trial's objective is what it did to the anytime soup (`soup/anytime.py`): joined (or
restarted it) or was rejected. Trial i is proposed from the offers of trials 0..i-L (L: the
sweep's max_concurrent, the trials that may still be running), each drawn with its own
generator seeded by (seed, i), so the proposals are the same for a given seed whatever the
timing, and a resumed sweep proposes what the first one would have.

After `initial` random draws, a share `explore` of the proposals are fresh draws; the others
perturb the strongest member of the current soup (continuous hyper-parameters moved by `step` of their
range, in log space for loguniform; choices redrawn half the time; integers redrawn, so seeds
stay diverse), keeping of a few perturbations the one farthest from the trials the soup
rejected: the search stays in the region whose ingredients join and stops proposing where they
are rejected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raysoup.config import Choice, LogUniform, RandInt, SoupSearchCfg, Uniform
from raysoup.soup.anytime import REJECTED, Offer

CANDIDATES = 16


def draw(space: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A random configuration (Tune's distributions: loguniform/uniform/randint in [lo, hi))."""
    out: dict[str, Any] = {}
    for name in sorted(space):
        dist = space[name]
        if isinstance(dist, LogUniform):
            lo, hi = dist.loguniform
            out[name] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        elif isinstance(dist, Uniform):
            out[name] = float(rng.uniform(*dist.uniform))
        elif isinstance(dist, RandInt):
            out[name] = int(rng.integers(*dist.randint))
        elif isinstance(dist, Choice):
            out[name] = dist.choice[int(rng.integers(len(dist.choice)))]
        else:
            out[name] = dist
    return out


def _unit(dist: Any, value: Any) -> float | None:
    """A continuous value's position in its range, 0..1 (None: not a continuous dimension)."""
    if isinstance(dist, LogUniform):
        lo, hi = dist.loguniform
        return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
    if isinstance(dist, Uniform):
        lo, hi = dist.uniform
        return (value - lo) / (hi - lo)
    return None


def _from_unit(dist: Any, u: float) -> float:
    u = min(max(u, 0.0), 1.0 - 1e-9)  # Tune's ranges are [lo, hi)
    if isinstance(dist, LogUniform):
        lo, hi = dist.loguniform
        return float(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))
    lo, hi = dist.uniform
    return float(lo + u * (hi - lo))


def distance(space: Mapping[str, Any], a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Over the searched dimensions: continuous ones in units of their range, a differing
    choice 0.5; integers (seeds) do not count (they carry no region)."""
    total = 0.0
    for name, dist in space.items():
        if name not in a or name not in b:
            continue
        ua, ub = _unit(dist, a[name]), _unit(dist, b[name])
        if ua is not None and ub is not None:
            total += (ua - ub) ** 2
        elif isinstance(dist, Choice) and a[name] != b[name]:
            total += 0.25
    return math.sqrt(total)


def perturb(space: Mapping[str, Any], parent: Mapping[str, Any], rng: np.random.Generator,
            step: float) -> dict[str, Any]:
    fresh = draw(space, rng)
    out: dict[str, Any] = {}
    for name in sorted(space):
        dist = space[name]
        u = _unit(dist, parent[name]) if name in parent else None
        if u is not None:
            out[name] = _from_unit(dist, u + rng.normal(0.0, step))
        elif isinstance(dist, Choice) and name in parent and rng.random() < 0.5:
            out[name] = parent[name]
        else:
            out[name] = fresh[name]
    return out


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
    # members: that pulls every proposal onto the first trials' choices (docs/fidelity.md, F7).
    parent = max(kept, key=lambda o: (o.heldout or 0.0, -o.index)).hparams
    best, best_score = None, -math.inf
    for _ in range(CANDIDATES):
        cand = perturb(space, parent, rng, settings.step)
        score = min((distance(space, cand, r) for r in rejected), default=0.0)
        if score > best_score:
            best, best_score = cand, score
    return best
