"""Sweep stage, on the driver: Ray Tune fine-tunes the zero-shot initialisation over the
search space, or resumes the interrupted sweep from its saved state.

The trial itself is trial.py (it runs on workers), what the driver hears of it callbacks.py,
what ended and what may resume trial_records.py and resume.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from raysoup import storage
from raysoup.checkpoints import read_manifest
from raysoup.checkpoints.ingredient import remove_stale_tmp
from raysoup.config import DATA_PARALLEL_DRIVER_CPU, ExperimentCfg
from raysoup.dryrun.cluster import placement_error
from raysoup.orchestration import search
from raysoup.orchestration.anytime import AnytimeSoup
from raysoup.orchestration.callbacks import (
    AnytimeCallback,
    EndingsCallback,
    FailureBudget,
    ProgressCallback,
    StartedWith,
    TrackingCallback,
)
from raysoup.orchestration.resume import KEPT_ON_RESUME, anytime_behind, refuse_kept_changes
from raysoup.orchestration.session import SweepSession
from raysoup.orchestration.space import tune_space
from raysoup.orchestration.trial import TrialContext, train_trial, with_restart
from raysoup.orchestration.trial_records import (
    EndedTrials,
    Segment,
    ended_trials,
    record_segment,
    sweep_path,
    sweep_segments,
)
from raysoup.workdir import Workdir, read_record

if TYPE_CHECKING:  # mlflow costs a trial process ~1 s to import; only the driver tracks
    from raysoup.tracking import Tracker

NO_AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
log = logging.getLogger(__name__)


class SweepError(RuntimeError):
    pass


def run_sweep(cfg: ExperimentCfg, workdir: Path, tracker: Tracker, parent_run: str,
              heldout=None) -> list[str]:
    """Fine-tune `sweep.num_samples` trials; resumes an interrupted sweep from its state, and
    runs the new trials of a grown one (`trial_records.Segment`). Returns the ingredients (a diverged or stopped trial counts towards num_samples but is
    none). `heldout`: the held-out split's eval cache, for the anytime soup and for trials
    that report held-out accuracy."""
    ended = ended_trials(workdir)
    if ended.count >= cfg.sweep.trials:
        return _already_run(cfg, workdir, tracker, parent_run, heldout, ended)
    # Trials killed while writing their ingredient leave a hidden temp dir; no trial runs yet.
    remove_stale_tmp(Workdir(workdir).ingredients)
    trainable = _trainable(cfg, workdir, heldout)
    session = SweepSession(tracker, parent_run, cfg.sweep.max_failures)
    session.anytime = _start_anytime(cfg, workdir, tracker, parent_run, heldout, ended)
    try:
        with session.attached():
            failed: list[str] = []
            for segment in sweep_segments(workdir, cfg.sweep.trials):
                if segment.done(ended.names):
                    continue
                failed += _fit(cfg, workdir, trainable, session, segment)
                ended = ended_trials(workdir)
                if not segment.done(ended.names):
                    break  # interrupted or failed: later trials wait for the re-run
            ended = ended_trials(workdir)
            if session.anytime is not None:
                session.anytime.scan(ended.finished, ended.without_ingredient)
                session.anytime.pump(wait=True)  # the trials that ended last are offered too
    finally:
        _stop_anytime(session.anytime)
    return _outcome(cfg, workdir, tracker, parent_run, ended, failed)


# ---------------------------------------------------------------- setup


def check_placement(cfg: ExperimentCfg, workdir: Path) -> None:
    """Refuse (SweepError) data-parallel trials the cluster cannot place, while trials are
    left to run: Ray Train would wait for their workers forever, retrying. A cluster this
    driver started (a local one) has its final size; one it joined may grow (an autoscaler),
    so there the shortfall is a warning."""
    if cfg.sweep.workers_per_trial == 1 or ended_trials(workdir).count >= cfg.sweep.trials:
        return
    nodes = [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
             for n in ray.nodes() if n.get("Alive")]
    # The driver that started a cluster holds its head node (Ray has no public way to ask);
    # a driver that joined one holds none, or a non-head handle.
    own = getattr(ray._private.worker, "_global_node", None)
    started_here = bool(getattr(own, "head", False))
    error = placement_error(cfg, nodes, "the local cluster" if started_here else "the cluster")
    if error is None:
        return
    if started_here:
        raise SweepError(error)
    log.warning("%s (unless the autoscaler adds nodes that can)", error)


def _already_run(cfg: ExperimentCfg, workdir: Path, tracker: Tracker, parent_run: str,
                 heldout, ended: EndedTrials) -> list[str]:
    """Every trial has ended: close what an interrupted driver left open."""
    log.info("sweep: %d ingredients already present, skipping", len(ended.finished))
    _close_runs(tracker, parent_run, workdir, ended.finished, ended.diverged)
    if heldout is not None and anytime_behind(cfg, workdir, ended.names):
        # The driver died after the last trial, before its offer: catch up.
        anytime = _start_anytime(cfg, workdir, tracker, parent_run, heldout, ended)
        try:
            anytime.pump(wait=True)
        finally:
            _stop_anytime(anytime)
    return ended.finished


def _trainable(cfg: ExperimentCfg, workdir: Path, heldout):
    """`train_trial` with its large constants and the resources each trial asks for."""
    if search.reports_heldout(cfg) and heldout is None:
        raise ValueError(f"sweep.scheduler: {cfg.sweep.scheduler} / sweep.search: "
                         f"{cfg.sweep.search} score trials on held-out: run_sweep needs the "
                         "held-out split's eval cache")
    workers = cfg.sweep.workers_per_trial
    res = cfg.sweep.resources_per_worker if workers > 1 else cfg.sweep.resources_per_trial
    ctx = TrialContext(cfg.model_dump_json(), str(workdir), threads=max(1, int(res.cpu)),
                       workers=workers, heldout=heldout if search.reports_heldout(cfg) else None)
    trial_res = ({"cpu": DATA_PARALLEL_DRIVER_CPU, "gpu": 0} if workers > 1
                 else {"cpu": res.cpu, "gpu": res.gpu})
    return with_restart(tune.with_resources(tune.with_parameters(train_trial, ctx=ctx),
                                            trial_res))


def _start_anytime(cfg: ExperimentCfg, workdir: Path, tracker: Tracker, parent_run: str,
                   heldout, ended: EndedTrials) -> AnytimeSoup | None:
    """The live anytime soup (None when off or without a held-out split), with the trials
    that ended before this driver started (a resumed sweep) queued."""
    if not cfg.sweep.anytime.enabled or heldout is None:
        return None
    meta = read_manifest(Workdir(workdir).zeroshot)
    soup = AnytimeSoup(cfg, workdir, tracker, parent_run, heldout, meta["model_name"],
                       meta["num_classes"])
    soup.scan(ended.finished, ended.without_ingredient)
    return soup


def _stop_anytime(soup: AnytimeSoup | None) -> None:
    if soup is not None:
        soup.stop()


# ---------------------------------------------------------------- fit


def _fit(cfg: ExperimentCfg, workdir: Path, trainable, session: SweepSession,
         segment: Segment) -> list[str]:
    """Run (or resume) one segment of the sweep to its end; returns the paths of the trials
    that failed. Call with `session` attached: a restore unpickles the callbacks and the
    searcher."""
    # Tune keeps its state next to the ingredients: a local path or the workdir's URI.
    path, fs = sweep_path(workdir, segment)
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        log.info("sweep: resuming from %s", path)
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=fs)
        # In case the workdir's experiment.yaml was not checked first (run_pipeline checks it
        # in snapshot_config, before writing it).
        refuse_kept_changes(session.started_with or {}, cfg)
    else:
        record_segment(workdir, segment)
        tuner = _new_tuner(cfg, workdir, trainable, session, segment)
    # Tune adds a TensorBoard logger by default and prints a `tensorboard --logdir` hint into
    # Ray's temporary directory: raysoup's place to browse a sweep is MLflow. Its CSV and JSON
    # loggers (`_new_tuner` lists them; a restored sweep has them from its saved state, or
    # none if it began before they were listed: nothing in raysoup reads them) stay.
    os.environ.setdefault(NO_AUTO_LOGGERS, "1")
    grid = tuner.fit()
    return [r.path for r in grid if r.error is not None]


def _new_tuner(cfg: ExperimentCfg, workdir: Path, trainable, session: SweepSession,
               segment: Segment) -> tune.Tuner:
    base = cfg.sweep.base.model_dump()
    where = storage.tune_storage(Workdir(workdir).sweep)
    if segment.first == 0:  # Tune's num_samples counts grid rounds (sweep.trials: trials)
        space, samples = tune_space(cfg), segment.end * cfg.sweep.num_samples // cfg.sweep.trials
    else:  # the searcher proposes whole configs, counting trials from segment.first
        space, samples = {}, segment.end
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=samples,
            search_alg=search.segment_alg(cfg, segment.first, segment.end, session),
            scheduler=search.scheduler(cfg),
            reuse_actors=cfg.sweep.reuse_actors,  # see SweepCfg
        ),
        run_config=tune.RunConfig(
            name=segment.name,
            storage_path=where[0], storage_filesystem=where[1],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
            callbacks=[CSVLoggerCallback(), JsonLoggerCallback(),
                       TrackingCallback(session, base),
                       EndingsCallback(str(workdir), base),
                       ProgressCallback(cfg.sweep.trials, cfg.sweep.base.epochs),
                       FailureBudget(session),
                       AnytimeCallback(session),
                       StartedWith({k: getattr(cfg.sweep, k) for k in KEPT_ON_RESUME})],
            verbose=0,
        ),
    )


# ---------------------------------------------------------------- outcome


def _outcome(cfg: ExperimentCfg, workdir: Path, tracker: Tracker, parent_run: str,
             ended: EndedTrials, failed: list[str]) -> list[str]:
    """Close the trials' MLflow runs, say how trials ended; the ingredients, or SweepError
    for a sweep that has not finished."""
    diverged = ended.diverged
    _close_runs(tracker, parent_run, workdir, ended.finished, diverged)
    if diverged:
        tracker.set_tags(parent_run, {"raysoup.diverged": ",".join(diverged)})
        log.warning("sweep: %d trial(s) diverged, left out of evaluation and soups: %s",
                    len(diverged), ", ".join(diverged))
    if stopped := ended.stopped:
        log.info("sweep: %d trial(s) stopped early by the scheduler (no ingredients): %s",
                 len(stopped), ", ".join(stopped))
    if failed or ended.count < cfg.sweep.trials:
        # fit() also returns (without raising) after SIGINT: an interrupted sweep is not finished.
        raise SweepError(f"sweep incomplete: {len(ended.finished)}/{cfg.sweep.trials} "
                         f"ingredients ({len(ended.without_ingredient)} diverged or stopped), "
                         f"failed trials: {failed or 'none'}; re-run the same command to resume")
    return ended.finished


def _close_runs(tracker: Tracker, parent_run: str, workdir: Path, done: list[str],
                diverged: list[str]) -> None:
    """Every ended trial's run FINISHED (or FAILED if diverged), created if it ran while the
    tracking store was down; TrackingUnavailable (saying what to do) if it still is."""
    def params_of(name: str) -> dict:
        try:
            return read_record(Workdir(workdir).ingredient(name)).get("hparams", {})
        except FileNotFoundError:
            return {}

    closed = tracker.close_trial_runs(done, diverged, parent_run, params_of)
    if closed:
        log.info("sweep: closed the MLflow runs of %s (their outcome landed while this "
                 "driver was not tracking them: interrupted, or the tracking store was down)",
                 ", ".join(closed))
