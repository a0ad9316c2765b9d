"""Evaluation pool: Ray actors that each hold one model skeleton and the preprocessed splits.

The splits are decoded and preprocessed once on the driver and put in the object store once;
numpy arrays reach every actor zero-copy. Evaluating a model = copy its weights in + forward.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import ray
import torch
from ray.util import ActorPool

from raysoup.checkpoints import load_state_dict
from raysoup.evaluate.evaluator import EvalSplit, Evaluator
from raysoup.reduce import INDEX_FILE, read_sharded, scaled


class EvalWorker:
    """Plain class; `ray.remote` is applied where the pool is built (testable without Ray)."""

    def __init__(self, model_name: str, num_classes: int, splits: dict[str, EvalSplit],
                 batch_size: int, threads: int = 1):
        from raysoup.models.classifier import classifier_skeleton

        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.evaluator = Evaluator(classifier_skeleton(model_name, num_classes), splits,
                                   batch_size=batch_size, device=device)

    def evaluate_path(self, path: str, splits: list[str]) -> dict[str, tuple[int, int]]:
        """An ingredient directory (model.safetensors) or a soup directory (sharded)."""
        p = Path(path)
        weights = read_sharded(p) if (p / INDEX_FILE).exists() else load_state_dict(p)
        return self.evaluator.score(weights, splits)

    def evaluate_sum(self, shard_refs: list, scale: float, splits: list[str]) -> dict[str, tuple[int, int]]:
        """A running sum of ingredients, held as per-shard object refs, times `scale`."""
        weights: dict[str, np.ndarray] = {}
        for shard in ray.get(shard_refs):  # refs nested in a list are not resolved by Ray
            weights.update(scaled(shard, scale))
        return self.evaluator.score(weights, splits)


def start_actors(cfg, splits_ref, model_name: str, num_classes: int, count: int) -> list:
    """`count` eval actors sharing one object-store copy of the preprocessed splits."""
    actor_cls = ray.remote(num_cpus=cfg.eval.cpus_per_actor, num_gpus=cfg.eval.gpus_per_actor)(EvalWorker)
    threads = max(1, int(cfg.eval.cpus_per_actor))
    return [actor_cls.remote(model_name, num_classes, splits_ref, cfg.eval.batch_size, threads)
            for _ in range(count)]


def stop_actors(actors: list) -> None:
    for actor in actors:
        ray.kill(actor)


def evaluate_models(pool: ActorPool, jobs: Iterable[tuple[str, str, Path, list[str]]],
                    progress=None) -> list[tuple[str, str, dict[str, tuple[int, int]]]]:
    """jobs: (model name, kind, path, splits) → [(model, kind, {split: (correct, n)})]."""
    jobs = list(jobs)
    for model, kind, path, splits in jobs:
        pool.submit(lambda a, j: a.evaluate_path.remote(*j), (str(path), splits))
    out = []
    for model, kind, _, _ in jobs:
        scores = pool.get_next()  # results come back in submission order
        out.append((model, kind, scores))
        if progress:
            progress(model, kind, scores)
    return out
