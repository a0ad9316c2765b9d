"""Task arithmetic (Ilharco et al., ICLR 2023, "Editing models with task arithmetic"):
θ = θ_0 + λ·Σ_i τ_i with τ_i = θ_i − θ_0 and λ picked on held-out from a grid.

With N fine-tunes of one task, λ = 1/N is the uniform soup of the fine-tunes; smaller λ moves
towards the zero-shot model (like WiSE-FT with every ingredient), larger λ extrapolates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raysoup.reduce.merge import Stream
from raysoup.soup.base import Candidate, Kitchen, RecipeResult
from raysoup.soup.task_vectors import cook_task_vectors, sum_of
from raysoup.soup_settings import TASK_ARITHMETIC_LAMBDAS as DEFAULT_LAMBDAS
from raysoup.soup_settings import TaskArithmeticSettings


@dataclass(frozen=True)
class SumOfTaskVectors:
    """m(τ) = Σ τ_i."""

    def __call__(self, name: str, base: torch.Tensor, stream: Stream,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        return sum_of(stream, base, out=out)


class TaskArithmetic:
    name = "task_arithmetic"
    Settings = TaskArithmeticSettings

    def __init__(self, lambdas=DEFAULT_LAMBDAS, search: str = "bracket"):
        self.lambdas, self.search = list(lambdas), search

    def cook(self, candidates: list[Candidate], kitchen: Kitchen | None) -> RecipeResult:
        return cook_task_vectors(self.name, kitchen, candidates, SumOfTaskVectors(),
                                 self.lambdas, {}, linear=True, search=self.search)
