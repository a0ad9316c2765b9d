"""Trial ids that end in a counter for every searcher: raysoup's one adapter to Tune internals.

Ingredients are named after the counter at the end of a trial's id (`<prefix>_00007` ->
trial-007) and the anytime soup takes trials in that order. Tune's random and grid generator
(BasicVariantGenerator) numbers its trials so; a SearchGenerator (Optuna, the soup-aware
searcher) draws a random id instead, inside `create_trial_if_possible`, through
`Trial.generate_id`, and has no public way to choose it. `IndexedSearchGenerator` swaps in the
counter for that one call. If a Ray upgrade draws the id elsewhere, every trial it creates is
refused with an error naming this module (and tests/test_trial_ids.py fails), rather than
ingredients silently named after random ids.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from ray.tune.experiment import Trial
from ray.tune.search import Searcher
from ray.tune.search.search_generator import SearchGenerator


class TuneChanged(RuntimeError):
    """Ray Tune no longer creates trials the way this adapter relies on."""


def indexed_id(prefix: str, index: int) -> str:
    """The id of trial `index`, in the form of BasicVariantGenerator's ids."""
    return f"{prefix}_{index:05d}"


@contextmanager
def _drawn_ids(trial_id: str) -> Iterator[None]:
    """While the block runs, the trial id Tune draws is `trial_id`."""
    original = inspect.getattr_static(Trial, "generate_id")
    Trial.generate_id = classmethod(lambda cls: trial_id)
    try:
        yield
    finally:
        Trial.generate_id = original


class IndexedSearchGenerator(SearchGenerator):
    """SearchGenerator whose trial ids end in a counter, as BasicVariantGenerator's do."""

    def __init__(self, searcher: Searcher, start: int = 0):
        super().__init__(searcher)
        self._prefix = uuid.uuid4().hex[:5]
        # A grown sweep's segment numbers its trials on from `start`; Tune ends the search
        # once the counter reaches num_samples (so num_samples is the segment's end).
        self._counter = start

    def create_trial_if_possible(self, experiment_spec):
        # Tune draws a trial's id inside this method, before the searcher's suggest(trial_id)
        # and the trial's creation; the counter is that id for this one call.
        trial_id = indexed_id(self._prefix, self._counter)
        with _drawn_ids(trial_id):
            trial = super().create_trial_if_possible(experiment_spec)
        if trial is not None and trial.trial_id != trial_id:
            raise TuneChanged(
                f"Ray Tune created trial {trial.trial_id!r} where raysoup numbers it "
                f"{trial_id!r}: this Ray version no longer draws trial ids through "
                "Trial.generate_id in SearchGenerator.create_trial_if_possible; "
                "raysoup/orchestration/trial_ids.py needs updating for it")
        return trial

    def get_state(self):
        return {**super().get_state(), "prefix": self._prefix}

    def set_state(self, state):
        self._prefix = state.pop("prefix", self._prefix)
        super().set_state(state)

    @property
    def max_concurrent(self) -> int | None:  # what a resumed sweep checks (resume.py)
        return getattr(self.searcher, "max_concurrent", None)
