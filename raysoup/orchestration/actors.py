"""The eval actors of one `raysoup run`, shared by its stages, and the soup stage's kitchen.

One pool serves evaluate, soup and soup evaluation where it can (each actor start costs a
process, imports and a model); the soup stage reserves CPUs for its reduction tasks beside the
actors (`reduce_tasks.reserved_cpus`) and resizes the pool to what is left.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import ray

from raysoup.config import ExperimentCfg
from raysoup.orchestration import reduce_tasks
from raysoup.orchestration.evaluation import EvalPool, actor_threads, build_eval_cache


class EvalActors:
    """The run's eval pool (started on first use, restarted when its size must change) and the
    preprocessed splits its actors stream, put in the object store once per run."""

    def __init__(self, cfg: ExperimentCfg, workdir: Path, data, zeroshot: dict,
                 extra: dict | None = None):
        """`data`, `zeroshot`: what the prepare stage made (the splits, the zero-shot
        model's manifest); `extra`: more eval splits the actors hold, {name: LabeledImages}
        (`raysoup analyze`'s transfer dataset), cached like the others."""
        self.cfg, self.workdir, self.data, self.zeroshot = cfg, workdir, data, zeroshot
        taken = sorted(set(extra or {}) & {"heldout", "test", *data.shifts})
        if taken:
            raise ValueError(f"eval splits {taken} named twice (a shift of that name?)")
        self.extra = dict(extra or {})
        self._pool: EvalPool | None = None
        self._pool_cpus: float | None = None
        self.splits_ref = None

    def pool(self, count: int, num_cpus: float | None = None) -> EvalPool:
        """Eval actors; the preprocessed splits are put in the object store once per run."""
        if self.splits_ref is None:
            named = {"heldout": self.data.heldout, "test": self.data.test, **self.data.shifts,
                     **self.extra}
            self.splits_ref = ray.put(build_eval_cache(
                named, self.workdir, self.zeroshot["preprocess"], self.cfg.data.eval_cache_shard,
                self.cfg.data.skip_corrupt))
        if self._pool is None or (len(self._pool), self._pool_cpus) != (count, num_cpus):
            self.release()
            self._pool = EvalPool.start(self.cfg, self.splits_ref, self.zeroshot["model_name"],
                                        self.zeroshot["num_classes"], count, num_cpus)
            self._pool_cpus = num_cpus
        return self._pool

    def evaluation_pool(self) -> EvalPool:
        """The pool of the evaluation stages (evaluate, held-out and soup evaluation)."""
        return self.pool(self.cfg.eval.num_actors, self.eval_cpus())

    def soup_sizes(self) -> tuple[int, float | None]:
        """(CPUs reserved for reductions, CPUs per eval actor) in the soup stage."""
        return reduce_tasks.soup_cpus(ray.cluster_resources().get("CPU", 1),
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
        tasks (`reduce_tasks.reserved_cpus`), for as long as the block runs."""
        count = self.cfg.eval.num_actors
        reserve, cpus = self.soup_sizes()
        if self._pool is not None and (len(self._pool), self._pool_cpus) != (count, cpus):
            self.release()
        with ExitStack() as stack:
            try:
                # The evaluate stage's actors may sit where the reservation must go: give them
                # a moment, then free their CPUs and start fresh ones after the reservation.
                stack.enter_context(reduce_tasks.reserved_cpus(reserve,
                                                            wait_s=10 if self._pool else None))
            except TimeoutError:
                self.release()
                stack.enter_context(reduce_tasks.reserved_cpus(reserve))
            yield self.pool(count, cpus)

    def release(self) -> None:
        # Actors hold their CPUs while alive; free them for the reduction tasks.
        if self._pool is not None:
            self._pool.stop()
        self._pool = None
