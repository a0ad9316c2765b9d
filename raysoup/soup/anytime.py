"""The anytime soup: a greedy soup over trials in the order the sweep numbers them.

While a sweep runs, each finished trial is offered to a running soup: its own held-out
accuracy and that of the soup with it added are measured, and the soup becomes the best of
(the soup, the soup + the trial, the trial alone) on held-out, a larger soup winning ties. So
the anytime soup is never below the best finished trial on held-out, and a trial's marginal
gain (soup + trial minus soup) is what the soup-aware search optimises. Offers are decided in
trial order, not finishing order, so the curve and the search are the same for a given seed
however the trials' ends interleave. The final soups are still the standard recipes over all
trials.

`RunningSoup` is the pure arithmetic (an `Evaluator`, a running sum, one pending ingredient);
`decide` is the rule. The Ray side (an actor holding a RunningSoup, the journal, MLflow) is
`orchestration/anytime.py`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from raysoup import storage
from raysoup.checkpoints import load_state_dict
from raysoup.evaluate.evaluator import Evaluator
from raysoup.workdir import Workdir

JOINED, RESTARTED, REJECTED, NO_INGREDIENT = "joined", "restarted", "rejected", "no ingredient"


@dataclass(frozen=True)
class Offer:
    """What one trial did to the anytime soup (a line of the anytime journal)."""

    index: int  # the trial's number in the sweep
    trial: str
    outcome: str  # JOINED | RESTARTED | REJECTED | NO_INGREDIENT (diverged, stopped, failed)
    hparams: dict  # the trial's sampled hyper-parameters
    heldout: float | None = None  # the trial's own held-out accuracy
    with_soup: float | None = None  # held-out of soup + trial
    gain: float | None = None  # with_soup - soup held-out before the offer
    soup_heldout: float | None = None  # after the decision
    soup: tuple[str, ...] = ()  # members after the decision
    best_single: float | None = None  # best finished trial's held-out so far
    reason: str = ""  # for NO_INGREDIENT: diverged / stopped at epoch k / failed

    @property
    def kept(self) -> bool:
        """The trial is in the soup after its offer."""
        return self.outcome in (JOINED, RESTARTED)

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> Offer:
        return cls(**{**d, "soup": tuple(d.get("soup", ()))})


def trial_index(name: str) -> int | None:
    """trial-007 -> 7 (imported or hand-named ingredients have no index)."""
    suffix = name.removeprefix("trial-")
    return int(suffix) if suffix != name and suffix.isdigit() else None


def read_offers(workdir: Path) -> list[Offer]:
    """The anytime journal of a workdir, one Offer a line in trial order (empty if there is
    none)."""
    try:
        text = storage.read_text(Workdir(workdir).anytime_journal)
    except FileNotFoundError:
        return []
    return [Offer.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]


def decide(soup_heldout: float | None, own: float, with_soup: float) -> str:
    """The anytime rule. `soup_heldout` None: the soup is empty (the trial starts it)."""
    if soup_heldout is None:
        return RESTARTED
    if with_soup >= max(soup_heldout, own):
        return JOINED
    if own > max(soup_heldout, with_soup):
        return RESTARTED  # the trial alone beats the soup it would join
    return REJECTED


class RunningSoup:
    """A uniform soup kept as a float32 running sum (memory: the sum, one pending ingredient
    and the evaluator's model, whatever the number of trials)."""

    def __init__(self, evaluator: Evaluator, split: str = "heldout"):
        self.evaluator, self.split = evaluator, split
        self.sum: dict[str, torch.Tensor] | None = None
        self.k = 0
        self.pending: dict[str, torch.Tensor] | None = None

    def _accuracy(self, weights) -> tuple[int, int]:
        return self.evaluator.score(weights, [self.split])[self.split]

    def accuracy_of(self, path: Path) -> tuple[int, int]:
        return self._accuracy(load_state_dict(Path(path)))

    def offer(self, path: Path) -> dict[str, tuple[int, int]]:
        """(correct, n) of the ingredient at `path` alone and of the soup with it added;
        `commit()` or `restart()` then applies the decision (or the next offer drops it)."""
        theta = {k: v.float() for k, v in load_state_dict(Path(path)).items()}
        own = self._accuracy(theta)
        if self.sum is None:
            self.pending = theta
            return {"own": own, "with_soup": own}
        scale = 1.0 / (self.k + 1)
        blend = {k: (self.sum[k] + theta[k]) * scale for k in theta}
        self.pending = theta
        return {"own": own, "with_soup": self._accuracy(blend)}

    def commit(self) -> None:
        """The pending ingredient joins the soup."""
        if self.pending is None:
            raise RuntimeError("no pending ingredient to commit")
        if self.sum is None:
            self.sum, self.k = self.pending, 1
        else:
            for k, v in self.pending.items():
                self.sum[k].add_(v)
            self.k += 1
        self.pending = None

    def reject(self) -> None:
        """The pending ingredient stays out."""
        self.pending = None

    def restart(self) -> None:
        """The pending ingredient becomes the whole soup."""
        self.sum, self.k = None, 0
        self.commit()

    def replay(self, members: list[Path]) -> None:
        """Rebuild the soup of `members` (a resumed sweep): adds only, no evaluation."""
        self.sum, self.k, self.pending = None, 0, None
        for path in members:
            self.pending = {k: v.float() for k, v in load_state_dict(Path(path)).items()}
            self.commit()
