"""TIES-merging (Yadav et al., NeurIPS 2023, "Resolving interference when merging models"):
per tensor, 1. trim each task vector τ_i = θ_i − θ_0 to its top-k% entries by magnitude,
2. elect a sign per entry (the sign of the sum of the trimmed vectors), 3. average only the
entries that agree with it (disjoint mean); the soup is θ_0 + λ·merge, λ on held-out.

Trimming is per tensor, as in mergekit (the paper trims each whole task vector; per tensor
keeps the streaming bound: one tensor name at a time), and exact for tensors of any size: each
τ_i keeps exactly k = ⌈density·n⌉ of its n entries (`kept_count`), the k largest magnitudes;
where magnitudes tie at the k-th, the first in index order (a stable sort by descending
magnitude). The trims are found one ingredient at a time, then the merge reads every
ingredient slice by slice (reduce/ties_kernel.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raysoup.reduce.merge import Stream
from raysoup.reduce.ties_kernel import Trim, ties_merge, ties_soup, trim_thresholds
from raysoup.soup.base import Candidate, Kitchen, RecipeResult
from raysoup.soup.task_vectors import cook_task_vectors
from raysoup.soup_settings import TIES_LAMBDAS as DEFAULT_LAMBDAS
from raysoup.soup_settings import TiesSettings


def threshold(theta: torch.Tensor, base: torch.Tensor, density: float) -> Trim | None:
    """How TIES trims τ = θ − θ_0 to its top `density` fraction (None: everything is kept)."""
    return trim_thresholds(lambda: iter([theta]), base, density)[0]


@dataclass(frozen=True)
class TiesMerge:
    density: float

    def __call__(self, name: str, base: torch.Tensor, stream: Stream,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        return ties_merge(stream, base, trim_thresholds(stream, base, self.density), out)

    def soup_files(self, files: np.ndarray, mappings: np.ndarray, n: int, scale: float,
                   out: np.ndarray) -> int:
        """The written soup's tensor from local float32 files in one compiled call: the same
        bits as `__call__` + `raysoup.reduce.merge.axpy` (see TensorMerge)."""
        return ties_soup(files, mappings, n, self.density, scale, out)


class Ties:
    name = "ties"
    Settings = TiesSettings

    def __init__(self, density: float = 0.2, lambdas=DEFAULT_LAMBDAS, search: str = "bracket"):
        self.density, self.lambdas, self.search = density, list(lambdas), search

    def cook(self, candidates: list[Candidate], kitchen: Kitchen | None) -> RecipeResult:
        return cook_task_vectors(self.name, kitchen, candidates, TiesMerge(self.density),
                                 self.lambdas, {"density": self.density}, search=self.search)
