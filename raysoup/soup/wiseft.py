"""WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): interpolate
between the zero-shot initialisation and a fine-tuned model,

    θ(α) = (1 − α)·θ_zeroshot + α·θ_ft,

with θ_ft the best fine-tuned ingredient by held-out accuracy and α picked on held-out from a
grid (scored as `raysoup.soup.grid_search` says). Ties go to the SMALLER α: at equal held-out (in-distribution) accuracy, the point closer to
the zero-shot model is the one WiSE-FT found more robust under distribution shift.
"""

from __future__ import annotations

import math

from raysoup.soup.base import Candidate, Kitchen, RecipeResult, anchored, by_heldout
from raysoup.soup.grid_search import SEARCHES, search_grid
from raysoup.soup_settings import WISEFT_ALPHAS as DEFAULT_ALPHAS
from raysoup.soup_settings import WiseFTSettings


def pick_alpha(scores: dict[float, float]) -> float:
    """The α with the best held-out accuracy; ties → the smaller α."""
    if not scores:
        raise ValueError("wiseft: no α was scored")
    return min(scores, key=lambda a: (-scores[a], a))


class WiseFT:
    name = "wiseft"
    Settings = WiseFTSettings

    def __init__(self, alphas=DEFAULT_ALPHAS, search: str = "bracket", curve=()):
        alphas = sorted({float(a) for a in alphas})
        if not alphas or not all(0.0 <= a <= 1.0 for a in alphas):
            raise ValueError(f"wiseft alphas must be a non-empty list in [0, 1], got {alphas}")
        if search not in SEARCHES:
            raise ValueError(f"wiseft search must be one of {SEARCHES}, got {search!r}")
        self.alphas, self.search = alphas, search
        self.curve = sorted({float(a) for a in curve})

    def cook(self, candidates: list[Candidate], kitchen: Kitchen | None) -> RecipeResult:
        anchor, tuned = anchored(kitchen, candidates, self.name)
        best = by_heldout(tuned)[0]
        paths = [anchor.path, best.path]
        # α = 0 and α = 1 are the zero-shot and the fine-tuned model themselves, whose held-out
        # accuracies the evaluate stage measured: they are not scored again.
        known = {a: acc for a, acc in ((0.0, anchor.heldout), (1.0, best.heldout))
                 if not math.isnan(acc)}

        def score(alphas: list[float]) -> list[float]:
            todo = [a for a in alphas if a not in known]
            new = kitchen.score(paths, [[1.0 - a, a] for a in todo]) if todo else []
            got = {**known, **dict(zip(todo, new, strict=True))}
            return [got[a] for a in alphas]

        scores = search_grid(self.alphas, score, self.search)
        alpha = pick_alpha(scores)
        trace = [{"alpha": a, "heldout": acc, "chosen": a == alpha} for a, acc in scores.items()]
        info = {"alpha": alpha, "finetuned": best.name, "alphas": self.alphas,
                "search": self.search, "ties": "smaller alpha"}
        # The report's curve: accuracy per split along α (a kitchen that can score only
        # held-out has no curve to give).
        if self.curve and (score_splits := getattr(kitchen, "score_splits", None)):
            accs = score_splits(paths, [[1.0 - a, a] for a in self.curve])
            info["curve"] = [{"alpha": a, **acc} for a, acc in zip(self.curve, accs, strict=True)]
        return RecipeResult(ingredients=[anchor.name, best.name], weights=[1.0 - alpha, alpha],
                            trace=trace, info=info)
