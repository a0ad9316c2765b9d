"""Tune's callbacks of a sweep: they run on the driver, in Tune's loop.

Each one that needs this driver's live objects (the tracker, the anytime soup, this run's
sweep.max_failures) reaches them through a `SessionLink` (session.py): Tune pickles callbacks
into the sweep's saved state, and a restored sweep's callbacks must report to the new driver.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import tune

from raysoup.faults import failpoint
from raysoup.orchestration import metrics
from raysoup.orchestration.session import SessionLink, SweepSession
from raysoup.orchestration.trial_records import DIVERGED, STOPPED, trial_name, write_stopped

log = logging.getLogger(__name__)


def _diverged(trial) -> bool:
    return bool((trial.last_result or {}).get(DIVERGED))


def trial_end_reason(trial, epochs: int) -> str:
    """How a completed trial ended without an ingredient ("" if it has one); `epochs`: the
    sweep's base, for trials that do not sample theirs."""
    if _diverged(trial):
        return DIVERGED
    epochs = int(trial.config.get("epochs", epochs))
    last = int((trial.last_result or {}).get("epoch", 0) or 0)
    if epochs and last < epochs:
        return f"{STOPPED} at epoch {last}"
    return ""


class TrackingCallback(tune.Callback):
    """One MLflow run per trial, under the sweep's run, written by the driver's tracker.
    A tracking store that fails mid-sweep (a server down) does not stop the sweep
    (`Tracker.during_sweep`): the trial runs catch up when it ends (`sweep._close_runs`)."""

    def __init__(self, session: SweepSession, base: dict[str, Any]):
        self.link = SessionLink(session)
        self.base = base
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_runs": {}}

    def _run(self, trial) -> str | None:
        name = trial_name(trial.trial_id)
        if name not in self._runs:
            session = self.link.session
            params = {**self.base, **trial.config, "trial_id": trial.trial_id}
            run_id = session.tracker.during_sweep(f"{name}'s run", session.tracker.trial_run,
                                                  session.parent_run, name, params)
            if run_id is None:
                return None
            self._runs[name] = run_id
        return self._runs[name]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        keys = ("train_loss", "train_acc", "lr", "images_per_s", "train_images",
                "skipped_images")
        tracker = self.link.session.tracker
        if (run_id := self._run(trial)) is not None:
            tracker.during_sweep("a trial's metrics", tracker.log_metrics, run_id,
                                 {k: result[k] for k in keys if k in result},
                                 int(result.get("epoch", 0)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        tracker = self.link.session.tracker
        if (run_id := self._run(trial)) is not None:
            tracker.during_sweep("a trial's end", tracker.end_trial, run_id,
                                 trial_name(trial.trial_id), _diverged(trial))
            tracker.during_sweep("the store's upload", tracker.persist)
        failpoint("sweep.trial_complete")

    def on_trial_error(self, iteration, trials, trial, **info):
        tracker = self.link.session.tracker
        if (run_id := self._run(trial)) is not None:
            tracker.during_sweep("a trial's end", tracker.end, run_id, False)


class EndingsCallback(tune.Callback):
    """Writes the record of a trial the scheduler stopped early (it cannot: Tune ended it)."""

    def __init__(self, workdir: str, base: dict[str, Any]):
        self.workdir, self.base = workdir, base

    def on_trial_complete(self, iteration, trials, trial, **info):
        reason = trial_end_reason(trial, self.base["epochs"])
        if reason.startswith(STOPPED):
            write_stopped(Path(self.workdir), trial_name(trial.trial_id), reason,
                          int(trial.last_result.get("epoch", 0)),
                          trial.last_result.get("heldout_acc"), {**self.base, **trial.config})


class FailureBudget(tune.Callback):
    """Applies this run's sweep.max_failures to every trial of the sweep.

    Tune restores each trial's retry limit, and the experiment spec its restored search
    algorithm creates trials from, out of the sweep's saved state, and `Tuner.restore` takes
    no new FailureConfig. So the limit a resumed sweep runs under is set on the trials here,
    before each step of Tune's loop; a fresh sweep's trials already carry it."""

    def __init__(self, session: SweepSession):
        self.link = SessionLink(session)

    def on_step_begin(self, iteration, trials, **info):
        if self.link.session is not None:
            for trial in trials:
                trial.max_failures = self.link.session.max_failures


class StartedWith(tune.Callback):
    """The settings a sweep started with that Tune restores from its saved state
    (resume.KEPT_ON_RESUME). It does nothing in Tune's loop: `Tuner.restore` unpickles it with
    the other callbacks, and it hands the values to the restoring session, which refuses a
    config that changes them (Tune has no public accessor for a restored TuneConfig)."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if (session := SessionLink.attached()) is not None:
            session.started_with = dict(self.settings)


class ProgressCallback(tune.Callback):
    """One line per trial epoch on the console (Tune's own tables are off: verbose=0)."""

    def __init__(self, num_samples: int, epochs: int):
        self.num_samples, self.epochs = num_samples, epochs
        self.finished = 0

    def setup(self, **info):
        metrics.sweep_started()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if DIVERGED in result:
            return
        skipped = result.get("skipped_images") or 0
        log.info("sweep: %s epoch %s/%s  loss %.3f  %.0f img/s%s", trial_name(trial.trial_id),
                 result.get("epoch"), trial.config.get("epochs", self.epochs),
                 result.get("train_loss", float("nan")), result.get("images_per_s", 0.0),
                 f"  ({skipped} corrupt images skipped)" if skipped else "")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        metrics.trial_finished()
        reason = trial_end_reason(trial, self.epochs)
        how = ("diverged (non-finite loss; no ingredient)" if reason == DIVERGED
               else f"{reason} by the scheduler (no ingredient)" if reason else "finished")
        log.info("sweep: %s %s (%d/%d)", trial_name(trial.trial_id), how, self.finished,
                 self.num_samples)

    def on_trial_recover(self, iteration, trials, trial, **info):
        log.warning("sweep: %s failed (worker or node lost?); retrying from its last checkpoint",
                    trial_name(trial.trial_id))

    def on_trial_error(self, iteration, trials, trial, **info):
        metrics.trial_failed()
        log.warning("sweep: %s failed: see %s", trial_name(trial.trial_id), trial.path)


class AnytimeCallback(tune.Callback):
    """Tells the live anytime soup of ending trials and pumps it every Tune step."""

    def __init__(self, session: SweepSession):
        self.link = SessionLink(session)

    @property
    def _soup(self):
        return self.link.session.anytime if self.link.session is not None else None

    def on_step_begin(self, iteration, trials, **info):
        if (soup := self._soup) is not None:
            soup.pump()

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (soup := self._soup) is not None:
            soup.trial_ended(trial_name(trial.trial_id),
                             trial_end_reason(trial, soup.cfg.sweep.base.epochs))
            soup.pump()

    def on_trial_error(self, iteration, trials, trial, **info):
        if (soup := self._soup) is not None:
            soup.trial_ended(trial_name(trial.trial_id), "failed")
