"""Uniform soup: the plain average of every ingredient."""

from __future__ import annotations

from raysoup.soup.base import Candidate, Kitchen, RecipeResult
from raysoup.soup_settings import Settings


class UniformSoup:
    name = "uniform"
    Settings = Settings

    def cook(self, candidates: list[Candidate], kitchen: Kitchen | None = None) -> RecipeResult:
        if not candidates:
            raise ValueError("uniform soup needs at least one ingredient")
        names = sorted(c.name for c in candidates)
        return RecipeResult(ingredients=names, weights=[1.0 / len(names)] * len(names))
