"""`raysoup analyze`: the four analyses of a workdir (docs/analysis.md), each a set of jobs on
the eval actors (`analysis.AnalysisContext`), writing a Parquet table and a PNG figure in
WORKDIR/report/analysis/, logged on the sweep run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysoup.analysis.transfer import TRANSFER_SPLIT, read_own_transfer
from raysoup.orchestration.analysis import AnalysisContext, Outcome
from raysoup.orchestration.analysis_ensembles import run_soup_vs_ensemble
from raysoup.orchestration.analysis_geometry import run_angles, run_landscape
from raysoup.orchestration.analysis_transfer import run_transfer

ANALYSES = ("landscape", "angles", "soup-vs-ensemble", "transfer")


def run_analysis(cfg, workdir: Path, analyses: tuple[str, ...] = ANALYSES, *,
                 address: str | None = None, points: int = 5, models: list[str] | None = None,
                 shift: str | None = None, pair_limit: int | None = None) -> list[Outcome]:
    """The analyses of a workdir the pipeline has evaluated (ingredients on held-out at
    least; the transfer analysis reads the soups it finds), in `analyses`' order.
    `points`, `models`, `shift`: the landscape's grid size, its two ingredients, its shift;
    `pair_limit`: the angles and soup-vs-ensemble analyses use only the best that many
    ingredients (their cost grows with the number of pairs)."""
    from raysoup import storage
    from raysoup.orchestration.actors import EvalActors
    from raysoup.orchestration.cluster import connect
    from raysoup.orchestration.pipeline import check_config
    from raysoup.prepare import prepare
    from raysoup.workdir import Workdir

    if pair_limit is not None and pair_limit < 2:
        raise ValueError(f"pair_limit must be at least 2 (a pair), got {pair_limit}")
    unknown = [a for a in analyses if a not in ANALYSES]
    if unknown or not analyses:
        raise ValueError(f"analyses {list(analyses)}: choose from {list(ANALYSES)}")
    layout = Workdir(workdir)
    if not storage.is_file(layout.results):
        raise RuntimeError(f"{storage.display(workdir)} has no {layout.results.name}: run "
                           "`raysoup run` (or sweep + evaluate) before `raysoup analyze`")
    check_config(cfg, workdir)  # the workdir's models were made by this config
    # the user's transfer dataset, checked before anything starts; decoded with the others
    own = read_own_transfer(cfg) if "transfer" in analyses and cfg.analysis.transfer else None
    connect(address)
    data, zeroshot = prepare(cfg, workdir)
    actors = EvalActors(cfg, workdir, data, zeroshot,
                        extra={TRANSFER_SPLIT: own.data} if own else None)
    steps = {"landscape": lambda c: run_landscape(c, points, models, shift),
             "angles": run_angles, "soup-vs-ensemble": run_soup_vs_ensemble,
             "transfer": lambda c: run_transfer(c, own)}
    try:
        ctx = AnalysisContext(cfg, workdir, data, actors)
        ctx.pair_limit = pair_limit
        outcomes = [steps[name](ctx) for name in dict.fromkeys(analyses)]
    finally:
        actors.release()
    storage.publish(layout.analysis_report)
    log_to_sweep_run(cfg, workdir, outcomes)
    return outcomes


def log_to_sweep_run(cfg, workdir: Path, outcomes: list[Outcome]) -> None:
    """The tables, figures and headline numbers as artifacts and metrics of the workdir's
    sweep run in MLflow (found, never created: a workdir without one logs nothing)."""
    from raysoup import storage
    from raysoup.tracking import Tracker, default_uri, quiet
    from raysoup.workdir import Workdir

    quiet()
    if not cfg.tracking.uri:
        storage.pull(Workdir(workdir).mlflow_db, exact=True)
    tracker = Tracker(cfg.tracking.uri or default_uri(workdir),
                      cfg.tracking.experiment or cfg.name,
                      artifact_root=Workdir(workdir).mlartifacts, workdir=workdir)
    run_id = tracker.sweep_run_id()
    if run_id is None:
        return
    tracker.log_artifacts(run_id, [f for o in outcomes for f in o.files], subdir="analysis")
    tracker.log_metrics(run_id, {k: v for o in outcomes for k, v in o.metrics.items()
                                 if not np.isnan(v)})  # an undefined r is left out
    tracker.persist()
