"""Output-space ensemble: the baseline soups are measured against (Wortsman et al. 2022).

Not a weight average: every ingredient runs on every input and their logits are averaged (the
paper's "logit ensemble"), so inference costs N forward passes. The recipe only lists the
members; evaluation (`Evaluator.ensemble_score`) loads them one at a time.
"""

from __future__ import annotations

from raysoup.soup.base import Candidate, Kitchen, RecipeResult
from raysoup.soup_settings import Settings


class Ensemble:
    name = "ensemble"
    Settings = Settings

    def cook(self, candidates: list[Candidate], kitchen: Kitchen | None = None) -> RecipeResult:
        if not candidates:
            raise ValueError("an ensemble needs at least one ingredient")
        names = sorted(c.name for c in candidates)
        return RecipeResult(
            ingredients=names, weights=[1.0 / len(names)] * len(names), kind="ensemble",
            info={"inference_cost": len(names), "combine": "mean logits"},
        )
