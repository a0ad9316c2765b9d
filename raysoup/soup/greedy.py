"""Greedy soup (Wortsman et al. 2022, Recipe 1).

Sort ingredients by held-out accuracy; starting from the best, add each next one if the
held-out accuracy of the uniform average does not drop. The scorer keeps a running sum, so a
candidate costs one add + one evaluation, not a re-average of the whole soup.
"""

from __future__ import annotations

from raysoup.soup.base import Candidate, RecipeResult, SoupScorer, by_heldout


class GreedySoup:
    name = "greedy"
    needs_scorer = True

    def __init__(self, accept_ties: bool = True):
        # The rule is "does not drop" (>=); the paper's reference code uses ">".
        self.accept_ties = accept_ties

    def cook(self, candidates: list[Candidate], scorer: SoupScorer | None) -> RecipeResult:
        if not candidates:
            raise ValueError("greedy soup needs at least one ingredient")
        if scorer is None:
            raise ValueError("greedy soup needs a scorer to evaluate candidate soups")
        ranked = by_heldout(candidates)
        soup, best = [ranked[0]], ranked[0].heldout
        trace = [{"candidate": ranked[0].name, "heldout": best, "accepted": True}]
        scorer.start(ranked[0])
        for cand in ranked[1:]:
            acc = scorer.try_add(cand)
            accepted = acc >= best if self.accept_ties else acc > best
            if accepted:
                scorer.commit()
                soup.append(cand)
                best = acc
            trace.append({"candidate": cand.name, "heldout": acc, "accepted": accepted})
        names = [c.name for c in soup]  # accepted order = reduction order (bitwise match)
        return RecipeResult(ingredients=names, weights=[1.0 / len(names)] * len(names), trace=trace)
