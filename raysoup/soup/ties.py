"""TIES-merging (Yadav et al., NeurIPS 2023, "Resolving interference when merging models"):
per tensor, 1. trim each task vector τ_i = θ_i − θ_0 to its top-k% entries by magnitude,
2. elect a sign per entry (the sign of the sum of the trimmed vectors), 3. average only the
entries that agree with it (disjoint mean); the soup is θ_0 + λ·merge, λ on held-out.

Trimming is per tensor, as in mergekit (the paper trims each whole task vector; per tensor
keeps the streaming bound: one tensor name at a time). An entry at the threshold is kept, so
ties at the k-th magnitude may keep a few more than k%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import Field

from raysoup.reduce.merge import Stream
from raysoup.soup.base import Candidate, Kitchen, RecipeResult, Settings
from raysoup.soup.task_vectors import cook_task_vectors, elect_and_average

# The paper: k = 20 % and λ = 1 without validation data; with it, λ from a grid around 1.
DEFAULT_LAMBDAS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]


class TiesSettings(Settings):
    density: float = Field(0.2, gt=0, le=1)  # fraction k of each task vector's entries kept
    lambdas: list[float] = Field(default_factory=lambda: list(DEFAULT_LAMBDAS), min_length=1)


def trim_(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the ⌈density·n⌉ largest-magnitude entries of `tau`, in place."""
    n = tau.numel()
    k = math.ceil(density * n)
    if k >= n or n == 0:
        return tau
    magnitude = tau.abs().reshape(-1)
    threshold = torch.kthvalue(magnitude, n - k + 1).values  # the k-th largest
    return tau.mul_(magnitude.reshape(tau.shape) >= threshold)


@dataclass(frozen=True)
class TiesMerge:
    density: float

    def __call__(self, name: str, base: torch.Tensor, stream: Stream) -> torch.Tensor:
        return elect_and_average(stream, base, lambda i, tau: trim_(tau, self.density))


class Ties:
    name = "ties"
    Settings = TiesSettings

    def __init__(self, density: float = 0.2, lambdas=DEFAULT_LAMBDAS):
        self.density, self.lambdas = density, list(lambdas)

    def cook(self, candidates: list[Candidate], kitchen: Kitchen | None) -> RecipeResult:
        return cook_task_vectors(self.name, kitchen, candidates, TiesMerge(self.density),
                                 self.lambdas, {"density": self.density})
