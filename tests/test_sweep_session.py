"""The sweep's session (orchestration/session.py): Tune pickles the callbacks and the searcher
into the sweep's saved state; the live tracker and anytime soup are never in it, and a restored
callback links to the session of the driver that restores it."""

import pickle

from raysoup.orchestration.callbacks import AnytimeCallback, FailureBudget, TrackingCallback
from raysoup.orchestration.session import SessionLink, SweepSession


def test_callbacks_pickle_without_the_session_and_link_to_the_restoring_one():
    first = SweepSession(tracker="first tracker", parent_run="run-1", max_failures=0)
    saved = pickle.dumps([TrackingCallback(first, {"epochs": 1}), FailureBudget(first),
                          AnytimeCallback(first)])
    assert b"first tracker" not in saved and b"run-1" not in saved

    assert all(c.link.session is None for c in pickle.loads(saved))  # no sweep attached
    second = SweepSession(tracker="second tracker", parent_run="run-2", max_failures=3)
    with second.attached():
        restored = pickle.loads(saved)
    assert all(c.link.session is second for c in restored)
    assert restored[0].base == {"epochs": 1}
    assert pickle.loads(pickle.dumps(SessionLink(second))).session is None  # left behind


def test_failure_budget_applies_this_runs_max_failures():
    class Trial:
        max_failures = 0

    trials = [Trial(), Trial()]
    FailureBudget(SweepSession("tracker", "run", max_failures=3)).on_step_begin(0, trials)
    assert [t.max_failures for t in trials] == [3, 3]


def test_a_restored_sweep_tells_its_session_the_settings_it_started_with():
    from raysoup.orchestration.callbacks import StartedWith

    saved = pickle.dumps(StartedWith({"max_concurrent": 2, "reuse_actors": True}))
    session = SweepSession("tracker", "run", max_failures=0)
    assert session.started_with is None
    with session.attached():
        pickle.loads(saved)
    assert session.started_with == {"max_concurrent": 2, "reuse_actors": True}
