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
from raysoup.evaluate.task_metrics import task_metrics, two_class_labels
from raysoup.orchestration import evaluate_stage, metrics, soup_stage
from raysoup.orchestration.actors import EvalActors
from raysoup.orchestration.cluster import connect
from raysoup.orchestration.cpu_time import TreeCpu
from raysoup.orchestration.evaluation import build_eval_cache
from raysoup.orchestration.resume import (
    KEPT_ON_RESUME,
    adopt_first_segment,
    check_growth,
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
from raysoup.workdir import Workdir, diverged_hparams, inference_costs, recipe_info
from raysoup.workdir.lock import SOUPS, SWEEP, WorkdirLocks
from raysoup.workdir.snapshot import check_snapshot, saved_config, write_snapshot

log = logging.getLogger("raysoup")

STAGES = ("sweep", "evaluate", "soup", "report")
# The pinned config fields (`workdir.PINNED`) that only say how the sweep is executed: a
# resumed sweep applies a changed max_failures; the others Tune restores from its state, so
# they may change only while no sweep is unfinished (snapshot_config refuses them otherwise,
# before writing anything).
EXECUTION_ONLY = ("sweep.max_failures", *(f"sweep.{k}" for k in KEPT_ON_RESUME),
                  # may grow (resume.check_growth): new trials continue the seeded search
                  "sweep.num_samples",
                  # the anytime soup only watches (search: soup, which it steers, is pinned)
                  "sweep.anytime.enabled", "sweep.anytime.cpus", "sweep.anytime.gpus")


class Run:
    """One pipeline invocation over one workdir: shared state of the stages."""

    def __init__(self, cfg: ExperimentCfg, workdir: Path, locks: WorkdirLocks | None = None):
        self.cfg, self.workdir = cfg, workdir
        self.locks = locks  # checked at each stage: a lease taken over stops the run
        self.timings: dict[str, float] = {}
        # CPU seconds per stage of the driver's process tree (Ray's workers included on a
        # local cluster): what carries over to another machine (docs/benchmarks.md).
        self.cpu: dict[str, float] = {}
        self.cpu_meter = TreeCpu().start()
        quiet()
        self.tracker = Tracker(cfg.tracking.uri or default_uri(workdir),
                               cfg.tracking.experiment or cfg.name,
                               artifact_root=Workdir(workdir).mlartifacts, workdir=workdir)
        self.parent = self.tracker.sweep_run({"experiment": cfg.name, "workdir": str(workdir)})
        self.actors: EvalActors | None = None  # started with the prepare stage's data
        self.audits: dict[str, Audit] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.locks is not None:
            self.locks.check()
        log.info("── %s", name)
        metrics.stage_started(name)
        start, cpu = time.perf_counter(), self.cpu_meter.seconds()
        yield
        self.tracker.persist()
        self.timings[name] = time.perf_counter() - start
        self.cpu[name] = self.cpu_meter.seconds() - cpu
        metrics.stage_finished(name, self.timings[name])
        log.info("── %s done in %.1f s (CPU %.1f s)", name, self.timings[name], self.cpu[name])

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
            if "greedy" in self.cfg.soup.recipes:
                self.cfg.soup.greedy.check_task(len(self.data.classnames))
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

    def eval_images(self) -> int:
        """Images on every evaluation split (what one model's kept logits cover)."""
        return sum(len(d) for d in (self.data.heldout, self.data.test,
                                    *self.data.shifts.values()))

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
            keep = evaluate_stage.keeps_logits(models, self.eval_images(),
                                               self.zeroshot["num_classes"],
                                               self.cfg.eval.logits_cache_mb)
            table = evaluate_stage.score_jobs(self.actors.evaluation_pool, jobs, table,
                                              self.results_path, self.soup_ids, stage,
                                              self.layout.logits_cache, keep)
            if stage == "evaluate":  # the zero-shot model and the trials, on their runs now
                self.tracker.log_results(self.parent, table, two_class_labels(self.data))
            return table

    def soup(self) -> None:
        """Candidates → cooking → publishing (`soup_stage`): the soups cook from the models on
        disk now: a sweep still running (`raysoup soup` from another shell) may finish trials
        meanwhile; they join the next soup stage."""
        on_disk = self.models()
        heldout = self.heldout_accuracies(on_disk)
        kinds = {"ingredient", "zeroshot"} if self.cfg.soup.include_zeroshot else {"ingredient"}
        models = [m for m in on_disk if m[1] in kinds]
        candidates = soup_stage.soup_candidates(models, heldout, self.audits,
                                                self.cfg.soup.strict, self.heldout_metrics())
        anchor = soup_stage.zeroshot_anchor(on_disk, heldout)
        timings: dict[str, tuple[float, float]] = {}
        with self.stage("soup"), self.actors.soup_kitchen() as pool:
            soups = soup_stage.cook_soups(self.cfg.soup.recipes, candidates, self.layout.soups,
                                          self.cfg.soup.num_shards, pool, cfg=self.cfg.soup,
                                          anchor=anchor, timings=timings)
        table = self.evaluate("soup evaluation")
        with self.stage("publish"):
            soup_stage.publish(self.cfg, self.workdir, self.tracker, self.parent, soups,
                               candidates, table, self.actors.splits_ref, timings,
                               two_class_labels(self.data))

    def heldout_accuracies(self, on_disk: list[tuple[str, str, Path]]) -> dict[str, float]:
        """Held-out accuracy by model; trials finished since the last evaluation are scored
        on held-out first."""
        heldout = res.accuracy_of(res.read_results(self.results_path), "heldout")
        if any(name not in heldout for name, kind, _ in on_disk
               if kind in ("ingredient", "zeroshot")):
            table = self.evaluate("held-out evaluation", splits=["heldout"])
            heldout = res.accuracy_of(table, "heldout")
        return heldout

    def heldout_metrics(self) -> dict[str, dict[str, float]]:
        """F1 and MCC on held-out by model, from the results' per-example correctness: what
        greedy ranks by under `soup.greedy.metric` (empty for accuracy, the default)."""
        labels = two_class_labels(self.data)
        if self.cfg.soup.greedy.metric == "accuracy" or labels is None:
            return {}
        table = res.read_results(self.results_path)
        return {row["model"]: task_metrics(labels["heldout"], row["correct_bits"], 2)
                for row in table.to_pylist()
                if row["split"] == "heldout" and row.get("correct_bits") is not None
                and row["n"] == len(labels["heldout"])}

    def diverged(self) -> dict[str, dict]:
        """Each diverged trial's sampled hyper-parameters: what the report shows for it."""
        return diverged_hparams(self.workdir, diverged_trials(self.workdir),
                                self.cfg.sweep.space)

    def report(self) -> None:
        with self.stage("report"):
            table = res.read_results(self.results_path)
            files = write_report(table, self.layout.report, self.cfg.name,
                                 inference_costs(self.layout.soups), self.diverged(),
                                 read_offers(self.workdir),
                                 recipe_info(self.layout.soups, "wiseft"),
                                 two_class_labels(self.data),
                                 (recipe_info(self.layout.soups, "greedy") or {}).get(
                                     "metric", "accuracy"))
            storage.publish(self.layout.report)
            storage.pull(self.results_path, exact=True)  # MLflow uploads local files
            self.tracker.log_artifacts(self.parent, files, subdir="report")
            self.tracker.log_artifacts(self.parent, [self.results_path])
            # Every model's metrics on its run: also after `raysoup evaluate` without a soup stage.
            self.tracker.log_results(self.parent, table, two_class_labels(self.data))

    def summary(self) -> str:
        table = res.read_results(self.results_path)
        rows, shifts = summarize(table)
        labelled = summary_rows(rows, inference_costs(self.layout.soups))
        timing = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        # Since the driver started: imports, Ray's start and the stages.
        cpu = ", ".join(f"{k} {v:.1f}s" for k, v in self.cpu.items())
        cpu += f"; all {self.cpu_meter.seconds():.1f}s"
        diverged = diverged_line(self.diverged())
        versus = comparison_section(table, labelled, shifts)
        return (f"\nraysoup: {self.cfg.name} — workdir {storage.display(self.workdir)}\n\n"
                f"{markdown_table(labelled, shifts)}\n\n"
                + (f"{versus}\n\n" if versus else "")
                + (f"{diverged}\n" if diverged else "")
                + f"stage times: {timing}\n"
                f"stage CPU times (this machine's process tree): {cpu}\n"
                f"report: {storage.display(self.layout.report / 'README.md')}\n")

    def close(self, ok: bool) -> None:
        self.cpu_meter.stop()  # summary() still reads the total (one sample more)
        if self.actors is not None:
            self.actors.release()
        self.tracker.end(self.parent, ok=ok)
        self.tracker.persist()


def check_config(cfg: ExperimentCfg, workdir: Path) -> None:
    """Refuse a config the workdir's results do not allow (`workdir.check_snapshot`): a
    workdir is never shared by configs that differ in model, data or sweep (their ingredients
    and results would mix). Eval, soup, tracking and the name may change (e.g. adding a recipe
    to an existing sweep), and so may sweep.max_failures; sweep.num_samples may grow
    (`resume.check_growth`: not shrink, not under optuna); sweep.max_concurrent and
    sweep.reuse_actors only when no unfinished sweep would be resumed (Tune keeps the values
    it started with). Writes nothing; `--dry-run` calls it too."""
    def check_resume(saved: dict) -> None:
        check_growth(saved, cfg, storage.display(workdir))
        started = {k: (saved.get("sweep") or {}).get(k) for k in KEPT_ON_RESUME}
        trials = ExperimentCfg.model_validate(saved).sweep.trials  # the sweep there now
        if any(v != getattr(cfg.sweep, k) for k, v in started.items() if v is not None) \
                and unfinished_sweep(cfg, workdir, trials):
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
    locks = WorkdirLocks(workdir)
    try:
        _take_locks(locks, stages)
        return _run_locked(cfg, workdir, stages, locks, address, metrics_export_port,
                           dashboard)
    finally:
        locks.release()


def _take_locks(locks: WorkdirLocks, stages: tuple[str, ...]) -> None:
    """One driver per workdir (`workdir.lock`): a sweep holds the sweep lock; the stages
    after it the soups lock, which `raysoup soup` beside a running sweep takes alone. A run
    with a sweep takes the soups lock once its sweep is done (`_run_locked`)."""
    if "sweep" in stages:
        locks.take(SWEEP)
    elif set(stages) - {"sweep"}:
        locks.take(SOUPS)


def _run_locked(cfg: ExperimentCfg, workdir: Path, stages: tuple[str, ...],
                locks: WorkdirLocks, address: str | None, metrics_export_port: int | None,
                dashboard: bool) -> Run:
    if not cfg.tracking.uri:
        # Remote workdir: the runs of earlier drivers (the bucket's copy, never a stale one).
        storage.pull(Workdir(workdir).mlflow_db, exact=True)
    connect(address, metrics_export_port, dashboard)
    if "sweep" in stages:
        check_placement(cfg, workdir)  # trials it cannot place: refused before anything runs
    run = Run(cfg, workdir, locks)
    ok = False
    try:
        run.prepare()
        # Saved once the inputs are prepared: a first run that fails on them leaves no
        # snapshot behind to refuse the corrected config. (A sweep from before sweeps could
        # grow gets its size noted first: the snapshot is where it was.)
        adopt_first_segment(saved_config(workdir), workdir)
        write_snapshot(cfg, workdir)
        if "sweep" in stages:
            run.sweep()
        if set(stages) - {"sweep"}:
            # A `raysoup soup` from another shell may be cooking: its soups finish first.
            locks.take(SOUPS, wait=True)
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
