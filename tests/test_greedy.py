"""Greedy soup: speculation never changes the selection; the journal resumes a killed loop."""

import itertools
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

    # The loss rule's side: a pseudo-random held-out loss per member set as well.
    def _loss(self, members):
        return round(random.Random(f"loss:{self.seed}:{sorted(members)}").uniform(0.2, 0.6), 2)

    def score_with_loss(self, window):
        accs = self.score(window)
        return [(a, self._loss([*self.members, c.name])) for a, c in zip(accs, window)]

    def current_loss(self):
        return self._loss(self.members)


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


@pytest.mark.parametrize("seed", range(20))
def test_loss_rule_keeps_neither_accuracy_nor_loss_worse(seed):
    """`loss_must_not_rise`: each accepted soup has held-out accuracy >= and loss <= the soup
    before it; speculation still never changes the selection."""
    cands = population(seed, 2 + seed % 11)
    seq = GreedySoup(loss_must_not_rise=True).select(cands, RandomSoupScorer(seed))
    spec = GreedySoup(loss_must_not_rise=True, speculation=3).select(cands,
                                                                     RandomSoupScorer(seed))
    assert spec.ingredients == seq.ingredients and spec.trace == seq.trace
    assert seq.info == {"accept_ties": True, "loss_must_not_rise": True}
    kept = [t for t in seq.trace if t["accepted"]]
    assert all(t["loss"] is not None for t in seq.trace)
    for before, after in itertools.pairwise(kept):
        assert after["heldout"] >= before["heldout"] and after["loss"] <= before["loss"]
    # Every rejection by the loss alone would have been an acceptance by accuracy alone.
    current = kept[0]
    for t in seq.trace[1:]:
        if not t["accepted"]:
            assert t["heldout"] < current["heldout"] or t["loss"] > current["loss"]
        else:
            current = t


def test_loss_rule_rejects_what_accuracy_alone_accepts():
    cands = population(11, 12)
    by_acc = GreedySoup().select(cands, RandomSoupScorer(11))
    both = GreedySoup(loss_must_not_rise=True).select(cands, RandomSoupScorer(11))
    assert len(both.ingredients) < len(by_acc.ingredients)
    assert by_acc.info == {"accept_ties": True}  # the paper's rule keeps its records


def test_loss_rule_journal_resumes_and_is_pinned(tmp_path):
    cands = population(5, 10)
    reference = GreedySoup(loss_must_not_rise=True).select(cands, RandomSoupScorer(5))
    journal = DecisionJournal(tmp_path / "greedy.journal")
    with pytest.raises(RuntimeError, match="driver killed"):
        GreedySoup(loss_must_not_rise=True).select(cands, RandomSoupScorer(5, fail_after=5),
                                                   journal)
    resumed = GreedySoup(loss_must_not_rise=True).select(cands, RandomSoupScorer(5), journal)
    assert resumed.ingredients == reference.ingredients and resumed.trace == reference.trace
    assert resumed.stats["replayed"] == 5
    # The journal pins the rule: the accuracy-only rule starts over.
    scorer = RandomSoupScorer(5)
    assert GreedySoup().select(cands, scorer, journal).stats["replayed"] == 0
    assert scorer.evaluations == len(cands) - 1
