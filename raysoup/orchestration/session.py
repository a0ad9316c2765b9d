"""The driver's live state during a sweep, shared with Tune's callbacks and searcher.

Tune pickles the callbacks (RunConfig) and the search algorithm (TuneConfig) into the sweep's
saved state and `Tuner.restore` unpickles them; a restore cannot replace them. What they report
to must be this driver's (after a move to another machine the MLflow store may be elsewhere,
and the anytime soup's actor is a new one), so they hold a `SessionLink`: it pickles as nothing
and, unpickled while a session is attached (`SweepSession.attached`), links to that session.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raysoup.orchestration.anytime import AnytimeSoup
    from raysoup.tracking import Tracker


@dataclass
class SweepSession:
    """One `run_sweep` of this driver: where trials are tracked, how often a trial may fail,
    the live anytime soup (None when off); `started_with`: the settings a restored sweep
    started with (callbacks.StartedWith), None for a new sweep."""

    tracker: Tracker
    parent_run: str
    max_failures: int
    anytime: AnytimeSoup | None = None
    started_with: dict[str, Any] | None = None

    @contextmanager
    def attached(self) -> Iterator[SweepSession]:
        """While the block runs, callbacks and searchers unpickled by Tune link to this session."""
        token = _attached.set(self)
        try:
            yield self
        finally:
            _attached.reset(token)


# The session whose sweep is being restored or run in this context (a ContextVar: scoped to
# `attached`, never left behind by a finished sweep).
_attached: ContextVar[SweepSession | None] = ContextVar("raysoup_sweep_session", default=None)


class SessionLink:
    """A callback's or searcher's link to the session; `session` is None when none is."""

    def __init__(self, session: SweepSession | None):
        self.session = session

    def __getstate__(self) -> dict:
        return {}  # the tracker and the soup's actor are this driver's, never Tune's state

    def __setstate__(self, state: dict) -> None:
        self.session = self.attached()

    @staticmethod
    def attached() -> SweepSession | None:
        """The session attached in this context (unpickling inside `SweepSession.attached`)."""
        return _attached.get()
