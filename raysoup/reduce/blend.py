"""What a soup's tensors are made of: one picklable description a shard task runs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from raysoup.reduce.merge import TensorMerge, merge_shard
from raysoup.reduce.shard_reduce import ReductionError, reduce_shard


@dataclass(frozen=True)
class Blend:
    """Σ w_i·θ_i over the paths (with per-tensor `tensor_weights` where given), or, with a
    `merge`, θ_0 + scale·merge(θ_1 − θ_0, ...) where paths[0] is θ_0 (`raysoup.reduce.merge`).
    `integers_from`: the path whose integer buffers a weighted average keeps (None: all must
    match); a merge always keeps the first fine-tuned ingredient's (paths[1])."""

    weights: tuple[float, ...] = ()
    tensor_weights: dict[str, list[float]] | None = None
    merge: TensorMerge | None = None
    scale: float = 1.0
    integers_from: int | None = None

    def for_shard(self, names: list[str]) -> Blend:
        """The same blend with only `names`' per-tensor weights (each task gets its own)."""
        if not self.tensor_weights:
            return self
        return replace(self, tensor_weights={n: self.tensor_weights[n] for n in names
                                             if n in self.tensor_weights})

    def check(self, names: set[str]) -> None:
        unknown = sorted(set(self.tensor_weights or {}) - names)
        if unknown:
            raise ValueError(f"tensor_weights name tensors the model does not have: {unknown[:5]}")

    def shard(self, paths: list[Path], names: list[str]) -> dict[str, np.ndarray]:
        if self.merge is None:
            return reduce_shard(paths, list(self.weights), names, self.tensor_weights,
                                self.integers_from)
        if len(paths) < 2:
            raise ReductionError("a task-vector merge needs the base and at least one ingredient")
        return merge_shard(paths[1:], paths[0], names, self.merge, self.scale)
