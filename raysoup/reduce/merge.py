"""Element-wise task-vector merges of one shard of tensors (pure torch, no Ray).

A task-vector method (task arithmetic, TIES, DARE) works on τ_i = θ_i − θ_0, the ingredients'
updates from the base θ_0, element by element: the soup is θ_0 + λ·m(τ_1..τ_N) per tensor. The
method supplies m as a `TensorMerge`; this module runs it inside a shard task and streams:

- per tensor name the base tensor is read once (float32); the method gets it and a re-iterable
  stream of the ingredients' tensors (each valid until the next one is drawn: a view of the
  file's mapping, released by the next read), so its state is a few tensors of that one name,
  never N models. A method that needs two looks at every ingredient (TIES: elect signs, then
  average the agreeing entries) iterates the stream twice;
- the result depends only on the tensor's name and its inputs (randomness, DARE's drop masks,
  comes from a generator seeded by the method's seed and the tensor name), so a soup is bitwise
  identical for any shard count, and the τ a held-out score was computed from is the one the
  written soup is made from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from raysoup.checkpoints.ingredient import weights_path
from raysoup.checkpoints.tensorfile import Scratch, numpy_view, open_tensors
from raysoup.reduce.reduction import ReductionError, _check_shape, _get, _owned

Stream = Callable[[], Iterator[torch.Tensor]]


class TensorMerge(Protocol):
    """m(τ_1..τ_N) for one tensor: `base` is θ_0 (float32), `stream()` yields θ_1..θ_N (read-only
    views, any float dtype; each valid until the next is drawn). Returns the merged task vector
    (float32, the base's shape). Must be picklable (it travels to shard tasks)."""

    def __call__(self, name: str, base: torch.Tensor, stream: Stream) -> torch.Tensor: ...


def tensor_generator(seed: int, name: str, index: int) -> torch.Generator:
    """A generator for ingredient `index`'s randomness on tensor `name`: independent of shard
    layout and of every other tensor (a stable hash, not Python's salted `hash`)."""
    digest = hashlib.sha256(f"{seed}/{name}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def task_vectors(paths: list[Path], base: Path, names: list[str], merge: TensorMerge
                 ) -> dict[str, np.ndarray]:
    """{name: m(τ) as float32} for the floating tensors of `names` (paths: the ingredients θ_i,
    `base`: θ_0); non-floating tensors (integer buffers) are the first ingredient's
    (fine-tuning advanced BatchNorm's step counter, so the base's differs)."""
    return {name: (tau if tau is not None else theta0).numpy()
            for name, theta0, tau in _merged(paths, base, names, merge)}


def _merged(paths: list[Path], base: Path, names: list[str], merge: TensorMerge
            ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """Per name: (name, θ_0 as a float32 copy the caller may overwrite, m(τ)), or for a
    non-floating tensor (name, the first ingredient's tensor, None); one name at a time."""
    if not paths:
        raise ReductionError("a task-vector merge needs at least one ingredient")
    files = [weights_path(p) for p in paths]
    base_file = weights_path(base)
    with ExitStack() as stack:
        handles = [stack.enter_context(open_tensors(f)) for f in files]
        base_h = stack.enter_context(open_tensors(base_file))
        scratch = Scratch()
        for name in names:
            theta0 = _get(base_h, name, base_file, files[0])
            if not theta0.is_floating_point():
                yield name, numpy_view(_owned(_get(handles[0], name, files[0], base_file))), None
                continue
            theta0 = theta0.to(torch.float32, copy=True)

            def stream(name=name, theta0=theta0) -> Iterator[torch.Tensor]:
                for f, h in zip(files, handles, strict=True):
                    theta = _get(h, name, f, base_file, scratch)
                    _check_shape(name, theta0, theta, base_file, f)
                    yield theta

            tau = merge(name, theta0, stream)
            if tau.shape != theta0.shape or tau.dtype != torch.float32:
                raise ReductionError(f"tensor {name!r}: the merge returned {tau.dtype}"
                                     f"{list(tau.shape)}, expected float32{list(theta0.shape)}")
            yield name, theta0, tau
        scratch.release()


def apply_task_vector(base: Path, taus: dict[str, np.ndarray], scale: float,
                      names: list[str]) -> dict[str, np.ndarray]:
    """θ_0 + scale·τ per tensor (float32); non-floating tensors pass through from `taus`."""
    base_file = weights_path(base)
    out: dict[str, np.ndarray] = {}
    s32 = float(np.float32(scale))
    with open_tensors(base_file) as h:
        for name in names:
            if name not in taus:
                raise ReductionError(f"tensor {name!r}: no merged task vector for it")
            tau = numpy_view(taus[name])
            if not tau.is_floating_point():
                out[name] = taus[name]
                continue
            theta0 = _get(h, name, base_file, base_file).to(torch.float32, copy=True)
            _check_shape(name, theta0, tau, base_file, "the merged task vector")
            out[name] = theta0.add_(tau, alpha=s32).numpy()
    return out


def merge_shard(paths: list[Path], base: Path, names: list[str], merge: TensorMerge,
                scale: float) -> dict[str, np.ndarray]:
    """θ_0 + scale·m(τ) for `names`: the same float32 operations as
    `apply_task_vector(task_vectors(...))`, so a soup scored from cached task vectors and the
    one written from scratch are the same bits; each m(τ) is dropped once applied (memory: the
    shard's output and one tensor's merge, not a second copy of the shard)."""
    s32 = float(np.float32(scale))
    out: dict[str, np.ndarray] = {}
    for name, theta0, tau in _merged(paths, base, names, merge):
        out[name] = (theta0 if tau is None else theta0.add_(tau, alpha=s32)).numpy()
        del tau
    return out

