"""The merge methods' settings: the `soup.<method>` sections of the experiment config.

They sit in the config layer (pydantic only), not beside the methods in `raysoup.soup`, so
that loading a config imports no method and no torch or numba. Each method in
`raysoup.soup` names its class here as its `Settings`; `SECTIONS` lists them in the order the
config writes them (its snapshot and fingerprints depend on that order), and
`raysoup.soup.registry` lists the methods under the same names
(tests/test_greedy_uniform_registry.py checks that the two tables agree).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer


class Settings(BaseModel):
    """A method's settings: its `soup.<name>` config section (unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


GreedyMetric = Literal["accuracy", "f1", "mcc"]


class GreedySettings(Settings):
    # Keep a candidate whose soup does not drop held-out accuracy (>=, the rule);
    # false: only if it improves (>, the paper's reference code).
    accept_ties: bool = True
    # Also require that the soup's held-out cross-entropy does not rise. On a small held-out
    # split accuracy moves in whole images (0.05 points of 2,000), and a candidate that gains
    # one or two of them may still make the soup less sure of the rest: the loss sees that.
    # On ImageNet's 25,000 held-out images the paper's rule alone suffices.
    loss_must_not_rise: bool = False
    # Candidates scored side by side per round (the selection is the same for any value).
    speculation: int = Field(2, ge=1)
    # The held-out criterion that ranks the ingredients and decides each candidate: GLUE's
    # per-task metric (F1 of class 1 for MRPC, Matthews correlation for CoLA). F1 and MCC
    # are taken for two-class tasks only (`check_task`).
    metric: GreedyMetric = "accuracy"

    @model_serializer(mode="wrap")
    def _omit_default_metric(self, handler):
        # Added after configs were first written: at its default it stays out of the dump,
        # so an existing config's snapshot keeps its bytes (config.OmitsNewDefaults' rule).
        data = handler(self)
        if self.metric == "accuracy":
            data.pop("metric", None)
        return data

    def check_task(self, num_classes: int) -> None:
        """A clear error, before any training, for a metric this task cannot have."""
        if self.metric != "accuracy" and num_classes != 2:
            raise ValueError(
                f"soup.greedy.metric: {self.metric!r} needs a two-class task (F1 of class 1, "
                f"Matthews correlation of two classes); this task has {num_classes} classes: "
                "use metric: accuracy")


class LearnedSettings(Settings):
    per_layer: bool = True  # one coefficient per ingredient per layer (else per ingredient)
    steps: int = Field(20, ge=0)  # the paper's code: 5 epochs over ImageNet's 2% held-out
    lr: float = Field(0.05, gt=0)  # AdamW, as the paper's code
    batch_size: int = Field(128, ge=1)
    seed: int = 0


WISEFT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


# How a grid of α or λ is scored on held-out (`raysoup.soup.grid_search`): "bracket" narrows
# in on held-out accuracy's peak (one peak assumed: about 7 of 11 points scored), "grid"
# scores every point (the papers' procedure).
GridSearch = Literal["bracket", "grid"]


class WiseFTSettings(Settings):
    # α grid of θ(α) = (1−α)·θ_zeroshot + α·θ_best; the best on held-out wins (ties: smaller α).
    alphas: list[float] = Field(default_factory=lambda: list(WISEFT_ALPHAS), min_length=1)
    search: GridSearch = "bracket"
    # α also scored on test and every shift, for the report's figure: the WiSE-FT curve from
    # the zero-shot model (α = 0) to the fine-tuned one (α = 1), as in the paper's figures
    # (one evaluation of every split per α; [] draws only the chosen α).
    curve: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75])

    @field_validator("alphas", "curve")
    @classmethod
    def _unit_interval(cls, alphas: list[float]) -> list[float]:
        bad = [a for a in alphas if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"alphas must lie in [0, 1], got {bad}")
        return alphas


# The paper's grid: λ ∈ {0.05, 0.10, ..., 1.0}, chosen on held-out validation data.
TASK_ARITHMETIC_LAMBDAS = [round(0.05 * i, 2) for i in range(1, 21)]


class TaskArithmeticSettings(Settings):
    lambdas: list[float] = Field(default_factory=lambda: list(TASK_ARITHMETIC_LAMBDAS),
                                 min_length=1)
    search: GridSearch = "bracket"


# The paper: k = 20 % and λ = 1 without validation data; with it, λ from a grid around 1.
TIES_LAMBDAS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]


class TiesSettings(Settings):
    density: float = Field(0.2, gt=0, le=1)  # fraction k of each task vector's entries kept
    lambdas: list[float] = Field(default_factory=lambda: list(TIES_LAMBDAS), min_length=1)
    search: GridSearch = "bracket"


class DareSettings(Settings):
    drop: float = Field(0.5, ge=0, lt=1)  # p: the probability an entry of τ_i is dropped
    combine: Literal["linear", "ties"] = "linear"
    seed: int = 0
    lambdas: list[float] | None = Field(None, min_length=1)  # None: the combine's default grid
    search: GridSearch = "bracket"


# Recipe name -> its settings, in the order of the config's `soup` section.
SECTIONS: dict[str, type[Settings]] = {
    "uniform": Settings,
    "greedy": GreedySettings,
    "learned": LearnedSettings,
    "model_stock": Settings,
    "wiseft": WiseFTSettings,
    "ensemble": Settings,
    "task_arithmetic": TaskArithmeticSettings,
    "ties": TiesSettings,
    "dare": DareSettings,
}
