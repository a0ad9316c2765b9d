"""The stages of `raysoup run`, in order; each is skipped or resumed from what is on disk."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pyarrow as pa
import ray
import yaml

from raysoup import storage
from raysoup.checkpoints import list_ingredients, read_manifest
from raysoup.checkpoints.audit import Audit, AuditCache, check_compatible
from raysoup.config import ConfigError, ExperimentCfg
from raysoup.data.lineage import split_records
from raysoup.evaluate import results as res
from raysoup.export import base_clip_state, model_info
from raysoup.faults import failpoint
from raysoup.orchestration import metrics, reduction
from raysoup.orchestration.cluster import connect
from raysoup.orchestration.evaluation import (
    EvalPool,
    actor_threads,
    build_eval_cache,
    evaluate_models,
)
from raysoup.orchestration.published import Publisher, example_images
from raysoup.orchestration.resume import (
    KEPT_ON_RESUME,
    refuse_kept_changes,
    sweep_to_run,
    unfinished_sweep,
)
from raysoup.orchestration.search import reports_heldout
from raysoup.orchestration.soup_files import (
    cooked_soup_id,
    inference_costs,
    recipe_files,
    run_params,
    soup_identity,
)
from raysoup.orchestration.souping import cook_soups, read_recipe
from raysoup.orchestration.sweep import run_sweep
from raysoup.orchestration.trial_records import diverged_trials
from raysoup.prepare import ZEROSHOT, prepare
from raysoup.progress import Progress
from raysoup.report import diverged_line, markdown_table, summarize, summary_rows, write_report
from raysoup.soup import Candidate
from raysoup.soup.anytime import read_offers
from raysoup.soup.base import by_heldout
from raysoup.tracking import Tracker, default_uri, quiet

log = logging.getLogger("raysoup")

STAGES = ("sweep", "evaluate", "soup", "report")
CONFIG_SNAPSHOT = "experiment.yaml"
AUDIT_FILE = ".audit.json"
# Config sections the workdir's ingredients and results depend on, less the fields that only
# say how the sweep is executed: a resumed sweep applies a changed max_failures; the others
# Tune restores from its state, so they may change only while no sweep is unfinished
# (snapshot_config refuses them otherwise, before writing anything).
PINNED = ("model", "data", "sweep")
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
                               artifact_root=workdir / "mlartifacts", workdir=workdir)
        self.parent = self.tracker.sweep_run({"experiment": cfg.name, "workdir": str(workdir)})
        self._pool: EvalPool | None = None
        self._pool_cpus: float | None = None
        self._splits_ref = None
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
    def results_path(self) -> Path:
        return self.workdir / "results.parquet"

    # ------------------------------------------------------------ stages

    def prepare(self) -> None:
        with self.stage("prepare"):
            self.data, self.zeroshot = prepare(self.cfg, self.workdir)
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

    def pool(self, count: int, num_cpus: float | None = None) -> EvalPool:
        """Eval actors; the preprocessed splits are put in the object store once per run."""
        if self._splits_ref is None:
            named = {"heldout": self.data.heldout, "test": self.data.test, **self.data.shifts}
            self._splits_ref = ray.put(build_eval_cache(
                named, self.workdir, self.zeroshot["preprocess"], self.cfg.data.eval_cache_shard,
                self.cfg.data.skip_corrupt))
        if self._pool is None or (len(self._pool), self._pool_cpus) != (count, num_cpus):
            self.release_actors()
            self._pool = EvalPool.start(self.cfg, self._splits_ref, self.zeroshot["model_name"],
                                        self.zeroshot["num_classes"], count, num_cpus)
            self._pool_cpus = num_cpus
        return self._pool

    def soup_sizes(self) -> tuple[int, float | None]:
        """(CPUs reserved for reductions, CPUs per eval actor) in the soup stage."""
        return reduction.soup_cpus(ray.cluster_resources().get("CPU", 1),
                                   self.cfg.eval.num_actors, self.cfg.eval.cpus_per_actor,
                                   self.cfg.soup.num_shards)

    def eval_cpus(self) -> float | None:
        """CPUs per eval actor in the evaluation stages: the soup stage's size when that gives
        the actors as many threads as the configured one, so that one pool of actors serves
        evaluate, soup and soup evaluation (each start costs a process, imports and a model)."""
        _, cpus = self.soup_sizes()
        if cpus is not None and actor_threads(cpus) == actor_threads(self.cfg.eval.cpus_per_actor):
            return cpus
        return None

    @contextmanager
    def soup_kitchen(self) -> Iterator[EvalPool]:
        """Eval actors that score greedy candidates, beside CPUs reserved for the reduction
        tasks (`reduction.reserved_cpus`), for as long as the block runs."""
        count = self.cfg.eval.num_actors
        reserve, cpus = self.soup_sizes()
        if self._pool is not None and (len(self._pool), self._pool_cpus) != (count, cpus):
            self.release_actors()
        with ExitStack() as stack:
            try:
                # The evaluate stage's actors may sit where the reservation must go: give them
                # a moment, then free their CPUs and start fresh ones after the reservation.
                stack.enter_context(reduction.reserved_cpus(reserve,
                                                            wait_s=10 if self._pool else None))
            except TimeoutError:
                self.release_actors()
                stack.enter_context(reduction.reserved_cpus(reserve))
            yield self.pool(count, cpus)

    def release_actors(self) -> None:
        # Actors hold their CPUs while alive; free them for the reduction tasks.
        if self._pool is not None:
            self._pool.stop()
        self._pool = None

    def split_names(self) -> list[str]:
        return ["heldout", "test", *self.data.shifts]

    def models(self) -> list[tuple[str, str, Path]]:
        """Every model on disk: (name, kind, path). Ingredients are audited first (sha256 vs
        manifest, NaN/Inf count; cached), so a corrupt file stops the run with its path.
        `self.soup_ids` gets each soup's id: its result rows count only for that id."""
        audits = AuditCache(self.workdir / AUDIT_FILE)
        out = []
        for p in list_ingredients(self.workdir / "ingredients"):
            self.audits[p.name] = audits.audit(p)
            out.append((p.name, read_manifest(p).get("kind", "ingredient"), p))
        self.soup_ids: dict[str, str | None] = {}
        for recipe_file in recipe_files(self.workdir / "soups"):
            name, kind = soup_identity(recipe_file.parent)
            self.soup_ids[name] = cooked_soup_id(recipe_file.parent)
            out.append((name, kind, recipe_file.parent))
        return out

    def evaluate(self, stage: str = "evaluate", splits: list[str] | None = None) -> pa.Table:
        with self.stage(stage):
            table = res.read_results(self.results_path)
            models = self.models()
            done = res.done_pairs(table, self.soup_ids)
            jobs = []
            for name, kind, path in models:
                missing = [s for s in splits or self.split_names() if (name, s) not in done]
                if missing:
                    jobs.append((name, kind, path, missing))
            if not jobs:
                log.info("evaluate: every (model, split) is already in %s", self.results_path)
                return table
            bar = Progress(total=len(jobs), desc=stage, unit="models")

            def landed(model: str, kind: str, scores: dict) -> None:
                nonlocal table
                # Written after every model, atomically: an interrupted stage keeps its rows.
                table = res.merge(table, [res.rows(model, kind, scores,
                                                   self.soup_ids.get(model))])
                res.write_results(self.results_path, table)
                failpoint(f"{stage.replace(' ', '_')}.model")
                bar.update(1, f"{model}: test {scores['test'][0] / scores['test'][1]:.3f}"
                           if "test" in scores else model)

            evaluate_models(self.pool(self.cfg.eval.num_actors, self.eval_cpus()), jobs,
                            progress=landed)
            bar.close()
            return table

    def soup(self) -> None:
        # The soups cook from the models on disk now: a sweep still running (`raysoup soup`
        # from another shell) may finish trials meanwhile; they join the next soup stage.
        on_disk = self.models()
        table = res.read_results(self.results_path)
        heldout = res.accuracy_of(table, "heldout")
        if any(name not in heldout for name, kind, _ in on_disk
               if kind in ("ingredient", "zeroshot")):
            # Trials finished since the last evaluation are scored on held-out first.
            table = self.evaluate("held-out evaluation", splits=["heldout"])
            heldout = res.accuracy_of(table, "heldout")
        kinds = {"ingredient", "zeroshot"} if self.cfg.soup.include_zeroshot else {"ingredient"}
        models = [m for m in on_disk if m[1] in kinds]
        candidates = soup_candidates(models, heldout, self.audits, self.cfg.soup.strict)
        # WiSE-FT, Model Stock and the task-vector methods start from the zero-shot model.
        anchor = next((Candidate(n, heldout.get(n, float("nan")), p)
                       for n, k, p in on_disk if k == "zeroshot"), None)
        with self.stage("soup"), self.soup_kitchen() as pool:
            soups = cook_soups(self.cfg.soup.recipes, candidates, self.workdir / "soups",
                               self.cfg.soup.num_shards, pool, cfg=self.cfg.soup,
                               anchor=anchor)
        table = self.evaluate("soup evaluation")
        with self.stage("publish"):
            self.publish(soups, candidates, table)

    def publish(self, soups: dict[str, Path], candidates: list[Candidate], table: pa.Table
                ) -> None:
        """A run per soup in MLflow; with tracking.log_models, each weight soup and the best
        single model as MLflow Models, the soups registered and the champion crowned."""
        publisher = self.publisher() if self.cfg.tracking.log_models else None
        soup_id = None
        for recipe, soup_dir in soups.items():
            accs = res.accuracies_of_model(table, soup_identity(soup_dir)[0])
            meta = read_recipe(soup_dir)
            soup_id = meta.get("soup_id") or soup_id  # one candidate set per soup stage
            # An artifact: MLflow uploads a local file, which must be the bucket's copy.
            storage.pull(soup_dir / "recipe.json", exact=True)
            publish = None
            if publisher is not None and meta.get("kind", "soup") == "soup":
                def publish(run_id, soup_dir=soup_dir, meta=meta, accs=accs):
                    publisher.soup(run_id, soup_dir, meta, accs)
            self.tracker.soup_run(self.parent, recipe, meta["ingredients"], meta["weights"], accs,
                                  [soup_dir / "recipe.json"], params=run_params(meta),
                                  identity=meta.get("soup_id", ""), before_end=publish)
        if publisher is not None:
            self.publish_best_single(publisher, candidates, table)
            publisher.crown(soup_id)

    def publisher(self) -> Publisher:
        """What logs this run's models: the base CLIP (its text tower completes each export)
        and a few test images (from the eval cache) as the input example."""
        info = model_info(self.workdir / "ingredients" / ZEROSHOT)
        name = self.cfg.tracking.registered_model or self.tracker.experiment_name
        # The eval cache's splits: put in the object store by the soup stage's kitchen.
        test = ray.get(self._splits_ref)["test"].images
        return Publisher(self.tracker, info, lambda: base_clip_state(self.cfg.model, info),
                         example_images(test),
                         name if self.cfg.tracking.register_soups else None)

    def publish_best_single(self, publisher: Publisher, candidates: list[Candidate],
                            table: pa.Table) -> None:
        """The best single model by held-out accuracy, as an MLflow Model on its trial run."""
        trials = by_heldout([c for c in candidates if c.name != ZEROSHOT])
        if not trials:
            return
        best = trials[0]  # the report's "best single" (same order)
        run_id = self.tracker.trial_run_id(best.name)
        if run_id is None:  # an imported ingredient: no trial run to log it on
            return
        accs = res.accuracies_of_model(table, best.name)
        publisher.log(run_id, best.path, best.name,
                      {"model": best.name, "recipe": "best single", "ingredients": [best.name],
                       "accuracy": accs})

    def report(self) -> None:
        with self.stage("report"):
            table = res.read_results(self.results_path)
            files = write_report(table, self.workdir / "report", self.cfg.name,
                                 inference_costs(self.workdir / "soups"),
                                 diverged_hparams(self.workdir, self.cfg.sweep.space),
                                 read_offers(self.workdir))
            storage.publish(self.workdir / "report")
            storage.pull(self.results_path, exact=True)  # MLflow uploads local files
            self.tracker.log_artifacts(self.parent, files, subdir="report")
            self.tracker.log_artifacts(self.parent, [self.results_path])

    def summary(self) -> str:
        table = res.read_results(self.results_path)
        rows, shifts = summarize(table)
        labelled = summary_rows(rows, inference_costs(self.workdir / "soups"))
        timing = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        diverged = diverged_line(diverged_hparams(self.workdir, self.cfg.sweep.space))
        return (f"\nraysoup: {self.cfg.name} — workdir {storage.display(self.workdir)}\n\n"
                f"{markdown_table(labelled, shifts)}\n\n"
                + (f"{diverged}\n" if diverged else "")
                + f"stage times: {timing}\n"
                f"report: {storage.display(self.workdir / 'report' / 'README.md')}\n")

    def close(self, ok: bool) -> None:
        self.release_actors()
        self.tracker.end(self.parent, ok=ok)
        self.tracker.persist()


def diverged_hparams(workdir: Path, keys) -> dict[str, dict]:
    """Each diverged trial's values of `keys` (the sweep's sampled hyper-parameters), from
    its manifest: what the report shows for it."""
    out = {}
    for name in diverged_trials(workdir):
        record = json.loads(storage.read_text(workdir / "ingredients" / name / "manifest.json"))
        hp = record.get("hparams", {})
        out[name] = {k: hp[k] for k in keys if k in hp}
    return out


def soup_candidates(models: list[tuple[str, str, Path]], heldout: dict[str, float],
                    audits: dict[str, Audit], strict: bool) -> list[Candidate]:
    """The ingredients a soup may use: evaluated, finite (or an error under `strict`), and
    all of one tensor layout."""
    candidates = []
    for name, _, path in models:
        if name not in heldout:
            raise RuntimeError(f"ingredient {name} has no held-out accuracy; run evaluate first")
        if not audits[name].finite:
            bad = audits[name].nonfinite
            what = f"ingredient {name} ({path}) has NaN/Inf weights in {sorted(bad)[:3]}"
            if strict:
                raise RuntimeError(f"{what}; soup.strict is set")
            log.warning("%s: left out of every soup", what)
            continue
        candidates.append(Candidate(name, heldout[name], path))
    check_compatible([c.path for c in candidates])
    return candidates


class WorkdirMismatch(ConfigError):
    """The workdir holds results of a config that differs in what those results depend on."""


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def snapshot_config(cfg: ExperimentCfg, workdir: Path) -> None:
    """The resolved config lives in the workdir so `raysoup resume WORKDIR` needs nothing else.

    A workdir is never shared by configs that differ in model, data or sweep: their
    ingredients and results would mix. Eval, soup, tracking and the name may change (e.g.
    adding a recipe to an existing sweep), and so may sweep.max_failures; sweep.max_concurrent
    and sweep.reuse_actors only when no unfinished sweep would be resumed (Tune keeps the values
    it started with). A refused config leaves the saved one in place, so `raysoup resume
    WORKDIR` continues."""
    path = workdir / CONFIG_SNAPSHOT
    new = json.loads(cfg.model_dump_json())
    try:
        old_text = storage.read_text(path)  # a remote workdir's own copy
    except FileNotFoundError:
        old_text = None
    shown = storage.display(workdir)
    if old_text is not None:
        old = yaml.safe_load(old_text) or {}
        a, b = _flatten({k: old.get(k) for k in PINNED}), _flatten({k: new[k] for k in PINNED})
        # A field added since the snapshot was written is absent from it: it stands for the
        # field's default (what the older code did), so a workdir from before an upgrade resumes.
        try:
            filled = _flatten({k: v for k, v in json.loads(
                ExperimentCfg.model_validate(old).model_dump_json()).items() if k in PINNED})
        except ValueError:
            filled = {}
        a.update({k: filled[k] for k in set(filled) - set(a)})
        diff = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>")
                      and k not in EXECUTION_ONLY)
        if diff:
            listing = "\n".join(f"  {k}: {a.get(k, '<unset>')!r} in the workdir, now "
                              f"{b.get(k, '<unset>')!r}" for k in diff[:10])
            raise WorkdirMismatch(
                f"{shown} was written by a different experiment config; refusing to mix "
                f"results. Fields that differ:\n{listing}\nUse a new --workdir, or "
                f"`raysoup resume {shown}` to continue with the saved config.")
        started = {k: (old.get("sweep") or {}).get(k) for k in KEPT_ON_RESUME}
        if any(v != getattr(cfg.sweep, k) for k, v in started.items() if v is not None) \
                and unfinished_sweep(cfg, workdir):
            refuse_kept_changes(started, cfg, shown)
    text = yaml.safe_dump(new, sort_keys=False)
    if old_text != text:
        storage.write_file(path, text)


def run_pipeline(cfg: ExperimentCfg, workdir: Path, stages: tuple[str, ...] = STAGES,
                 address: str | None = None, metrics_export_port: int | None = None,
                 dashboard: bool = False) -> Run:
    workdir.mkdir(parents=True, exist_ok=True)
    snapshot_config(cfg, workdir)
    if not cfg.tracking.uri:
        # Remote workdir: the runs of earlier drivers (the bucket's copy, never a stale one).
        storage.pull(workdir / "mlflow.db", exact=True)
    connect(address, metrics_export_port, dashboard)
    run = Run(cfg, workdir)
    ok = False
    try:
        run.prepare()
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
