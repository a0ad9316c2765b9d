"""What every soup recipe sees and returns.

A recipe is pure selection logic: it ranks candidates and decides weights. Anything that
touches weights (averaging, evaluating a candidate soup) goes through a `SoupScorer`, which
the orchestration layer implements with a sharded running sum on Ray and tests implement
with hand-made scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Candidate:
    """A fine-tuned ingredient and its held-out accuracy (from the evaluate stage)."""

    name: str
    heldout: float
    path: Path


@dataclass
class RecipeResult:
    ingredients: list[str]  # in reduction order
    weights: list[float]
    trace: list[dict] = field(default_factory=list)  # per-candidate decisions (greedy)


class SoupScorer(Protocol):
    def start(self, first: Candidate) -> None:
        """Begin a running soup that holds `first` alone."""

    def try_add(self, candidate: Candidate) -> float:
        """Held-out accuracy of the running soup with `candidate` added (uniform weights)."""

    def commit(self) -> None:
        """Keep the candidate of the last `try_add` in the running soup."""


class Recipe(Protocol):
    name: str
    needs_scorer: bool  # False: pure arithmetic on the candidate list (no evaluation)

    def cook(self, candidates: list[Candidate], scorer: SoupScorer | None) -> RecipeResult: ...


def by_heldout(candidates: list[Candidate]) -> list[Candidate]:
    """Best held-out accuracy first; ties broken by name so the order is deterministic."""
    return sorted(candidates, key=lambda c: (-c.heldout, c.name))
