"""What a soup's tensors are made of: one picklable description a shard task runs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from raysoup.reduce.merge import TensorMerge, merge_layout, merge_shard, merge_tensors
from raysoup.reduce.shard_reduce import (
    ReductionError,
    reduce_layout,
    reduce_shard,
    reduce_tensors,
)
from raysoup.reduce.shard_stream import write_shard_stream


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
        self._check_merge(paths)
        return merge_shard(paths[1:], paths[0], names, self.merge, self.scale)

    def write_shard(self, paths: list[Path], names: list[str], out: Path,
                    dtypes: dict[str, str] | None = None) -> str:
        """The shard's file at `out`, its tensors streamed into it as they are reduced (the
        bytes `writer.write_shard(out, self.shard(paths, names), dtypes)` writes, without the
        shard in memory: `shard_stream`); returns its sha256."""
        if self.merge is None:
            layout = reduce_layout(paths, names, self.integers_from)

            def produce(order: list[str]):
                return reduce_tensors(paths, list(self.weights), order, self.tensor_weights,
                                      self.integers_from, reuse=True)
        else:
            self._check_merge(paths)
            layout = merge_layout(paths[1:], paths[0], names)

            def produce(order: list[str]):
                return merge_tensors(paths[1:], paths[0], order, self.merge, self.scale,
                                     reuse=True)
        return write_shard_stream(out, layout, produce, dtypes)

    @staticmethod
    def _check_merge(paths: list[Path]) -> None:
        if len(paths) < 2:
            raise ReductionError("a task-vector merge needs the base and at least one ingredient")
