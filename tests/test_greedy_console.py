"""Greedy's console lines: one per decided candidate, saying accepted or rejected with the
soup's held-out accuracy before → after (a speculative score that was dropped is not logged)."""

import logging
from pathlib import Path

from raysoup.soup import Candidate
from raysoup.soup.greedy import GreedySoup


class TableScorer:
    """Held-out accuracy by member set, from a table."""

    def __init__(self, table):
        self.table, self.members, self.scored = table, [], []

    def start(self, first):
        self.members = [first.name]

    def score(self, window):
        self.scored += [c.name for c in window]
        return [self.table[frozenset([*self.members, c.name])] for c in window]

    def commit(self, cand):
        self.members.append(cand.name)


def test_each_candidate_logged_once_with_its_decision(caplog):
    cands = [Candidate("a", 0.80, Path("a")), Candidate("b", 0.79, Path("b")),
             Candidate("c", 0.78, Path("c"))]
    table = {frozenset("ab"): 0.82, frozenset("ac"): 0.70,  # b accepted, then c again
             frozenset("abc"): 0.81}
    scorer = TableScorer(table)
    with caplog.at_level(logging.INFO, logger="raysoup"):
        result = GreedySoup(speculation=2).select(cands, scorer)
    assert result.ingredients == ["a", "b"]
    assert scorer.scored == ["b", "c", "c"]  # c's first score was against the old soup
    assert [r.getMessage() for r in caplog.records] == [
        "  greedy: starts from a: held-out 0.8000",
        "  greedy: accepted b: held-out 0.8000 → 0.8200",
        "  greedy: rejected c: held-out 0.8200 → 0.8100",
    ]
