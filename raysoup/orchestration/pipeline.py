"""The stages of `raysoup run`, in order; each is skipped or resumed from what is on disk."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

from raysoup import storage
from raysoup.checkpoints.audit import Audit
from raysoup.config import ExperimentCfg
from raysoup.data.lineage import split_records
from raysoup.evaluate import results as res
from raysoup.evaluate.task_metrics import two_class_labels
from raysoup.orchestration import evaluate_stage, metrics, soup_stage
from raysoup.orchestration.actors import EvalActors
from raysoup.orchestration.cluster import connect
from raysoup.orchestration.evaluation import build_eval_cache
from raysoup.orchestration.resume import (
    KEPT_ON_RESUME,
    refuse_kept_changes,
    sweep_to_run,
    unfinished_sweep,
)
from raysoup.orchestration.search import reports_heldout
from raysoup.orchestration.sweep import check_placement, run_sweep
from raysoup.orchestration.trial_records import diverged_trials
from raysoup.prepare import check_data_paths, prepare
from raysoup.report import (
    comparison_section,
    diverged_line,
    markdown_table,
    summarize,
    summary_rows,
    write_report,
)
from raysoup.soup.anytime import read_offers
from raysoup.tracking import Tracker, default_uri, quiet
from raysoup.workdir import Workdir, diverged_hparams, inference_costs
from raysoup.workdir.snapshot import check_snapshot, write_snapshot

log = logging.getLogger("raysoup")

STAGES = ("sweep", "evaluate", "soup", "report")
# The pinned config fields (`workdir.PINNED`) that only say how the sweep is executed: a
# resumed sweep applies a changed max_failures; the others Tune restores from its state, so
# they may change only while no sweep is unfinished (snapshot_config refuses them otherwise,
# before writing anything).
EXECUTION_ONLY = ("sweep.max_failures", *(f"sweep.{k}" for k in KEPT_ON_RESUME),
                  # the anytime soup only watches (search: soup, which it steers, is pinned)
                  "sweep.anytime.enabled", "sweep.anytime.cpus", "sweep.anytime.gpus")


class Run:
    """One pipeline invocation over one workdir: shared state of the stages."""

    def __init__(self, cfg: ExperimentCfg, workdir: Path):
        self.cfg, self.workdir = cfg, workdir
        self.timings: dict[str, float] = {}
        quiet()
        self.tracker = Tracker(cfg.tracking.uri or default_uri(workdir),
                               cfg.tracking.experiment or cfg.name,
                               artifact_root=Workdir(workdir).mlartifacts, workdir=workdir)
        self.parent = self.tracker.sweep_run({"experiment": cfg.name, "workdir": str(workdir)})
        self.actors: EvalActors | None = None  # started with the prepare stage's data
        self.audits: dict[str, Audit] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        log.info("── %s", name)
        metrics.stage_started(name)
        start = time.perf_counter()
        yield
        self.tracker.persist()
        self.timings[name] = time.perf_counter() - start
        metrics.stage_finished(name, self.timings[name])
        log.info("── %s done in %.1f s", name, self.timings[name])

    @property
    def layout(self) -> Workdir:
        return Workdir(self.workdir)

    @property
    def results_path(self) -> Path:
        return self.layout.results

    # ------------------------------------------------------------ stages

    def prepare(self) -> None:
        with self.stage("prepare"):
            self.data, self.zeroshot = prepare(self.cfg, self.workdir)
            self.actors = EvalActors(self.cfg, self.workdir, self.data, self.zeroshot)
            # Every trial and soup run records the splits it was made and measured with.
            self.tracker.datasets = split_records(self.data, self.cfg.data, self.workdir,
                                                  self.tracker.experiment_name)

    def sweep(self) -> None:
        with self.stage("sweep"):
            heldout = None
            wanted = self.cfg.sweep.anytime.enabled or reports_heldout(self.cfg)
            if wanted and sweep_to_run(self.cfg, self.workdir):
                # Decoded once, now: the anytime soup and the trials score it during the
                # sweep, and the evaluate stage reuses the same cache.
                heldout = build_eval_cache(
                    {"heldout": self.data.heldout}, self.workdir, self.zeroshot["preprocess"],
                    self.cfg.data.eval_cache_shard, self.cfg.data.skip_corrupt)["heldout"]
            run_sweep(self.cfg, self.workdir, self.tracker, self.parent, heldout)

    def split_names(self) -> list[str]:
        return ["heldout", "test", *self.data.shifts]

    def models(self) -> list[tuple[str, str, Path]]:
        """Every model on disk: (name, kind, path), ingredients audited first
        (`evaluate_stage.models_on_disk`). `self.soup_ids` gets each soup's id: its result
        rows count only for that id."""
        out, self.soup_ids = evaluate_stage.models_on_disk(self.layout, self.audits)
        return out

    def evaluate(self, stage: str = "evaluate", splits: list[str] | None = None) -> pa.Table:
        with self.stage(stage):
            table = res.read_results(self.results_path)
            models = self.models()
            jobs = evaluate_stage.missing_jobs(table, models, self.soup_ids,
                                               splits or self.split_names())
            if not jobs:
                log.info("evaluate: every (model, split) is already in %s", self.results_path)
                return table
            return evaluate_stage.score_jobs(self.actors.evaluation_pool, jobs, table,
                                             self.results_path, self.soup_ids, stage)

    def soup(self) -> None:
        """Candidates → cooking → publishing (`soup_stage`): the soups cook from the models on
        disk now: a sweep still running (`raysoup soup` from another shell) may finish trials
        meanwhile; they join the next soup stage."""
        on_disk = self.models()
        heldout = self.heldout_accuracies(on_disk)
        kinds = {"ingredient", "zeroshot"} if self.cfg.soup.include_zeroshot else {"ingredient"}
        models = [m for m in on_disk if m[1] in kinds]
        candidates = soup_stage.soup_candidates(models, heldout, self.audits,
                                                self.cfg.soup.strict)
        anchor = soup_stage.zeroshot_anchor(on_disk, heldout)
        with self.stage("soup"), self.actors.soup_kitchen() as pool:
            soups = soup_stage.cook_soups(self.cfg.soup.recipes, candidates, self.layout.soups,
                                          self.cfg.soup.num_shards, pool, cfg=self.cfg.soup,
                                          anchor=anchor)
        table = self.evaluate("soup evaluation")
        with self.stage("publish"):
            soup_stage.publish(self.cfg, self.workdir, self.tracker, self.parent, soups,
                               candidates, table, self.actors.splits_ref)

    def heldout_accuracies(self, on_disk: list[tuple[str, str, Path]]) -> dict[str, float]:
        """Held-out accuracy by model; trials finished since the last evaluation are scored
        on held-out first."""
        heldout = res.accuracy_of(res.read_results(self.results_path), "heldout")
        if any(name not in heldout for name, kind, _ in on_disk
               if kind in ("ingredient", "zeroshot")):
            table = self.evaluate("held-out evaluation", splits=["heldout"])
            heldout = res.accuracy_of(table, "heldout")
        return heldout

    def diverged(self) -> dict[str, dict]:
        """Each diverged trial's sampled hyper-parameters: what the report shows for it."""
        return diverged_hparams(self.workdir, diverged_trials(self.workdir),
                                self.cfg.sweep.space)

    def report(self) -> None:
        with self.stage("report"):
            table = res.read_results(self.results_path)
            files = write_report(table, self.layout.report, self.cfg.name,
                                 inference_costs(self.layout.soups), self.diverged(),
                                 read_offers(self.workdir), two_class_labels(self.data))
            storage.publish(self.layout.report)
            storage.pull(self.results_path, exact=True)  # MLflow uploads local files
            self.tracker.log_artifacts(self.parent, files, subdir="report")
            self.tracker.log_artifacts(self.parent, [self.results_path])

    def summary(self) -> str:
        table = res.read_results(self.results_path)
        rows, shifts = summarize(table)
        labelled = summary_rows(rows, inference_costs(self.layout.soups))
        timing = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        diverged = diverged_line(self.diverged())
        versus = comparison_section(table, labelled, shifts)
        return (f"\nraysoup: {self.cfg.name} — workdir {storage.display(self.workdir)}\n\n"
                f"{markdown_table(labelled, shifts)}\n\n"
                + (f"{versus}\n\n" if versus else "")
                + (f"{diverged}\n" if diverged else "")
                + f"stage times: {timing}\n"
                f"report: {storage.display(self.layout.report / 'README.md')}\n")

    def close(self, ok: bool) -> None:
        if self.actors is not None:
            self.actors.release()
        self.tracker.end(self.parent, ok=ok)
        self.tracker.persist()


def check_config(cfg: ExperimentCfg, workdir: Path) -> None:
    """Refuse a config the workdir's results do not allow (`workdir.check_snapshot`): a
    workdir is never shared by configs that differ in model, data or sweep (their ingredients
    and results would mix). Eval, soup, tracking and the name may change (e.g. adding a recipe
    to an existing sweep), and so may sweep.max_failures; sweep.max_concurrent and
    sweep.reuse_actors only when no unfinished sweep would be resumed (Tune keeps the values
    it started with). Writes nothing; `--dry-run` calls it too."""
    def check_resume(saved: dict) -> None:
        started = {k: (saved.get("sweep") or {}).get(k) for k in KEPT_ON_RESUME}
        if any(v != getattr(cfg.sweep, k) for k, v in started.items() if v is not None) \
                and unfinished_sweep(cfg, workdir):
            refuse_kept_changes(started, cfg, storage.display(workdir))

    check_snapshot(cfg, workdir, EXECUTION_ONLY, check_resume)


def snapshot_config(cfg: ExperimentCfg, workdir: Path) -> None:
    """`check_config`, then the config saved as the workdir's snapshot."""
    check_config(cfg, workdir)
    write_snapshot(cfg, workdir)


def run_pipeline(cfg: ExperimentCfg, workdir: Path, stages: tuple[str, ...] = STAGES,
                 address: str | None = None, metrics_export_port: int | None = None,
                 dashboard: bool = False) -> Run:
    # Inputs first: nothing is written to the workdir, and no Ray started, for a config
    # that names missing data or that the workdir's results refuse.
    check_data_paths(cfg)
    check_config(cfg, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not cfg.tracking.uri:
        # Remote workdir: the runs of earlier drivers (the bucket's copy, never a stale one).
        storage.pull(Workdir(workdir).mlflow_db, exact=True)
    connect(address, metrics_export_port, dashboard)
    if "sweep" in stages:
        check_placement(cfg, workdir)  # trials it cannot place: refused before anything runs
    run = Run(cfg, workdir)
    ok = False
    try:
        run.prepare()
        # Saved once the inputs are prepared: a first run that fails on them leaves no
        # snapshot behind to refuse the corrected config.
        write_snapshot(cfg, workdir)
        if "sweep" in stages:
            run.sweep()
        if "evaluate" in stages:
            run.evaluate()
        if "soup" in stages:
            run.soup()
        if "report" in stages:
            run.report()
        ok = True
    finally:
        run.close(ok)
    return run
