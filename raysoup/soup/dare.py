"""DARE (Yu et al., ICML 2024, "Language models are Super Mario"): drop each entry of every
task vector τ_i = θ_i − θ_0 with probability p and rescale the survivors by 1/(1 − p), so each
τ_i keeps its expectation; then merge linearly (task arithmetic, θ_0 + λ·Σ τ̃_i) or with TIES'
sign election and disjoint mean (mergekit's `dare_ties`); λ on held-out.

The drop masks come from a generator seeded by (seed, tensor name, ingredient), so a soup is
the same bits for any shard count and every time it is computed (the scored soup is the
written one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raysoup.reduce.merge import Stream, tensor_generator
from raysoup.soup import task_arithmetic, ties
from raysoup.soup.base import Candidate, Kitchen, RecipeResult
from raysoup.soup.task_vectors import cook_task_vectors, elect_and_average, sum_of
from raysoup.soup_settings import DareSettings


def drop_(tau: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Drop entries of `tau` with probability p and rescale the rest by 1/(1 − p), in place."""
    if p == 0:
        return tau
    keep = torch.rand(tau.shape, generator=generator) >= p
    return tau.mul_(keep).div_(1.0 - p)


@dataclass(frozen=True)
class DareMerge:
    drop: float
    combine: str
    seed: int

    def __call__(self, name: str, base: torch.Tensor, stream: Stream,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        def dropper(i: int, theta: torch.Tensor, b: torch.Tensor):
            # A fresh generator per pass: both passes of the TIES combine draw the same masks.
            generator = tensor_generator(self.seed, name, i)
            return lambda tau: drop_(tau, self.drop, generator)

        if self.combine == "ties":
            return elect_and_average(stream, base, dropper)
        return sum_of(stream, base, dropper, out)


class Dare:
    name = "dare"
    Settings = DareSettings

    def __init__(self, drop: float = 0.5, combine: str = "linear", seed: int = 0,
                 lambdas=None, search: str = "bracket"):
        self.merge, self.search = DareMerge(drop, combine, seed), search
        defaults = ties.DEFAULT_LAMBDAS if combine == "ties" else task_arithmetic.DEFAULT_LAMBDAS
        self.lambdas = list(lambdas or defaults)

    def cook(self, candidates: list[Candidate], kitchen: Kitchen | None) -> RecipeResult:
        m = self.merge
        return cook_task_vectors(self.name, kitchen, candidates, m, self.lambdas,
                                 {"drop": m.drop, "combine": m.combine, "seed": m.seed},
                                 search=self.search)
