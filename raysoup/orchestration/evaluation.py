"""Evaluation pool: Ray actors that each hold one model skeleton and stream the eval cache.

Each eval split is decoded and preprocessed once, by Ray tasks in parallel on any node, into
the eval cache (evaluate/cache.py); the driver only schedules them and never holds pixels.
Evaluating a model = copy its weights in + stream the cache's shards through a forward pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import ray
import torch

from raysoup import storage
from raysoup.checkpoints import load_state_dict
from raysoup.checkpoints.ingredient import weights_path
from raysoup.data.images import LabeledImages
from raysoup.evaluate import cache, logits_cache
from raysoup.evaluate.evaluator import EvalSplit, Evaluator
from raysoup.models.families import DEFAULT_FAMILY, family_of, get_family
from raysoup.orchestration import metrics
from raysoup.orchestration.cache_tasks import _build_shard
from raysoup.progress import Progress
from raysoup.reduce import INDEX_FILE, read_sharded, scaled
from raysoup.workdir import IngredientManifest, ensemble_members

log = logging.getLogger(__name__)


class EvalWorker:
    """Plain class; `ray.remote` is applied where the pool is built (testable without Ray)."""

    def __init__(self, model_name: str, num_classes: int, splits: dict[str, EvalSplit],
                 batch_size: int, threads: int = 1, family: str = DEFAULT_FAMILY):
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model_family = get_family(family)
        self.num_classes = num_classes
        self.evaluator = Evaluator(model_family.skeleton(model_name, num_classes), splits,
                                   batch_size=batch_size, device=device, family=model_family)

    def evaluate_path(self, path: str, splits: list[str], logits_root: str | None = None
                      ) -> dict[str, tuple[int, int, bytes]]:
        """An ingredient directory (model.safetensors), a soup directory (sharded) or an
        ensemble directory (recipe.json listing its members): (correct, n, per-image
        correctness packed, `evaluator.packed`) per split, from one forward pass.
        `logits_root` (WORKDIR/cache/logits): an ingredient's logits are kept there, and an
        ensemble reads its members' from there (evaluate/logits_cache.py)."""
        p = Path(path)
        if (members := ensemble_members(p)) is not None:
            return self.evaluate_ensemble([str(m) for m in members], splits, logits_root)
        sharded = storage.is_file(p / INDEX_FILE)
        weights = read_sharded(p) if sharded else load_state_dict(p)
        keep = None
        if logits_root is not None and not sharded:
            where = self._logits_key(p)

            def keep(split: str, logits) -> None:
                if (name := self._split_dir(split)) is not None:
                    logits_cache.write(logits_cache.logits_path(logits_root, where, name), logits)
        start = time.perf_counter()
        scores = self.evaluator.score(weights, splits, bits=True, on_logits=keep)
        metrics.scored(scores, time.perf_counter() - start)
        return scores

    def _logits_key(self, ingredient: Path) -> str:
        return logits_cache.key(IngredientManifest.read(ingredient).sha256,
                                self.evaluator.batch_size, torch.get_num_threads(),
                                self.evaluator.device.type)

    def _split_dir(self, split: str) -> str | None:
        """The split's eval-cache directory name (its content's digest); None for splits held
        in memory (tests), whose logits are not kept."""
        images = self.evaluator.splits[split].images
        return Path(images.directory).name if isinstance(images, cache.CachedImages) else None

    def evaluate_sum(self, shard_refs: list, scale: float, splits: list[str],
                     part: tuple[int, int] | None = None,
                     loss: bool = False, counts: bool = False) -> dict[str, tuple]:
        """A running sum of ingredients, held as per-shard object refs, times `scale`
        (optionally on one data-parallel slice of the splits; `loss`, `counts`: see
        `Evaluator.score`)."""
        weights: dict[str, np.ndarray] = {}
        for shard in ray.get(shard_refs):  # refs nested in a list are not resolved by Ray
            weights.update(scaled(shard, scale))
        start = time.perf_counter()
        scores = self.evaluator.score(weights, splits, part, loss, counts=counts)
        metrics.scored(scores, time.perf_counter() - start, model=False)
        return scores

    def evaluate_ensemble(self, paths: list[str], splits: list[str],
                          logits_root: str | None = None) -> dict[str, tuple[int, int, bytes]]:
        """Mean logits of the ingredients at `paths`, loaded one at a time (N forward passes),
        or their logits kept under `logits_root` by the evaluate stage where they are; scores
        as `evaluate_path`'s."""
        kept = None
        if logits_root is not None:
            keys = [self._logits_key(Path(p)) for p in paths]

            def kept(i: int, split: str):
                name = self._split_dir(split)
                if name is None:
                    return None
                n = len(self.evaluator.splits[split])
                return logits_cache.read(logits_cache.logits_path(logits_root, keys[i], name),
                                         (n, self.num_classes))
        return self.evaluator.ensemble_score([lambda p=p: load_state_dict(Path(p)) for p in paths],
                                             splits, bits=True, kept=kept)

    def learn_coefficients(self, paths: list[str], settings: dict) -> dict:
        """Learned-soup coefficients on this actor's held-out split, with the peak RSS of doing
        it (the skeleton's parameters are replaced functionally and restored by the next load)."""
        from raysoup.soup.learned import learn_coefficients, peak_rss

        with peak_rss() as memory:
            mix = learn_coefficients(self.evaluator.model, [Path(p) for p in paths],
                                     self.evaluator.splits["heldout"], device=self.evaluator.device,
                                     **settings)
        memory["ingredients_mib"] = sum(storage.stat(weights_path(p))[0]
                                        for p in paths) / 2**20
        return {"weights": mix.weights, "tensor_weights": mix.tensor_weights, "trace": mix.trace,
                "info": {**mix.info, "memory": memory}}


    def apply(self, fn, *args):
        """`fn(self, *args)` in this actor: computations that need its model and its splits
        beside the ones above (`raysoup analyze`: orchestration/analysis_jobs.py)."""
        return fn(self, *args)


def build_eval_cache(named: dict[str, LabeledImages], workdir: Path, preprocess: dict,
                     shard_images: int, skip_corrupt: bool = False) -> dict[str, EvalSplit]:
    """Each split's eval cache (built once, by Ray tasks in parallel; reused when present),
    as the EvalSplits the eval actors stream. Shards an interrupted build finished are kept.
    A text family's record (kind "tokens") builds token caches instead (evaluate/text_cache.py)."""
    if preprocess.get("kind") == "tokens":
        from raysoup.evaluate.text_cache import token_eval_splits

        return token_eval_splits(named, workdir, preprocess, shard_images)
    todo, plans = _schedule_shards(named, workdir, preprocess, shard_images, skip_corrupt)
    if todo:
        _collect_shards(todo, plans)
    return {name: _eval_split(name, data, *plans[name], preprocess, shard_images)
            for name, data in named.items()}


def _schedule_shards(named: dict[str, LabeledImages], workdir: Path, preprocess: dict,
                     shard_images: int, skip_corrupt: bool
                     ) -> tuple[dict, dict[str, tuple[Path, list]]]:
    """Start a Ray task for every shard not yet built: ({ref: (split, shard index)},
    {split: (cache directory, shard infos, None where its task is running)})."""
    size = preprocess["image_size"]
    task = ray.remote(num_cpus=1, max_retries=3)(_build_shard)
    todo: dict = {}  # ref -> (split, shard index)
    plans: dict[str, tuple[Path, list]] = {}
    for name, data in named.items():
        directory = cache.cache_dir(workdir, name, data, preprocess, shard_images,
                                    skip_corrupt)
        ranges = cache.shard_ranges(len(data), shard_images)
        infos: list = [None] * len(ranges)
        manifest = cache.read_manifest(directory)
        if manifest is not None:
            infos = manifest["shards"]
        else:
            for i, (lo, hi) in enumerate(ranges):
                out = directory / cache.shard_name(i)
                infos[i] = cache.built_shard(out)
                if infos[i] is None:
                    todo[task.remote(data.select(np.arange(lo, hi)), size, str(out),
                                     skip_corrupt)] = (name, i)
        plans[name] = (directory, infos)
    return todo, plans


def _collect_shards(todo: dict, plans: dict[str, tuple[Path, list]]) -> None:
    """Wait for the shard tasks, filling in their infos as they land."""
    bar = Progress(total=len(todo), desc="eval cache", unit="shards")
    pending = list(todo)
    try:
        while pending:
            [ref], pending = ray.wait(pending, num_returns=1)
            name, i = todo[ref]
            plans[name][1][i] = ray.get(ref)  # a decode error names the image
            bar.update(1, name)
    except BaseException:
        # Stop the other shard tasks before raising: left running, they would go on writing
        # into the cache under a rerun (the same bytes, atomically, but decoded twice).
        for ref in pending:
            ray.cancel(ref)
        ray.wait(pending, num_returns=len(pending), timeout=60)
        raise
    finally:
        bar.close()


def _eval_split(name: str, data: LabeledImages, directory: Path, infos: list, preprocess: dict,
                shard_images: int) -> EvalSplit:
    """One split's built cache as an EvalSplit (its manifest written on first use)."""
    ranges = cache.shard_ranges(len(data), shard_images)
    skipped = [lo + j for (lo, _), info in zip(ranges, infos, strict=True)
               for j in info["skipped"]]
    if cache.read_manifest(directory) is None:
        cache.write_manifest(directory, {"split": name, "images": len(data) - len(skipped),
                                         "skipped": len(skipped),
                                         "image_size": preprocess["image_size"],
                                         "shards": infos})
    if skipped:
        log.warning("eval cache: %s: %d corrupt image(s) skipped (data.skip_corrupt), "
                    "e.g. %s", name, len(skipped), data.where(skipped[0]))
    keep = np.setdiff1d(np.arange(len(data)), skipped)
    images = cache.CachedImages(str(directory), [info["n"] for info in infos],
                                tuple(preprocess["mean"]), tuple(preprocess["std"]))
    subset = tuple(data.class_subset) if data.class_subset is not None else None
    groups = (tuple(tuple(g) for g in data.class_groups)
              if data.class_groups is not None else None)
    return EvalSplit(images=images, labels=data.labels[keep], class_subset=subset,
                     class_groups=groups)


def actor_threads(num_cpus: float) -> int:
    """torch threads of an eval actor holding `num_cpus` CPUs."""
    return max(1, int(num_cpus))


def actor_class(cfg, num_cpus: float | None = None):
    return ray.remote(num_cpus=cfg.eval.cpus_per_actor if num_cpus is None else num_cpus,
                      num_gpus=cfg.eval.gpus_per_actor)(EvalWorker)


def stop_actors(actors: list) -> None:
    for actor in actors:
        ray.kill(actor)


class EvalPool:
    """Eval actors that survive actor deaths: a dead actor is replaced and its call resubmitted.

    `ray.util.ActorPool` drops a dead actor together with its task and stalls when all actors
    are gone; evaluation is idempotent, so re-running a lost call is safe.
    """

    def __init__(self, make_actor: Callable[[], object], size: int, max_replacements: int = 8):
        self.make_actor, self.max_replacements = make_actor, max_replacements
        self.actors = [make_actor() for _ in range(size)]
        self.replaced = 0

    @classmethod
    def start(cls, cfg, splits_ref, model_name: str, num_classes: int, count: int,
              num_cpus: float | None = None) -> EvalPool:
        actor_cls = actor_class(cfg, num_cpus)
        threads = actor_threads(cfg.eval.cpus_per_actor if num_cpus is None else num_cpus)
        family = family_of(getattr(cfg, "model", None)).name  # benchmarks pass only `eval`
        return cls(lambda: actor_cls.remote(model_name, num_classes, splits_ref,
                                            cfg.eval.batch_size, threads, family), count)

    def __len__(self) -> int:
        return len(self.actors)

    def run(self, calls: list[Callable[[object], ray.ObjectRef]],
            on_result: Callable[[int, object], None] | None = None) -> list:
        """Run every `call(actor) -> ObjectRef` on some actor; results in call order.

        `on_result(i, value)` fires as each call lands (completion order)."""
        results: list = [None] * len(calls)
        todo = list(range(len(calls)))[::-1]  # a stack: pop() gives calls in order
        idle = list(self.actors)
        running: dict = {}  # ref -> (call index, actor)
        while todo or running:
            while todo and idle:
                i, actor = todo.pop(), idle.pop(0)
                running[calls[i](actor)] = (i, actor)
            [ref], _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                idle.append(self._replace(actor, err))
                todo.append(i)  # resubmitted next, to the fresh actor
                continue
            idle.append(actor)
            results[i] = value
            if on_result:
                on_result(i, value)
        return results

    def _replace(self, dead, err: Exception):
        self.replaced += 1
        if self.replaced > self.max_replacements:
            raise RuntimeError(f"evaluation actors keep dying ({self.replaced} replaced); "
                               f"last error: {err}") from err
        log.warning("eval actor died (%s); starting a replacement and resubmitting its work",
                    type(err).__name__)
        ray.kill(dead)  # no-op if already dead; stops a hung one
        fresh = self.make_actor()
        self.actors[self.actors.index(dead)] = fresh
        return fresh

    def stop(self) -> None:
        stop_actors(self.actors)
        self.actors = []


def evaluate_models(pool: EvalPool, jobs: Iterable[tuple[str, str, Path, list[str]]],
                    progress=None, logits_root: Path | None = None, keep_logits: bool = False
                    ) -> list[tuple[str, str, dict[str, tuple[int, int, bytes]]]]:
    """jobs: (model name, kind, path, splits) → [(model, kind, {split: (correct, n, bits)})]
    (bits: per-image correctness, `EvalWorker.evaluate_path`). With `logits_root`, ensembles
    read their members' kept logits from there, and with `keep_logits` the ingredients (the
    zero-shot model included) keep theirs (evaluate/logits_cache.py)."""
    jobs = list(jobs)

    def root(kind: str) -> str | None:
        if logits_root is None:
            return None
        wanted = kind == "ensemble" or (keep_logits and kind in ("ingredient", "zeroshot"))
        return str(logits_root) if wanted else None

    roots = [root(kind) for _, kind, _, _ in jobs]
    calls = [lambda a, p=str(path), s=splits, r=r: a.evaluate_path.remote(p, s, r)
             for (_, _, path, splits), r in zip(jobs, roots, strict=True)]

    def landed(i: int, scores: dict) -> None:
        if progress:
            progress(jobs[i][0], jobs[i][1], scores)

    scores = pool.run(calls, on_result=landed)
    return [(model, kind, s) for (model, kind, _, _), s in zip(jobs, scores, strict=True)]
