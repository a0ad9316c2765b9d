"""The merge-method contract: what every soup recipe sees and returns.

A merge method is one class in its own module, listed once in `raysoup.soup.registry`, with
its settings in `raysoup.soup_settings` (the config layer, so a config loads without torch):

    class Ties:
        name = "ties"                      # the recipe name in `soup.recipes`
        Settings = TiesSettings            # its config section, `soup.ties: {...}` (validated)
        def __init__(self, **settings): ...
        def cook(self, candidates, kitchen) -> RecipeResult: ...

A method is pure selection logic: it ranks candidates and decides weights (or an element-wise
merge). Everything that touches weights goes through the `Kitchen`: the orchestration layer
implements it on Ray (sharded reductions, held-out evaluation in eval actors), tests implement
it in-process or with hand-made scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from raysoup.reduce.merge import TensorMerge


@dataclass(frozen=True)
class Candidate:
    """A fine-tuned ingredient and its held-out accuracy (from the evaluate stage)."""

    name: str
    heldout: float
    path: Path
    # Other held-out metrics by name (f1, mcc of a two-class task): what greedy ranks by when
    # `soup.greedy.metric` names one.
    metrics: dict[str, float] = field(default_factory=dict, hash=False, compare=False)

    def criterion(self, metric: str) -> float:
        """Held-out `metric` of this ingredient (accuracy: `heldout`)."""
        if metric == "accuracy":
            return self.heldout
        if metric not in self.metrics:
            raise ValueError(f"ingredient {self.name} has no held-out {metric}: greedy by "
                             f"{metric} needs a two-class task's evaluated ingredients")
        return self.metrics[metric]


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
    # An element-wise task-vector merge: the soup is θ_0 + scale·merge(τ) per tensor with
    # ingredients[0] = θ_0 (`raysoup.reduce.merge`); `weights` then only documents the mix.
    merge: TensorMerge | None = None
    scale: float = 1.0


class SoupScorer(Protocol):
    """Greedy's incremental scorer: a running sum, so a candidate costs one add + one eval."""

    def start(self, first: Candidate) -> None:
        """Begin a running soup that holds `first` alone."""

    def score(self, candidates: list[Candidate]) -> list[float]:
        """Held-out accuracy (or the metric the scorer was made for: `Kitchen.running_sum`)
        of the running soup plus each candidate alone (uniform weights).

        The candidates are independent of each other, so an implementation may evaluate them
        in parallel (speculative greedy)."""

    def commit(self, candidate: Candidate) -> None:
        """Add `candidate` to the running soup (reusing the sum computed by `score` if any)."""

    # Needed only by greedy's `loss_must_not_rise` (a scorer without them serves the
    # accuracy-only rule):
    def score_with_loss(self, candidates: list[Candidate]) -> list[tuple[float, float]]:
        """As `score`, each with the soup's mean cross-entropy on held-out."""

    def current_loss(self) -> float:
        """The running soup's mean cross-entropy on held-out."""


class DecisionLog(Protocol):
    """Where a method journals its decisions (`raysoup.soup.journal.DecisionJournal`)."""

    def open(self, ranked: list[Candidate], settings: dict) -> list[dict]:
        """The decisions already taken on `ranked` under `settings` (in order); a fresh log if
        none were (or they were taken on other candidates or settings)."""

    def record(self, entry: dict) -> None:
        """Append one decision, durably."""


class Kitchen(Protocol):
    """Everything a method may do with weights, on held-out data, wherever they live."""

    anchor: Candidate | None  # the zero-shot initialisation θ_0 (ingredient "zeroshot")

    def score(self, paths: list[Path], weightings: list[list[float]]) -> list[float]:
        """Held-out accuracy of Σ w_i·θ_i for each weighting (one weight per path)."""

    def score_merge(self, base: Path, paths: list[Path], merge: TensorMerge,
                    scales: list[float]) -> list[float]:
        """Held-out accuracy of θ_0 + s·merge(τ) for each scale s (τ merged once)."""

    # Optional (WiSE-FT's curve for the report; a kitchen without it gives none):
    # def score_splits(self, paths, weightings) -> list[dict[str, float]]:
    #     """Accuracy on every evaluation split of Σ w_i·θ_i for each weighting."""

    def running_sum(self, label: str) -> SoupScorer:
        """A fresh incremental scorer (greedy); `label` names the recipe in progress logs.
        A kitchen that serves `soup.greedy.metric` also takes `metric=` (accuracy, f1, mcc):
        the held-out metric its scores are."""

    def journal(self, label: str) -> DecisionLog | None:
        """Where recipe `label` journals its decisions, so a killed soup stage resumes them."""

    def per_tensor(self, fn, paths: list[Path]) -> dict:
        """Merged `fn(paths, names)` over the shards of tensor names (fn streams tensors)."""

    def learn(self, paths: list[Path], **settings) -> dict:
        """`learn_coefficients` on the held-out split, where the split lives (an eval actor)."""


def integers_source(paths: list[Path], anchor: Candidate | None) -> int | None:
    """With the zero-shot anchor in a soup, integer buffers come from the first fine-tuned
    ingredient: fine-tuning advanced BatchNorm's step counter, so they cannot all match (the
    counter is unused in eval mode and by BatchNorm's default momentum update)."""
    if anchor is None or Path(anchor.path) not in {Path(p) for p in paths}:
        return None
    return next((i for i, p in enumerate(paths) if Path(p) != Path(anchor.path)), None)


def by_heldout(candidates: list[Candidate], metric: str = "accuracy") -> list[Candidate]:
    """Best held-out accuracy (or `metric`) first; ties broken by name so the order is
    deterministic."""
    return sorted(candidates, key=lambda c: (-c.criterion(metric), c.name))


def anchored(kitchen: Kitchen | None, candidates: list[Candidate], method: str,
             at_least: int = 1) -> tuple[Candidate, list[Candidate]]:
    """(θ_0, the fine-tuned candidates by name) for the methods that start from the zero-shot
    model; a clear error if there is no anchor or too few fine-tuned ingredients."""
    if kitchen is None or kitchen.anchor is None:
        raise ValueError(f"{method} needs the zero-shot ingredient 'zeroshot' as its anchor")
    tuned = sorted((c for c in candidates if c.name != kitchen.anchor.name), key=lambda c: c.name)
    if len(tuned) < at_least:
        raise ValueError(f"{method} needs at least {at_least} fine-tuned ingredient(s), "
                         f"got {len(tuned)}")
    return kitchen.anchor, tuned
