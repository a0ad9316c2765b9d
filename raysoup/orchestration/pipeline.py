"""The stages of `raysoup run`, in order; each is skipped or resumed from what is on disk."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import ray
import yaml
from ray.util import ActorPool
from tqdm import tqdm

from raysoup.checkpoints import list_ingredients, read_manifest
from raysoup.config import ExperimentCfg
from raysoup.evaluate import results as res
from raysoup.orchestration.evaluation import evaluate_models, start_actors, stop_actors
from raysoup.orchestration.souping import cook_soups, read_recipe, soup_model_name
from raysoup.orchestration.sweep import run_sweep
from raysoup.prepare import eval_splits, prepare
from raysoup.report import markdown_table, summarize, summary_rows, write_report
from raysoup.soup import Candidate
from raysoup.tracking import Tracker, default_uri, quiet

log = logging.getLogger("raysoup")

STAGES = ("sweep", "evaluate", "soup", "report")
CONFIG_SNAPSHOT = "experiment.yaml"


def connect(address: str | None) -> None:
    if ray.is_initialized():
        return
    # Workers inherit the driver's environment; keep Tune's console output compact.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    # Tiny trials checkpoint every few seconds; Tune's snapshot-frequency warning is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(address=address, log_to_driver=True, configure_logging=False)


class Run:
    """One pipeline invocation over one workdir: shared state of the stages."""

    def __init__(self, cfg: ExperimentCfg, workdir: Path):
        self.cfg, self.workdir = cfg, workdir
        self.timings: dict[str, float] = {}
        quiet()
        self.tracker = Tracker(cfg.tracking.uri or default_uri(workdir),
                               cfg.tracking.experiment or cfg.name,
                               artifact_root=workdir / "mlartifacts")
        self.parent = self.tracker.sweep_run({"experiment": cfg.name, "workdir": str(workdir)})
        self._actors: list = []
        self._splits_ref = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        log.info("── %s", name)
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start
        log.info("── %s done in %.1f s", name, self.timings[name])

    @property
    def results_path(self) -> Path:
        return self.workdir / "results.parquet"

    # ------------------------------------------------------------ stages

    def prepare(self) -> None:
        with self.stage("prepare"):
            self.data, self.zeroshot = prepare(self.cfg, self.workdir)

    def sweep(self) -> None:
        with self.stage("sweep"):
            run_sweep(self.cfg, self.workdir, self.tracker, self.parent)

    def actors(self, count: int) -> list:
        """Eval actors; the preprocessed splits are put in the object store once per run."""
        if self._splits_ref is None:
            self._splits_ref = ray.put(eval_splits(self.data, self.zeroshot["preprocess"]))
        if len(self._actors) != count:
            self.release_actors()
            self._actors = start_actors(self.cfg, self._splits_ref, self.zeroshot["model_name"],
                                        self.zeroshot["num_classes"], count)
        return self._actors

    def release_actors(self) -> None:
        # Actors hold their CPUs while alive; free them for the reduction tasks.
        stop_actors(self._actors)
        self._actors = []

    def split_names(self) -> list[str]:
        return ["heldout", "test", *self.data.shifts]

    def models(self) -> list[tuple[str, str, Path]]:
        """Every model on disk: (name, kind, path)."""
        out = [(p.name, read_manifest(p).get("kind", "ingredient"), p)
               for p in list_ingredients(self.workdir / "ingredients")]
        for recipe_file in sorted((self.workdir / "soups").glob("*/recipe.json")):
            out.append((soup_model_name(recipe_file.parent.name), "soup", recipe_file.parent))
        return out

    def evaluate(self, stage: str = "evaluate") -> pa.Table:
        with self.stage(stage):
            table = res.read_results(self.results_path)
            done = res.done_pairs(table)
            jobs = []
            for name, kind, path in self.models():
                missing = [s for s in self.split_names() if (name, s) not in done]
                if missing:
                    jobs.append((name, kind, path, missing))
            if not jobs:
                log.info("evaluate: every (model, split) is already in %s", self.results_path)
                return table
            bar = tqdm(total=len(jobs), desc=stage, unit="model", disable=None)

            def landed(model: str, kind: str, scores: dict) -> None:
                nonlocal table
                # Written after every model, atomically: an interrupted stage keeps its rows.
                table = res.merge(table, [res.rows(model, kind, scores)])
                res.write_results(self.results_path, table)
                bar.update(1)
                bar.set_postfix_str(f"{model}: test {scores['test'][0] / scores['test'][1]:.3f}"
                                    if "test" in scores else model)

            evaluate_models(ActorPool(self.actors(self.cfg.eval.num_actors)), jobs, progress=landed)
            bar.close()
            return table

    def soup(self) -> None:
        table = res.read_results(self.results_path)
        heldout = res.accuracy_of(table, "heldout")
        kinds = {"ingredient", "zeroshot"} if self.cfg.soup.include_zeroshot else {"ingredient"}
        candidates = []
        for name, kind, path in self.models():
            if kind in kinds:
                if name not in heldout:
                    raise RuntimeError(f"ingredient {name} has no held-out accuracy; run evaluate first")
                candidates.append(Candidate(name, heldout[name], path))
        with self.stage("soup"):
            # One actor scores greedy candidates; the other CPUs run the reduction tasks.
            soups = cook_soups(self.cfg.soup.recipes, candidates, self.workdir / "soups",
                               self.cfg.soup.num_shards, self.actors(1)[0])
        table = self.evaluate("soup evaluation")
        for recipe, soup_dir in soups.items():
            accs = res.accuracies_of_model(table, soup_model_name(recipe))
            meta = read_recipe(soup_dir)
            self.tracker.soup_run(self.parent, recipe, meta["ingredients"], meta["weights"], accs,
                                  [soup_dir / "recipe.json"])

    def report(self) -> None:
        with self.stage("report"):
            table = res.read_results(self.results_path)
            files = write_report(table, self.workdir / "report", self.cfg.name)
            self.tracker.log_artifacts(self.parent, files, subdir="report")
            self.tracker.log_artifacts(self.parent, [self.results_path])

    def summary(self) -> str:
        table = res.read_results(self.results_path)
        rows, shifts = summarize(table)
        timing = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        return (f"\nraysoup: {self.cfg.name} — workdir {self.workdir}\n\n"
                f"{markdown_table(summary_rows(rows), shifts)}\n\n"
                f"stage times: {timing}\nreport: {self.workdir / 'report' / 'README.md'}\n")

    def close(self, ok: bool) -> None:
        self.release_actors()
        self.tracker.end(self.parent, ok=ok)


def snapshot_config(cfg: ExperimentCfg, workdir: Path) -> None:
    """The resolved config lives in the workdir so `raysoup resume WORKDIR` needs nothing else."""
    path = workdir / CONFIG_SNAPSHOT
    text = yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def run_pipeline(cfg: ExperimentCfg, workdir: Path, stages: tuple[str, ...] = STAGES,
                 address: str | None = None) -> Run:
    workdir.mkdir(parents=True, exist_ok=True)
    snapshot_config(cfg, workdir)
    connect(address)
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
