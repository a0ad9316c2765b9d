"""The soup stage, in the order it runs: the candidates a soup may use, cooking each recipe
with the Ray kitchen into `soups/<recipe>/`, and publishing the cooked soups to MLflow.

Resume rule: a complete soup cooked from the same candidate set (`CandidateSet`: names and
sha256 of the candidates and the zero-shot anchor) is not cooked again."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import ray

from raysoup import storage
from raysoup.checkpoints.audit import Audit, check_compatible
from raysoup.checkpoints.ingredient import remove_stale_tmp
from raysoup.config import ExperimentCfg, SoupBase
from raysoup.evaluate import results as res
from raysoup.export import base_clip_state, model_info
from raysoup.models.families import family_of
from raysoup.orchestration import metrics
from raysoup.orchestration.evaluation import EvalPool
from raysoup.orchestration.kitchen import RayKitchen
from raysoup.orchestration.published import Publisher, TextPublisher, example_images
from raysoup.orchestration.reduce_tasks import ingredient_shards, write_soup
from raysoup.reduce import Blend
from raysoup.soup import Candidate, RecipeResult, get_recipe
from raysoup.soup.base import by_heldout, integers_source
from raysoup.tracking import Tracker, model_metrics
from raysoup.workdir import (
    RECIPE_FILE,
    ZEROSHOT,
    CandidateSet,
    IngredientManifest,
    SoupRecord,
    Workdir,
    cooked_soup_id,
    soup_journal,
    write_recipe_file,
)

log = logging.getLogger(__name__)

Model = tuple[str, str, Path]  # (name, kind, directory) of a model on disk
EXAMPLE_TEXTS = 2  # test sentences (pairs) a text model's MLflow Model records as its example


# ---------------------------------------------------------------- candidates


def soup_candidates(models: list[Model], heldout: dict[str, float],
                    audits: dict[str, Audit], strict: bool,
                    metrics: dict[str, dict[str, float]] | None = None) -> list[Candidate]:
    """The ingredients a soup may use: evaluated, finite (or an error under `strict`), and
    all of one tensor layout. `metrics`: other held-out metrics by model (F1, MCC)."""
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
        candidates.append(Candidate(name, heldout[name], path, (metrics or {}).get(name, {})))
    check_compatible([c.path for c in candidates])
    return candidates


def zeroshot_anchor(models: list[Model], heldout: dict[str, float]) -> Candidate | None:
    """The zero-shot model, where WiSE-FT, Model Stock and the task-vector methods start."""
    return next((Candidate(n, heldout.get(n, float("nan")), p)
                 for n, k, p in models if k == "zeroshot"), None)


def candidate_set(candidates: list[Candidate], anchor: Candidate | None) -> CandidateSet:
    """What every soup of this stage is cooked from, by name and tensor-file sha256."""
    def digests(cands: list[Candidate]) -> dict[str, str]:
        return {c.name: IngredientManifest.read(c.path).sha256
                for c in sorted(cands, key=lambda c: c.name)}

    return CandidateSet.of(digests(candidates), digests([anchor]) if anchor else None)


# ---------------------------------------------------------------- cooking


def cook_soups(recipes: list[str], candidates: list[Candidate], soups_dir: Path,
               num_shards: int, pool: EvalPool, cfg: SoupBase | None = None,
               anchor: Candidate | None = None,
               timings: dict[str, tuple[float, float]] | None = None) -> dict[str, Path]:
    """Cook every recipe whose soup directory is not complete yet, or was cooked from another
    candidate set; returns recipe → directory.

    `cfg`: the `soup` config section (each method's settings); `anchor`: the zero-shot
    ingredient (WiSE-FT, Model Stock and the task-vector methods start from it); `timings`
    gets (start, end) wall-clock seconds of each recipe cooked now (its MLflow run's span;
    kept out of recipe.json, which a re-cook must reproduce byte for byte)."""
    if not candidates:
        raise ValueError("no ingredients to make soups from; run the sweep first")
    plan = ingredient_shards(candidates[0].path, num_shards)
    if stale := remove_stale_tmp(soups_dir):
        log.info("soup: removed %d partial soup(s) of an interrupted run", len(stale))
    by_name = {c.name: c for c in [*([anchor] if anchor else []), *candidates]}
    cooked_from = candidate_set(candidates, anchor)
    kitchen = RayKitchen(pool, plan, anchor, soups_dir, cooked_from.soup_id)
    out = {}
    for name in recipes:
        soup_dir = soups_dir / name
        cooked = cooked_soup_id(soup_dir)
        if cooked == cooked_from.soup_id:
            log.info("soup %s: already cooked", name)
            out[name] = soup_dir
            continue
        if cooked is not None or storage.is_file(soup_dir / RECIPE_FILE):
            log.info("soup %s: cooked from other ingredients; cooking again from %d", name,
                     len(candidates))
        started = time.time()
        result = get_recipe(name, cfg).cook(candidates, kitchen)
        metrics.soup_decisions(name, result.trace)
        log.info("soup %s: %d ingredients %s %s", name, len(result.ingredients),
                 result.ingredients, result.stats or "")
        write_result(soup_dir, name, result, {n: c.path for n, c in by_name.items()}, plan,
                     anchor, cooked_from)
        if timings is not None:
            timings[name] = (started, time.time())
        # A method's journal, if it kept one: the complete soup directory is the record now.
        journal = soup_journal(soups_dir, name)
        journal.unlink(missing_ok=True)
        storage.delete(journal)
        out[name] = soup_dir
    return out


def write_result(soup_dir: Path, recipe: str, result: RecipeResult, paths: dict[str, Path],
                 plan: list[list[str]], anchor: Candidate | None = None,
                 cooked_from: CandidateSet | None = None) -> Path:
    """A weight soup (shards + index + recipe.json) or an ensemble listing (recipe.json only).
    `cooked_from`: the candidate set it was cooked from, recorded in recipe.json."""
    record = SoupRecord(recipe=recipe, kind=result.kind, ingredients=result.ingredients,
                        weights=result.weights, trace=result.trace, info=result.info,
                        cooked_from=cooked_from)
    members = [paths[name] for name in result.ingredients]
    if result.kind == "ensemble":
        with storage.atomic_dir(soup_dir) as tmp:
            rel = [os.path.relpath(p, soup_dir) for p in members]
            write_recipe_file(tmp, replace(record, paths=rel).as_dict())
        return soup_dir
    if result.kind != "soup":
        raise ValueError(f"recipe {recipe}: unknown result kind {result.kind!r}")
    merge = None if result.merge is None else {"scale": result.scale,
                                               "base": result.ingredients[0]}
    record = replace(record, tensor_weights=result.tensor_weights or None, merge=merge)
    blend = Blend(tuple(result.weights), result.tensor_weights, result.merge, result.scale,
                  integers_source(members, anchor))
    return write_soup(soup_dir, members, blend, plan, record.as_dict())


# ---------------------------------------------------------------- publishing


def run_params(record: SoupRecord) -> dict:
    """The scalar facts of a recipe.json (kind, α, inference cost, peak memory...) as MLflow
    params; lists (weights, traces) stay in the recipe.json artifact."""
    meta = record.as_dict()
    flat = {**meta, **{f"memory_{k}": v for k, v in meta.get("memory", {}).items()}}
    skip = {"recipe", "num_shards"}
    return {k: v for k, v in flat.items()
            if k not in skip and isinstance(v, int | float | str | bool)}


def publish(cfg: ExperimentCfg, workdir: Path, tracker: Tracker, parent: str,
            soups: dict[str, Path], candidates: list[Candidate], table: pa.Table,
            splits_ref, timings: dict[str, tuple[float, float]] | None = None,
            labels: dict | None = None) -> None:
    """A run per soup in MLflow; with tracking.log_models, each weight soup and the best
    single model as MLflow Models, the soups registered and the champion crowned; then every
    model's metrics on its run (`Tracker.log_results`). `splits_ref`: the eval cache in the
    object store (its test images are the example); `timings`: `cook_soups`'; `labels`: a
    two-class task's (`two_class_labels`), for F1 and MCC."""
    publisher = _publisher(cfg, workdir, tracker, splits_ref) if cfg.tracking.log_models \
        else None
    soup_id = None
    by_model = model_metrics(table, labels)
    for recipe, soup_dir in soups.items():
        record = SoupRecord.read(soup_dir)
        accs = res.accuracies_of_model(table, record.name)
        named = by_model[record.name].metrics if record.name in by_model else {}
        soup_id = record.soup_id or soup_id  # one candidate set per soup stage
        # An artifact: MLflow uploads a local file, which must be the bucket's copy.
        storage.pull(soup_dir / RECIPE_FILE, exact=True)
        log_model = None
        if publisher is not None and record.kind == "soup":
            def log_model(run_id, soup_dir=soup_dir, record=record, accs=accs):
                publisher.soup(run_id, soup_dir, record, accs)
        tracker.soup_run(parent, recipe, record.ingredients, record.weights, named,
                         [soup_dir / RECIPE_FILE], params=run_params(record),
                         identity=record.soup_id or "", before_end=log_model,
                         model=record.name, cooked=(timings or {}).get(recipe))
    if publisher is not None:
        publish_best_single(tracker, publisher, candidates, table)
        publisher.crown(soup_id)
    tracker.log_results(parent, table, labels)


def _publisher(cfg: ExperimentCfg, workdir: Path, tracker: Tracker, splits_ref) -> Publisher:
    """What logs this run's models: the base CLIP (its text tower completes each export)
    and a few test images (from the eval cache) as the input example; for a text model, its
    `hf` export and a few test sentences."""
    name = cfg.tracking.registered_model or tracker.experiment_name
    if family_of(cfg.model).name == "hf_text":
        return _text_publisher(cfg, workdir, tracker, name)
    info = model_info(Workdir(workdir).zeroshot)
    test = ray.get(splits_ref)["test"].images
    return Publisher(tracker, info, lambda: base_clip_state(cfg.model, info),
                     example_images(test), name if cfg.tracking.register_soups else None,
                     family_of(cfg.model).mlflow)


def _text_publisher(cfg: ExperimentCfg, workdir: Path, tracker: Tracker,
                    name: str) -> TextPublisher:
    from raysoup.data.sources import load_splits

    test = load_splits(cfg.data, workdir, progress=False).test  # texts: Arrow strings, small
    texts, pairs = test.rows(0, min(EXAMPLE_TEXTS, len(test)))
    example = texts if pairs is None else [list(p) for p in zip(texts, pairs, strict=True)]
    return TextPublisher(tracker, Workdir(workdir).zeroshot, test.classnames,
                         pairs is not None, example,
                         name if cfg.tracking.register_soups else None,
                         family_of(cfg.model).mlflow)


def publish_best_single(tracker: Tracker, publisher: Publisher, candidates: list[Candidate],
                        table: pa.Table) -> None:
    """The best single model by held-out accuracy, as an MLflow Model on its trial run."""
    trials = by_heldout([c for c in candidates if c.name != ZEROSHOT])
    if not trials:
        return
    best = trials[0]  # the report's "best single" (same order)
    run_id = tracker.trial_run_id(best.name)
    if run_id is None:  # an imported ingredient: no trial run to log it on
        return
    accs = res.accuracies_of_model(table, best.name)
    publisher.log(run_id, best.path, best.name,
                  {"model": best.name, "recipe": "best single", "ingredients": [best.name],
                   "accuracy": accs})
