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
    info: dict = field(default_factory=dict)  # recipe settings, saved in recipe.json
    # How this run went (evaluation rounds, replayed decisions): logged, not saved, so a
    # resumed soup's recipe.json equals an uninterrupted one's.
    stats: dict = field(default_factory=dict)
    # Per-tensor weights (one per ingredient) overriding `weights` for the tensors named
    # (per-layer learned soup, Model Stock); absent names use `weights`.
    tensor_weights: dict[str, list[float]] | None = None
    # "soup": a weight average is written; "ensemble": no weights, outputs are averaged at
    # inference (N forward passes).
    kind: str = "soup"


class SoupScorer(Protocol):
    def start(self, first: Candidate) -> None:
        """Begin a running soup that holds `first` alone."""

    def score(self, candidates: list[Candidate]) -> list[float]:
        """Held-out accuracy of the running soup plus each candidate alone (uniform weights).

        The candidates are independent of each other, so an implementation may evaluate them
        in parallel (speculative greedy)."""

    def commit(self, candidate: Candidate) -> None:
        """Add `candidate` to the running soup (reusing the sum computed by `score` if any)."""


class Kitchen(Protocol):
    """What the recipes beyond uniform/greedy need: the zero-shot anchor, any weighting scored
    on held-out, per-tensor statistics streamed shard-parallel, and learned mixing."""

    anchor: Candidate | None  # the zero-shot initialisation θ_0 (ingredient "zeroshot")

    def score(self, paths: list[Path], weightings: list[list[float]]) -> list[float]:
        """Held-out accuracy of Σ w_i·θ_i for each weighting (one weight per path)."""

    def per_tensor(self, fn, paths: list[Path]) -> dict:
        """Merged `fn(paths, names)` over the shards of tensor names (fn streams tensors)."""

    def learn(self, paths: list[Path], **settings) -> dict:
        """`learn_coefficients` on the held-out split, where the split lives (an eval actor)."""


def needs_kitchen(recipe) -> bool:
    # An attribute only the recipes beyond uniform/greedy declare.
    return getattr(recipe, "needs_kitchen", False)


class Recipe(Protocol):
    name: str
    needs_scorer: bool  # False: pure arithmetic on the candidate list (no evaluation)

    def cook(self, candidates: list[Candidate], scorer: SoupScorer | None) -> RecipeResult: ...


def by_heldout(candidates: list[Candidate]) -> list[Candidate]:
    """Best held-out accuracy first; ties broken by name so the order is deterministic."""
    return sorted(candidates, key=lambda c: (-c.heldout, c.name))
