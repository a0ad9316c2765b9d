"""Greedy soup (Wortsman et al. 2022, Recipe 1), with speculative parallel evaluation.

Sort ingredients by held-out accuracy; starting from the best, add each next one if the
held-out accuracy of the uniform average does not drop (optionally: nor its held-out loss).
The scorer keeps a running sum, so a candidate costs one add + one evaluation, not a
re-average of the whole soup.

Speculation: the decision on candidate i+1 depends on candidate i only if i is accepted (the
running soup changes). So each round scores the next M candidates against the current soup in
parallel and commits decisions in order up to and including the first acceptance; the scores
after it are stale and are redone next round. The selection is exactly the sequential one and
the critical path is at most ceil((N-1)/M) + accepted rounds (see `critical_path_rounds`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from raysoup.evaluate.task_metrics import METRICS
from raysoup.soup.base import (
    Candidate,
    DecisionLog,
    Kitchen,
    RecipeResult,
    SoupScorer,
    by_heldout,
)
from raysoup.soup_settings import GreedySettings

log = logging.getLogger(__name__)


class GreedySoup:
    name = "greedy"
    Settings = GreedySettings

    def __init__(self, accept_ties: bool = True, speculation: int = 1,
                 loss_must_not_rise: bool = False, metric: str = "accuracy"):
        # The rule is "does not drop" (>=); the paper's reference code uses ">".
        self.accept_ties = accept_ties
        if speculation < 1:
            raise ValueError(f"speculation must be >= 1, got {speculation}")
        self.speculation = speculation
        self.loss_must_not_rise = loss_must_not_rise
        if metric not in METRICS:
            raise ValueError(f"soup.greedy.metric: unknown metric {metric!r}; valid: "
                             f"{list(METRICS)}")
        self.metric = metric

    def accepts(self, acc: float, best: float, loss: float | None = None,
                best_loss: float | None = None) -> bool:
        if self.loss_must_not_rise and not loss <= best_loss:
            return False
        return acc >= best if self.accept_ties else acc > best

    @property
    def rule(self) -> dict:
        """The acceptance rule (journaled and in recipe.json); the loss and metric keys only
        when not the default, so the paper's rule keeps its records."""
        rule = {"accept_ties": self.accept_ties}
        if self.loss_must_not_rise:
            rule["loss_must_not_rise"] = True
        if self.metric != "accuracy":
            rule["metric"] = self.metric  # the trace's "heldout" values are this metric
        return rule

    def cook(self, candidates: list[Candidate], kitchen: Kitchen | None) -> RecipeResult:
        if kitchen is None:
            raise ValueError("greedy soup needs a kitchen to evaluate candidate soups")
        scorer = (kitchen.running_sum(self.name) if self.metric == "accuracy"
                  else kitchen.running_sum(self.name, metric=self.metric))
        return self.select(candidates, scorer, kitchen.journal(self.name))

    def select(self, candidates: list[Candidate], scorer: SoupScorer | None,
               journal: DecisionLog | None = None) -> RecipeResult:
        """The greedy loop over an incremental `scorer`; journaled decisions are replayed."""
        if not candidates:
            raise ValueError("greedy soup needs at least one ingredient")
        if scorer is None:
            raise ValueError("greedy soup needs a scorer to evaluate candidate soups")
        ranked = by_heldout(candidates, self.metric)
        first, rest = ranked[0], ranked[1:]
        soup, best, best_loss = [first], first.criterion(self.metric), None
        trace = [{"candidate": first.name, "heldout": best, "accepted": True}]
        scorer.start(first)
        if self.loss_must_not_rise:
            best_loss = trace[0]["loss"] = scorer.current_loss()
        what = "held-out" if self.metric == "accuracy" else f"held-out {self.metric}"
        log.info("  %s: starts from %s: %s %.4f", self.name, first.name, what, best)

        # Replay journaled decisions: accepted ones are re-added, nothing is re-evaluated.
        # The journal pins only the rule, not M: speculation never changes a decision.
        past = journal.open(ranked, self.rule) if journal else []
        for entry, cand in zip(past, rest, strict=False):
            if entry["accepted"]:
                scorer.commit(cand)
                soup.append(cand)
                best, best_loss = entry["heldout"], entry.get("loss")
            trace.append(entry)

        i, rounds = len(past), 0
        while i < len(rest):
            window = rest[i : i + self.speculation]
            if self.loss_must_not_rise:
                scores = scorer.score_with_loss(window)
            else:
                scores = [(acc, None) for acc in scorer.score(window)]
            rounds += 1
            for cand, (acc, loss) in zip(window, scores, strict=True):
                accepted = self.accepts(acc, best, loss, best_loss)
                entry = {"candidate": cand.name, "heldout": acc, "accepted": accepted}
                if loss is not None:
                    entry["loss"] = loss
                trace.append(entry)
                if journal:
                    journal.record(entry)
                i += 1
                log.info("  %s", decision_line(self.name, entry, best, best_loss))
                if accepted:
                    scorer.commit(cand)
                    soup.append(cand)
                    best, best_loss = acc, loss
                    break  # later scores in the window were against the old soup
        names = [c.name for c in soup]  # accepted order = reduction order (bitwise match)
        return RecipeResult(
            ingredients=names, weights=[1.0 / len(names)] * len(names), trace=trace,
            info=self.rule,
            stats={"speculation": self.speculation, "rounds": rounds, "replayed": len(past)},
        )


def decision_line(label: str, entry: dict, best: float, best_loss: float | None) -> str:
    """The console line of one decision: the running soup's held-out accuracy before → with
    the candidate (only decided candidates are logged: a speculative score made against a
    soup that changed meanwhile is dropped, and the candidate scored again)."""
    verdict = "accepted" if entry["accepted"] else "rejected"
    line = f"{label}: {verdict} {entry['candidate']}: held-out {best:.4f} → {entry['heldout']:.4f}"
    if "loss" in entry and best_loss is not None:
        line += f", loss {best_loss:.4f} → {entry['loss']:.4f}"
    return line


def critical_path_rounds(accepted: Sequence[bool], m: int) -> int:
    """Evaluation rounds of speculative greedy with window `m` for the given decisions on the
    candidates after the first (a simulation over recorded outcomes: each round scores up to
    `m` candidates in parallel and ends at the first acceptance)."""
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    i, rounds = 0, 0
    while i < len(accepted):
        window = accepted[i : i + m]
        rounds += 1
        i += window.index(True) + 1 if True in window else len(window)
    return rounds


def rounds_bound(accepted: Sequence[bool], m: int) -> int:
    """The issue's bound: ceil((N-1)/M) + number of accepted candidates."""
    return math.ceil(len(accepted) / m) + sum(accepted)
