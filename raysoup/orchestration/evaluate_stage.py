"""The evaluate stage: every model on disk scored on the splits its results lack.

Results are written after every model (atomically), so an interrupted stage keeps its rows and
a rerun scores only what is missing. A soup's rows count only for its current id (a soup cooked
again from other ingredients is scored again).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from raysoup.checkpoints import list_ingredients
from raysoup.checkpoints.audit import Audit, AuditCache
from raysoup.evaluate import logits_cache, paired
from raysoup.evaluate import results as res
from raysoup.faults import failpoint
from raysoup.orchestration.evaluation import EvalPool, evaluate_models
from raysoup.progress import Progress
from raysoup.workdir import IngredientManifest, SoupRecord, Workdir, recipe_files

Model = tuple[str, str, Path]  # (name, kind, path)
Job = tuple[str, str, Path, list[str]]  # a model and the splits it is to be scored on


def models_on_disk(layout: Workdir, audits: dict[str, Audit]
                   ) -> tuple[list[Model], dict[str, str | None]]:
    """Every model on disk, and each soup's id. Ingredients are audited first (sha256 vs
    manifest, NaN/Inf count; cached, results into `audits`), so a corrupt file stops the run
    with its path."""
    cache = AuditCache(layout.audits)
    out = []
    for p in list_ingredients(layout.ingredients):
        audits[p.name] = cache.audit(p)
        out.append((p.name, IngredientManifest.read(p).kind or "ingredient", p))
    soup_ids: dict[str, str | None] = {}
    for recipe_file in recipe_files(layout.soups):
        record = SoupRecord.read(recipe_file.parent)
        soup_ids[record.name] = record.soup_id
        out.append((record.name, record.kind, recipe_file.parent))
    return out, soup_ids


def missing_jobs(table: pa.Table, models: list[Model], soup_ids: dict[str, str | None],
                 splits: list[str]) -> list[Job]:
    """The (model, splits) pairs `table` has no row for."""
    done = res.done_pairs(table, soup_ids)
    jobs = []
    for name, kind, path in models:
        missing = [s for s in splits if (name, s) not in done]
        if missing:
            jobs.append((name, kind, path, missing))
    return jobs


def keeps_logits(models: list[Model], images: int, classes: int, budget_mb: float) -> bool:
    """Whether every ingredient's logits on `images` eval images fit `eval.logits_cache_mb`
    (the ensemble's members are among them: evaluate/logits_cache.py)."""
    members = sum(1 for _, kind, _ in models if kind in ("ingredient", "zeroshot"))
    return logits_cache.fits(members, images, classes, budget_mb)


def score_jobs(pool: Callable[[], EvalPool], jobs: list[Job], table: pa.Table,
               results_path: Path, soup_ids: dict[str, str | None], stage: str,
               logits_root: Path | None = None, keep_logits: bool = False) -> pa.Table:
    """Score `jobs` on the eval actors (`pool()`, started after the progress bar), merging
    each model's rows into `table` and the results file as it lands; the merged table.
    `logits_root`, `keep_logits`: as `evaluation.evaluate_models`'."""
    bar = Progress(total=len(jobs), desc=stage, unit="models")

    def landed(model: str, kind: str, scores: dict) -> None:
        nonlocal table
        # Written after every model, atomically: an interrupted stage keeps its rows. The
        # comparisons are recomputed over the whole table: a new trial may be the new best.
        table = paired.annotate(res.merge(table, [res.rows(model, kind, scores,
                                                            soup_ids.get(model))]))
        res.write_results(results_path, table)
        failpoint(f"{stage.replace(' ', '_')}.model")
        bar.update(1, f"{model}: test {scores['test'][0] / scores['test'][1]:.3f}"
                   if "test" in scores else model)

    evaluate_models(pool(), jobs, progress=landed, logits_root=logits_root,
                    keep_logits=keep_logits)
    bar.close()
    return table
