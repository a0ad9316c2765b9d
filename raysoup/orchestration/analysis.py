"""`raysoup analyze`: the paper's analyses of a finished (or running) workdir, each a set of
independent evaluations fanned out over the run's eval actors (`EvalActors`: the same pool
and eval cache as the evaluate stage, nothing decoded twice).

Every evaluation is a job with a key (what it evaluates: the models' bytes, the weights, the
splits, the batch size); its result is journaled in WORKDIR/analysis/ as it lands, so a killed
analysis resumes with what it finished, and a job never depends on which actor ran it. The
math is in `raysoup.analysis` (pure); the analyses are `analysis_geometry.py` (landscape,
angles), `analysis_ensembles.py` and `analysis_transfer.py`, the command `analyses.py`; the
jobs they share are at the end of this module."""

from __future__ import annotations

import io
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysoup import storage
from raysoup.analysis import geometry
from raysoup.analysis.journal import Journal, job_key
from raysoup.checkpoints.audit import Audit
from raysoup.config import ExperimentCfg
from raysoup.evaluate import results as res
from raysoup.orchestration import analysis_jobs as jobs
from raysoup.orchestration.actors import EvalActors
from raysoup.orchestration.evaluate_stage import models_on_disk
from raysoup.progress import Progress
from raysoup.reduce import plan_shards, tensor_nbytes
from raysoup.workdir import RECIPE_FILE, IngredientManifest, Workdir

JOURNAL = "journal.jsonl"
LEGACY_JOURNAL = "journal.json"  # the one-object journal of earlier releases: still read
log = logging.getLogger("raysoup")


@dataclass(frozen=True)
class Model:
    name: str
    kind: str  # zeroshot | ingredient | soup | ensemble
    path: Path
    digest: str  # its bytes: an ingredient's sha256, a soup's recipe.json digest
    heldout: float  # from results.parquet (NaN where not evaluated)
    hparams: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Outcome:
    """What an analysis wrote and found."""

    files: list[Path]
    findings: list[str]
    metrics: dict[str, float] = field(default_factory=dict)  # logged on the sweep run


@dataclass(frozen=True)
class Job:
    key: str
    fn: Callable  # fn(worker, *args) in an eval actor (orchestration/analysis_jobs.py)
    args: tuple
    store: Callable[[Any], Any] = lambda value: value  # the result as journaled (JSON)


class AnalysisContext:
    """A workdir's models and results, the analysis journal, and the jobs' fan-out."""

    def __init__(self, cfg: ExperimentCfg, workdir: Path, data, actors: EvalActors):
        self.cfg, self.data, self.actors = cfg, data, actors
        self.layout = Workdir(workdir)
        self.table = res.read_results(self.layout.results)
        self.journal = Journal(self.layout.analysis / JOURNAL,
                               legacy=self.layout.analysis / LEGACY_JOURNAL)
        self.audits: dict[str, Audit] = {}
        self.models = self._models()
        self.pair_limit: int | None = None  # pairs among the best this many ingredients

    def _models(self) -> list[Model]:
        heldout = res.accuracy_of(self.table, "heldout")
        out = []
        for name, kind, path in models_on_disk(self.layout, self.audits)[0]:
            if kind in ("ingredient", "zeroshot"):
                manifest = IngredientManifest.read(path)
                digest, hparams = manifest.sha256, manifest.hparams
            else:
                digest = job_key(recipe=storage.read_text(path / RECIPE_FILE))
                hparams = {}
            out.append(Model(name, kind, path, digest, heldout.get(name, math.nan), hparams))
        return out

    @property
    def zeroshot(self) -> Model:
        found = [m for m in self.models if m.kind == "zeroshot"]
        if not found:
            raise RuntimeError(f"{storage.display(self.layout.root)}: no zero-shot model; run "
                               "`raysoup run` first")
        return found[0]

    def fine_tuned(self) -> list[Model]:
        """The fine-tuned ingredients with finite weights and a held-out accuracy, best first
        (ties by name). One not evaluated yet (a sweep still running) is left out, said."""
        models = [m for m in self.models if m.kind == "ingredient" and self.audits[m.name].finite]
        missing = [m.name for m in models if math.isnan(m.heldout)]
        if missing:
            log.warning("analyze: %s not evaluated on held-out yet (`raysoup evaluate`): left "
                        "out", ", ".join(missing))
        return sorted((m for m in models if not math.isnan(m.heldout)),
                      key=lambda m: (-m.heldout, m.name))

    def weight_soups(self) -> list[Model]:
        return sorted((m for m in self.models if m.kind == "soup"), key=lambda m: m.name)

    # ------------------------------------------------------------ jobs

    def key(self, **what: Any) -> str:
        return job_key(batch=self.cfg.eval.batch_size, **what)

    def run(self, jobs: list[Job], desc: str) -> list:
        """Every job's journaled result, in order; the jobs the journal lacks run on the eval
        actors (started only then), each journaled as it lands."""
        todo = list({j.key: j for j in jobs if j.key not in self.journal}.values())
        if todo:
            pool = self.actors.evaluation_pool()
            bar = Progress(total=len(todo), desc=desc, unit="evaluations")

            def landed(i: int, value: Any) -> None:
                self.journal.put(todo[i].key, todo[i].store(value))
                bar.update(1)

            try:
                pool.run([lambda a, j=j: a.apply.remote(j.fn, *j.args) for j in todo],
                         on_result=landed)
            finally:
                self.journal.flush()  # a remote workdir keeps what landed, even on failure
            bar.close()
        return [self.journal.get(j.key) for j in jobs]

    # ------------------------------------------------------------ arrays and outputs

    def save_array(self, key: str, array: np.ndarray) -> str:
        """A large result (logits) as WORKDIR/analysis/arrays/<key>.npy; the journal keeps
        its file name."""
        name = f"{key}.npy"

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(array))

        storage.write_file(self.layout.analysis / "arrays" / name, save)
        return name

    def load_array(self, name: str) -> np.ndarray:
        return np.load(io.BytesIO(storage.read_bytes(self.layout.analysis / "arrays" / name)))

    def write_table(self, name: str, rows: list[dict]) -> Path:
        path = self.layout.analysis_report / f"{name}.parquet"
        table = pa.Table.from_pylist(rows)
        storage.write_file(path, lambda tmp: pq.write_table(table, tmp))
        return path

    def figure_path(self, name: str) -> Path:
        path = self.layout.analysis_report / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


# ---------------------------------------------------------------- jobs the analyses share


def blend(ctx: AnalysisContext, models: list[Model], weights: list[float],
          splits: list[str]) -> Job:
    """{split: [correct, n, summed loss]} of Σ w_i·θ_i."""
    key = ctx.key(kind="blend", v=2, models=[m.digest for m in models],
                  weights=[float(w) for w in weights], splits=splits)
    return Job(key, jobs.blend_scores, ([str(m.path) for m in models], list(weights), splits),
               lambda v: {s: list(t) for s, t in v.items()})


def scores(result: dict, split: str) -> tuple[float, float]:
    """(accuracy, mean loss) from a blend job's journaled result."""
    correct, n, loss = result[split]
    return correct / n, loss / n


def gram(ctx: AnalysisContext, models: list[Model]) -> np.ndarray:
    """The Gram matrix of the models' updates from the zero-shot model, one job per shard
    of tensor names (soup.num_shards: the sum's order is fixed, whatever the pool)."""
    zs = ctx.zeroshot
    tensors = IngredientManifest.read(zs.path).tensors
    names = geometry.update_names(tensors)
    plan = plan_shards(tensor_nbytes({n: tensors[n] for n in names}), ctx.cfg.soup.num_shards)
    shard_jobs = [Job(ctx.key(kind="gram", base=zs.digest, models=[m.digest for m in models],
                              names=names_of),
                      jobs.gram_of, (str(zs.path), [str(m.path) for m in models], names_of),
                      lambda v: np.asarray(v).tolist())
                  for names_of in plan]
    return np.sum([np.asarray(g) for g in ctx.run(shard_jobs, "analysis: angles")], axis=0)


def logits(ctx: AnalysisContext, models: list[Model], split: str) -> list[str]:
    """Each model's logits on `split`, saved once as arrays; their file names."""
    def job(m: Model) -> Job:
        key = ctx.key(kind="logits", model=m.digest, split=split)
        return Job(key, jobs.logits_of, (str(m.path), split),
                   lambda v, key=key: ctx.save_array(key, v))

    return ctx.run([job(m) for m in models], f"analysis: {split} logits")


def pair_list(ctx: AnalysisContext) -> tuple[list[Model], list[tuple[int, int]]]:
    """The fine-tuned ingredients (the best `ctx.pair_limit` on held-out, if set) by name,
    and every pair of them: N(N − 1)/2 pairs."""
    tuned = sorted(ctx.fine_tuned()[:ctx.pair_limit], key=lambda m: m.name)
    if len(tuned) < 2:
        raise RuntimeError(f"angles: needs two fine-tuned ingredients; the sweep has {len(tuned)}")
    return tuned, list(itertools.combinations(range(len(tuned)), 2))
