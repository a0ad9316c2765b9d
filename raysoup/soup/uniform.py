"""Uniform soup: the plain average of every ingredient."""

from __future__ import annotations

from raysoup.soup.base import Candidate, RecipeResult, SoupScorer


class UniformSoup:
    name = "uniform"
    needs_scorer = False

    def cook(self, candidates: list[Candidate], scorer: SoupScorer | None = None) -> RecipeResult:
        if not candidates:
            raise ValueError("uniform soup needs at least one ingredient")
        names = sorted(c.name for c in candidates)
        return RecipeResult(ingredients=names, weights=[1.0 / len(names)] * len(names))
