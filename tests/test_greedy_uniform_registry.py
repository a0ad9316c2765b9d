"""Greedy soup's selection on hand-made accuracy tables (strict and tie-accepting), the
uniform soup, and the merge registry (raysoup/soup/registry.py) agreeing with the config's
method sections (raysoup/soup_settings.py)."""
import re
from pathlib import Path

import pytest

from raysoup.config import SoupCfg
from raysoup.soup import Candidate, get_recipe
from raysoup.soup.registry import METHODS
from raysoup.soup_settings import SECTIONS

# One candidate per round: the hand-made tables only hold the sequential loop's soups.
SEQUENTIAL = METHODS["greedy"].Settings(speculation=1)


class TableScorer:
    """Held-out accuracy of a soup looked up from a hand-made table keyed by member set."""

    def __init__(self, table):
        self.table, self.members, self.tried = table, [], None
        self.calls = []

    def start(self, first):
        self.members = [first.name]

    def score(self, window):
        self.calls.extend(c.name for c in window)
        return [self.table[frozenset([*self.members, c.name])] for c in window]

    def commit(self, cand):
        self.members.append(cand.name)


def cands(**heldout):
    return [Candidate(n, a, Path(n)) for n, a in heldout.items()]


def test_greedy_picks_expected_ingredients():
    c = cands(a=0.70, b=0.80, c=0.75, d=0.60)
    table = {
        frozenset("bc"): 0.82,      # accepted: improves on 0.80
        frozenset("bca"): 0.81,     # rejected: drops
        frozenset("bcd"): 0.82,     # accepted: ties count as "does not drop"
    }
    scorer = TableScorer(table)
    result = get_recipe("greedy", SEQUENTIAL).select(c, scorer)
    assert scorer.calls == ["c", "a", "d"]  # tried in held-out order after the best
    assert result.ingredients == ["b", "c", "d"]
    assert result.weights == pytest.approx([1 / 3] * 3)
    assert [t["accepted"] for t in result.trace] == [True, True, False, True]


def test_greedy_strict_rejects_ties():
    from raysoup.soup.greedy import GreedySoup

    c = cands(a=0.5, b=0.6)
    result = GreedySoup(accept_ties=False).select(c, TableScorer({frozenset("ba"): 0.6}))
    assert result.ingredients == ["b"]


def test_uniform_and_registry():
    result = get_recipe("uniform").cook(cands(z=0.1, a=0.2, m=0.3), None)
    assert result.ingredients == ["a", "m", "z"]
    assert result.weights == pytest.approx([1 / 3] * 3)
    valid = re.escape(str(sorted(METHODS)))
    with pytest.raises(ValueError, match=r"unknown soup recipe 'bogus'; valid: " + valid):
        get_recipe("bogus")


def test_every_method_has_its_config_section():
    # The settings live in the config layer (raysoup.soup_settings), the methods in
    # raysoup.soup: one table each, which must name the same methods with the same settings.
    assert list(SECTIONS) == list(METHODS)
    assert {name: m.Settings for name, m in METHODS.items()} == SECTIONS
    assert [n for n in SoupCfg.model_fields if n in SECTIONS] == list(SECTIONS)


def test_greedy_accept_ties_from_config():
    c = cands(a=0.5, b=0.6)
    tie = {frozenset("ba"): 0.6}
    assert get_recipe("greedy", SEQUENTIAL).select(c, TableScorer(tie)).ingredients == ["b", "a"]
    strict = get_recipe("greedy", SoupCfg(greedy={"accept_ties": False, "speculation": 1}))
    assert strict.select(c, TableScorer(tie)).ingredients == ["b"]
