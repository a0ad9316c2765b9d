"""When a sweep runs again and what it may change: the resume policy, read from the workdir.

A sweep is resumed from Tune's saved state (`WORKDIR/tune/sweep`) while trials are still to
run; Tune restores some settings from that state, so a resumed sweep refuses to change them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from raysoup.config import ConfigError, ExperimentCfg
from raysoup.orchestration.trial_records import (
    Segment,
    ended_trials,
    record_segment,
    recorded_segments,
    sweep_path,
    sweep_segments,
)
from raysoup.soup.anytime import read_offers, trial_index

# Tune restores these from its saved state (the pickled TuneConfig: the search algorithm's
# max_concurrent, the controller's reuse_actors), so an unfinished sweep cannot change them.
# sweep.max_failures is applied on resume (callbacks.FailureBudget).
KEPT_ON_RESUME = ("max_concurrent", "reuse_actors")


class SweepSettingsChanged(ConfigError):
    """A resumed sweep would silently keep settings the config now changes."""


def sweep_to_run(cfg: ExperimentCfg, workdir: Path) -> bool:
    """Trials are still to run (a new or an unfinished sweep), or the anytime soup has not
    been offered every finished one."""
    ended = ended_trials(workdir)
    return ended.count < cfg.sweep.trials or anytime_behind(cfg, workdir, ended.names)


def anytime_behind(cfg: ExperimentCfg, workdir: Path, ended: list[str]) -> bool:
    """The anytime soup has not been offered every one of the `ended` trials."""
    if not cfg.sweep.anytime.enabled:
        return False
    return len(read_offers(workdir)) < sum(trial_index(n) is not None for n in ended)


class SweepCannotGrow(ConfigError):
    """sweep.num_samples changed in a way the workdir's trials do not allow."""


# Searches whose trial k a grown sweep proposes exactly as a fresh sweep of the larger size
# (search.segment_alg); Optuna's depend on the order earlier trials finished in.
GROWABLE = ("random", "grid", "soup")


def unfinished_sweep(cfg: ExperimentCfg, workdir: Path, trials: int | None = None) -> bool:
    """A sweep that a run would resume from Tune's saved state (needs no Ray session):
    a started segment whose trials have not all ended. `trials`: the sweep's size (default
    the config's)."""
    ended = ended_trials(workdir).names
    for segment in sweep_segments(workdir, trials or cfg.sweep.trials):
        path, fs = sweep_path(workdir, segment)
        if not segment.done(ended) and tune.Tuner.can_restore(path, storage_filesystem=fs):
            return True
    return False


def check_growth(saved: dict, cfg: ExperimentCfg, workdir: str = "WORKDIR") -> None:
    """A sweep may grow (more trials, the same seeded search), never shrink; raise
    SweepCannotGrow otherwise, saying why. `saved`: the workdir's saved config (a dict)."""
    before = ExperimentCfg.model_validate(saved).sweep.num_samples
    now = cfg.sweep.num_samples
    if now == before:
        return
    field = f"sweep.num_samples: {before} in the workdir, now {now}"
    if now < before:
        raise SweepCannotGrow(
            f"{field}: a sweep grows but never shrinks (its trials, soups and results "
            f"stay in the workdir). Keep sweep.num_samples={before} or more, or use a new "
            "--workdir.")
    if cfg.sweep.search not in GROWABLE:
        raise SweepCannotGrow(
            f"{field}: a {cfg.sweep.search} sweep cannot grow: its proposals depend on the "
            "order earlier trials finished in, so new trials would not continue the same "
            f"search. Grow random, grid or soup sweeps; use a new --workdir for {now} trials.")


def adopt_first_segment(saved: dict | None, workdir: Path) -> None:
    """A sweep started before sweeps could grow has no record of its size beside Tune's
    state: note it (from the saved config) before a larger config replaces that."""
    if saved is None:
        return
    path, fs = sweep_path(workdir)
    if not recorded_segments(workdir) and tune.Tuner.can_restore(path, storage_filesystem=fs):
        record_segment(workdir, Segment(0, ExperimentCfg.model_validate(saved).sweep.trials))


def refuse_kept_changes(started: dict[str, Any], cfg: ExperimentCfg,
                        workdir: str = "WORKDIR") -> None:
    """Raise SweepSettingsChanged if `cfg` changes a setting the unfinished sweep keeps."""
    changed = {k: v for k, v in started.items()
               if k in KEPT_ON_RESUME and v is not None and v != getattr(cfg.sweep, k)}
    if changed:
        lines = "\n".join(f"  sweep.{k}: {v!r} when the sweep started, now "
                           f"{getattr(cfg.sweep, k)!r}" for k, v in changed.items())
        sets = " ".join(f"--set sweep.{k}={str(v).lower()}" for k, v in changed.items())
        raise SweepSettingsChanged(
            f"the unfinished sweep cannot change these settings (Ray Tune restores them from "
            f"its saved state):\n{lines}\nRe-run with {sets} (or `raysoup resume {workdir}`) to "
            "finish it; sweep.max_failures may change.")
