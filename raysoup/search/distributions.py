"""Search-space distributions of `sweep.space`: one class per kind, each owning what the
stages ask of it.

A space entry is written `{loguniform: [lo, hi]}`, `{uniform: [lo, hi]}`, `{randint: [lo, hi]}`
(Tune's [lo, hi)), `{choice: [...]}`, or a plain constant. The config keeps constants as plain
numbers (they are dumped into the config snapshot as such); `as_dist` wraps one in `Constant`
so that every entry answers the same questions:

- `to_tune(tune, grid)`: the Tune domain (the `ray.tune` module is passed in: this module imports
  no Ray, so the config can import it);
- `problem(name, is_int)` and `extremes()`: validation against the hyper-parameter's type and
  the values whose validity covers every draw;
- `describe()` (`--dry-run`) and `mean()` (sizing);
- `draw`, `unit`, `from_unit`, `perturb`, `gap2`: the soup-aware proposer's numpy sampling
  and its geometry (`raysoup/search/proposer.py`).

A new distribution is one class here, added to the `Distribution` union.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # the generators come from the caller; the config imports no numpy
    import numpy as np

# `Dist.perturb`: the parent trial has no value for this dimension.
ABSENT = object()


class Dist(BaseModel):
    """What every distribution answers; the defaults fit a dimension without geometry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @abstractmethod
    def to_tune(self, tune: Any, grid: bool = False) -> Any:
        raise NotImplementedError

    def problem(self, name: str, is_int: bool) -> str | None:
        """What is wrong with the distribution's own arguments for hyper-parameter `name`
        (`is_int`: it takes integers), or None; the drawn values are checked by the caller."""
        return None

    @abstractmethod
    def extremes(self) -> list[Any]:
        """Values whose validity covers every draw (the hyper-parameters' constraints are
        intervals: the bounds of a range, every entry of a list)."""
        raise NotImplementedError

    @abstractmethod
    def describe(self) -> str:
        raise NotImplementedError

    @abstractmethod
    def mean(self) -> float:
        raise NotImplementedError

    def grid_points(self) -> int:
        """How many grid points the dimension adds under search: grid."""
        return 1

    def finite_values(self) -> list[Any] | None:
        """Every value it can draw, where that is a short list (None: a range)."""
        return None

    def plain(self) -> Any:
        return self.model_dump()

    @abstractmethod
    def draw(self, rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def unit(self, value: Any) -> float | None:
        """A continuous value's position in its range, 0..1 (None: not a continuous dimension)."""
        return None

    def perturb(self, parent: Any, fresh: Any, rng: np.random.Generator, step: float) -> Any:
        """A value near `parent` (or ABSENT); `fresh` is this dimension's new random draw."""
        return fresh

    def gap2(self, a: Any, b: Any) -> float:
        """Squared distance between two values (see proposer.distance)."""
        return 0.0


class _Range(Dist):
    """A continuous range [low, high), uniform in `_to` space (identity or log)."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def bounds(self) -> tuple[float, float]:
        raise NotImplementedError

    def _to(self, x: float) -> float:
        return x

    def _back(self, x: float) -> float:
        return x

    def problem(self, name: str, is_int: bool) -> str | None:
        low, high = self.bounds
        if not low < high:
            return f"{self.kind}: low must be below high, got {[low, high]}"
        if is_int:
            return (f"{self.kind} draws fractional values, but {name} is an integer; use randint "
                    "or choice")
        return None

    def extremes(self) -> list[Any]:
        return list(self.bounds)

    def unit(self, value: Any) -> float | None:
        lo, hi = self.bounds
        return (self._to(value) - self._to(lo)) / (self._to(hi) - self._to(lo))

    def from_unit(self, u: float) -> float:
        u = min(max(u, 0.0), 1.0 - 1e-9)  # Tune's ranges are [lo, hi)
        lo, hi = self.bounds
        return float(self._back(self._to(lo) + u * (self._to(hi) - self._to(lo))))

    def perturb(self, parent: Any, fresh: Any, rng: np.random.Generator, step: float) -> Any:
        if parent is ABSENT:
            return fresh
        return self.from_unit(self.unit(parent) + rng.normal(0.0, step))

    def gap2(self, a: Any, b: Any) -> float:
        return (self.unit(a) - self.unit(b)) ** 2


class LogUniform(_Range):
    kind: ClassVar[str] = "loguniform"
    loguniform: tuple[float, float]

    @property
    def bounds(self) -> tuple[float, float]:
        return self.loguniform

    def _to(self, x: float) -> float:
        return math.log(x)

    def _back(self, x: float) -> float:
        return math.exp(x)

    def to_tune(self, tune: Any, grid: bool = False) -> Any:
        return tune.loguniform(*self.loguniform)

    def problem(self, name: str, is_int: bool) -> str | None:
        low, high = self.loguniform
        if low < high and low <= 0:
            return "loguniform bounds must be positive"
        return super().problem(name, is_int)

    def describe(self) -> str:
        return f"loguniform [{self.loguniform[0]:g}, {self.loguniform[1]:g}]"

    def mean(self) -> float:
        lo, hi = self.loguniform
        return (hi - lo) / math.log(hi / lo)

    def draw(self, rng: np.random.Generator) -> Any:
        lo, hi = self.loguniform
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


class Uniform(_Range):
    kind: ClassVar[str] = "uniform"
    uniform: tuple[float, float]

    @property
    def bounds(self) -> tuple[float, float]:
        return self.uniform

    def to_tune(self, tune: Any, grid: bool = False) -> Any:
        return tune.uniform(*self.uniform)

    def describe(self) -> str:
        return f"uniform [{self.uniform[0]:g}, {self.uniform[1]:g}]"

    def mean(self) -> float:
        return sum(self.uniform) / 2

    def draw(self, rng: np.random.Generator) -> Any:
        return float(rng.uniform(*self.uniform))


class RandInt(Dist):
    randint: tuple[int, int]  # [low, high) like tune.randint

    def to_tune(self, tune: Any, grid: bool = False) -> Any:
        return tune.randint(*self.randint)

    def problem(self, name: str, is_int: bool) -> str | None:
        low, high = self.randint
        if not low < high:
            return f"randint [low, high) draws nothing from {[low, high]}; high must exceed low"
        return None

    def extremes(self) -> list[Any]:
        low, high = self.randint
        return [low, high - 1]

    def describe(self) -> str:
        lo, hi = self.randint
        return f"randint [{lo}, {hi}) = {lo}..{hi - 1}"

    def mean(self) -> float:
        return (self.randint[0] + self.randint[1] - 1) / 2

    def draw(self, rng: np.random.Generator) -> Any:
        # Redrawn on perturbation (the default): integers are seeds, kept diverse.
        return int(rng.integers(*self.randint))


class Choice(Dist):
    choice: list[Any] = Field(min_length=1)

    def to_tune(self, tune: Any, grid: bool = False) -> Any:
        return tune.grid_search(self.choice) if grid else tune.choice(self.choice)

    def extremes(self) -> list[Any]:
        return self.choice

    def describe(self) -> str:
        return f"choice {self.choice}"

    def mean(self) -> float:
        return sum(float(v) for v in self.choice) / len(self.choice)

    def grid_points(self) -> int:
        return len(self.choice)

    def finite_values(self) -> list[Any] | None:
        return self.choice

    def draw(self, rng: np.random.Generator) -> Any:
        return self.choice[int(rng.integers(len(self.choice)))]

    def perturb(self, parent: Any, fresh: Any, rng: np.random.Generator, step: float) -> Any:
        # Kept half the time: a member's augmentation choice stays diverse, not copied.
        if parent is not ABSENT and rng.random() < 0.5:
            return parent
        return fresh

    def gap2(self, a: Any, b: Any) -> float:
        return 0.25 if a != b else 0.0  # a differing choice counts 0.5


class Constant(Dist):
    """A fixed space entry (`sweep.space.seed: 3`): every trial gets `value`. Never parsed from
    YAML (the config keeps the plain value); `as_dist` wraps it."""

    value: Any

    def to_tune(self, tune: Any, grid: bool = False) -> Any:
        return self.value

    def extremes(self) -> list[Any]:
        return [self.value]

    def describe(self) -> str:
        return f"constant {self.value}"

    def mean(self) -> float:
        return float(self.value)

    def finite_values(self) -> list[Any] | None:
        return [self.value]

    def plain(self) -> Any:
        return self.value

    def draw(self, rng: np.random.Generator) -> Any:
        return self.value  # no random number drawn


# What `sweep.space` accepts (pydantic tries the models in this order, then the constants).
Distribution = LogUniform | Uniform | RandInt | Choice | float | int


def as_dist(entry: Any) -> Dist:
    """A `sweep.space` entry as an object with the distribution interface."""
    return entry if isinstance(entry, Dist) else Constant(value=entry)
