"""Greedy soup: speculation never changes the selection; the journal resumes a killed loop."""

import math
import random
from pathlib import Path

import pytest

from raysoup.soup import Candidate
from raysoup.soup.greedy import GreedySoup, critical_path_rounds, rounds_bound
from raysoup.soup.journal import DecisionJournal


class RandomSoupScorer:
    """Held-out accuracy of a member set, a pseudo-random function of (seed, set), so the
    sequential and the speculative loop see the same 'world' of soup scores whatever order
    they evaluate in."""

    def __init__(self, seed, fail_after=None):
        self.seed, self.members = seed, []
        self.evaluations, self.fail_after = 0, fail_after

    def _acc(self, members):
        rng = random.Random(f"{self.seed}:{sorted(members)}")
        return round(rng.uniform(0.6, 0.9), 2)  # coarse, so ties (the >= rule) happen

    def start(self, first):
        self.members = [first.name]

    def score(self, window):
        if self.fail_after is not None and self.evaluations + len(window) > self.fail_after:
            raise RuntimeError("driver killed")
        self.evaluations += len(window)
        return [self._acc([*self.members, c.name]) for c in window]

    def commit(self, cand):
        self.members.append(cand.name)


def population(seed, n):
    rng = random.Random(seed)
    return [Candidate(f"t{i:02d}", round(rng.uniform(0.6, 0.8), 2), Path(f"t{i:02d}"))
            for i in range(n)]


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("m", [2, 3, 8])
def test_speculative_equals_sequential(seed, m):
    cands = population(seed, 1 + seed % 13)
    ties = seed % 2 == 0
    seq = GreedySoup(accept_ties=ties).select(cands, RandomSoupScorer(seed))
    spec = GreedySoup(accept_ties=ties, speculation=m).select(cands, RandomSoupScorer(seed))
    assert spec.ingredients == seq.ingredients
    assert spec.trace == seq.trace
    accepted = [t["accepted"] for t in seq.trace[1:]]
    assert spec.stats["rounds"] == critical_path_rounds(accepted, m)
    assert spec.stats["rounds"] <= rounds_bound(accepted, m)
    assert seq.stats["rounds"] == len(cands) - 1


def test_critical_path_rounds_by_hand():
    # 9 candidates after the first, accepted at positions 1 and 6, window 4:
    # round 1 scores 0..3 and commits 0,1 (stops at the acceptance); round 2 scores 2..5;
    # round 3 scores 6..9 and stops at 6; round 4 scores 7,8.
    accepted = [False, True, False, False, False, False, True, False, False]
    assert critical_path_rounds(accepted, 4) == 4
    assert critical_path_rounds(accepted, 1) == 9
    assert critical_path_rounds([False] * 71, 8) == math.ceil(71 / 8)
    with pytest.raises(ValueError):
        critical_path_rounds(accepted, 0)


def test_journal_resumes_after_a_crash(tmp_path):
    cands = population(7, 12)
    reference = GreedySoup().select(cands, RandomSoupScorer(7))
    journal = DecisionJournal(tmp_path / "greedy.journal")
    with pytest.raises(RuntimeError, match="driver killed"):
        GreedySoup(speculation=2).select(cands, RandomSoupScorer(7, fail_after=6), journal)
    decided = len(journal.path.read_text().splitlines()) - 1
    assert 0 < decided <= 6
    # A torn last line (crash mid-write) is dropped, not fatal.
    with open(journal.path, "a") as f:
        f.write('{"candidate": "t0')
    resumed_scorer = RandomSoupScorer(7)
    resumed = GreedySoup(speculation=2).select(cands, resumed_scorer, journal)
    assert resumed.ingredients == reference.ingredients
    assert resumed.trace == reference.trace
    assert resumed.stats["replayed"] == decided
    assert resumed_scorer.evaluations <= len(cands) - 1 - decided + 1  # decided ones not redone


def test_journal_for_other_candidates_is_not_replayed(tmp_path):
    journal = DecisionJournal(tmp_path / "greedy.journal")
    GreedySoup().select(population(1, 5), RandomSoupScorer(1), journal)
    other = population(2, 5)
    scorer = RandomSoupScorer(2)
    result = GreedySoup().select(other, scorer, journal)
    assert result.stats["replayed"] == 0 and scorer.evaluations == 4


def test_journal_for_a_replaced_ingredient_is_not_replayed(tmp_path):
    """Same names and held-out accuracies, other weights (another soup id): start over."""
    cands = population(3, 6)
    GreedySoup().select(cands, RandomSoupScorer(3), DecisionJournal(tmp_path / "j", "id-1"))
    again = RandomSoupScorer(3)
    result = GreedySoup().select(cands, again, DecisionJournal(tmp_path / "j", "id-2"))
    assert result.stats["replayed"] == 0 and again.evaluations == 5
    same = RandomSoupScorer(3)
    result = GreedySoup().select(cands, same, DecisionJournal(tmp_path / "j", "id-2"))
    assert result.stats["replayed"] == 5 and same.evaluations == 0
