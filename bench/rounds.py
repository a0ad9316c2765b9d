"""B6: critical-path evaluation rounds of speculative greedy soup for N candidates and
window M — a simulation over recorded accept/reject outcomes (`soup.greedy.critical_path_rounds`),
not a timing: one round = one batch of up to M parallel held-out evaluations."""

from __future__ import annotations

import math
import random

from raysoup.soup.greedy import critical_path_rounds


def synthetic_outcomes(n: int, accepted: int, seed: int = 0) -> list[bool]:
    """Decisions on the n-1 candidates after the first: `accepted` - 1 acceptances at seeded
    random positions (the paper's ViT-B/32 greedy soup kept ~5 of 72 ingredients)."""
    rng = random.Random(seed)
    out = [False] * (n - 1)
    for i in rng.sample(range(n - 1), accepted - 1):
        out[i] = True
    return out


def run(recorded: list[bool] | None, n: int = 72, accepted: int = 5,
        windows: tuple[int, ...] = (1, 4, 8), seed: int = 0) -> dict:
    sequences = {f"synthetic_n{n}": synthetic_outcomes(n, accepted, seed)}
    if recorded:
        sequences["recorded_B2"] = list(recorded)
    out = {"note": "simulation over accept/reject outcomes, not a timing"}
    for label, acc in sequences.items():
        out[label] = {
            "candidates": len(acc) + 1, "accepted": sum(acc) + 1,
            "rounds": {str(m): critical_path_rounds(acc, m) for m in windows},
            "bound": {str(m): math.ceil(len(acc) / m) + sum(acc) for m in windows},
        }
    out["rounds"] = out[f"synthetic_n{n}"]["rounds"]
    return out
