"""Weighted averaging of one shard of tensors across ingredients (pure torch/numpy, no Ray).

Memory: each ingredient is opened lazily (only its safetensors header is parsed). A uniform
average of a tensor every file holds as local float32 is one compiled pass over the files
(`reduce.mapped.sum_files`: each file a piece at a time, read in place through its mapping and
released behind the pass, or copied into reused rows — whichever `reduce.route` measured
cheaper here; no Python per tensor, so cheaper than the route below). Otherwise, per
tensor name the first ingredient's tensor is read (positioned read) into fresh memory and
becomes the float32
accumulator, and every later ingredient's tensor is added in place from a read-only view of
its file mapping, whose pages are dropped from the process right after the add
(`checkpoints.tensorfile.Scratch`). Peak memory is the shard's accumulators plus about one
tensor (or a few MiB of window per file), never N models.
(A plain `safe_open` mapping keeps every touched page resident while the handle is open: a
shard over N ingredients would hold N x the shard's bytes. Reading every ingredient into a
buffer instead costs one extra memory copy per ingredient, and the reduction is bound by
memory bandwidth.) Remote files (`raysoup.storage`) are read with ranged requests instead.

Bitwise guarantee (greedy soup relies on it): for ingredients p_0..p_{k-1}

    reduce_shard([p_0, ..., p_{k-1}], [1/k] * k, names)
      == scaled(add_into(...add_into(add_into(None, p_0, names), p_1, names)...,
                         p_{k-1}, names), 1/k)

bit for bit, for any shard layout. Both sides compute float32(θ_0) + θ_1 + ... left to right
(IEEE float32 addition is exactly rounded and commutative, so it does not matter whether the
running sum or the new tensor is the left operand) and then call the same `scale_` multiply.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from raysoup.checkpoints.ingredient import weights_path
from raysoup.checkpoints.tensorfile import (
    Scratch,
    TensorFileError,
    numpy_view,
    open_tensors,
)
from raysoup.reduce.mapped import addresses, note_route, rows, step, sum_files
from raysoup.reduce.route import io_route, maps_views


class ReductionError(TensorFileError):
    """Ingredients that cannot be averaged; the message names the tensor and the files."""


def reduce_shard(
    paths: list[Path],
    weights: list[float],
    names: list[str],
    tensor_weights: dict[str, list[float]] | None = None,
    integers_from: int | None = None,
) -> dict[str, np.ndarray]:
    """Σ w_i·θ_i for each tensor in `names`, accumulated in float32 in `paths` order.

    `paths` are ingredient directories or safetensors files. Floating tensors come back as
    float32 arrays (the writer casts back to the stored dtype); non-floating tensors (integer
    buffers) must be identical in every ingredient and are returned as the first one's.
    `tensor_weights` gives a tensor its own weights (one per ingredient, e.g. per-layer learned
    soups, Model Stock); names it lacks use `weights`. Each tensor is reduced exactly as a
    whole-model call with its weights would reduce it, so the bitwise guarantee holds per tensor.
    `integers_from=j`: take non-floating tensors from ingredient j without requiring the others
    to match (a soup with the zero-shot anchor: fine-tuning advanced BatchNorm's step counter).
    """
    return dict(reduce_tensors(paths, weights, names, tensor_weights, integers_from))


def reduce_tensors(
    paths: list[Path],
    weights: list[float],
    names: list[str],
    tensor_weights: dict[str, list[float]] | None = None,
    integers_from: int | None = None,
    reuse: bool = False,
) -> Iterator[tuple[str, np.ndarray]]:
    """`reduce_shard`'s tensors one at a time, in `names` order, the same bits. `reuse`: a
    compiled sum's tensor lives in one buffer reused for every name (valid until the next is
    drawn; the largest tensor's size): a writer that streams each tensor into its file needs
    no fresh memory for the soup, whose page faults cost more than reading the page cache."""
    weights = _checked_weights(weights, len(paths), "weights")
    per_tensor = {
        name: _checked_weights(w, len(paths), f"tensor_weights[{name!r}]")
        for name, w in (tensor_weights or {}).items()
    }
    files = [weights_path(p) for p in paths]
    with ExitStack() as stack:
        handles = [stack.enter_context(open_tensors(f)) for f in files]
        # Ingredients after the first are read through one Scratch (a mapped view, or a reused
        # buffer for remote files): a fresh allocation per read costs a page fault per 4 KiB.
        scratch = Scratch(maps=maps_views(handles[0].fd) if handles[0].fd >= 0 else True)
        buffer = _Reused() if reuse else None
        for name in names:
            yield name, _reduce_tensor(handles, files, name, per_tensor.get(name, weights),
                                       integers_from, scratch, buffer)
        scratch.release()


def reduce_layout(paths: list[Path], names: list[str], integers_from: int | None = None
                  ) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """{name: (dtype, shape)} of what `reduce_tensors` yields, from the files' headers:
    float32 for a floating tensor, the source's dtype for an integer one."""
    files = [weights_path(p) for p in paths]
    with open_tensors(files[0]) as first:
        entries = {name: _entry(first, name, files[0]) for name in names}
    if integers_from is not None and any(not e.dtype.is_floating_point for e in entries.values()):
        with open_tensors(files[integers_from]) as h:
            entries.update({n: _entry(h, n, files[integers_from]) for n, e in entries.items()
                            if not e.dtype.is_floating_point})
    return {n: (torch.float32 if e.dtype.is_floating_point else e.dtype, tuple(e.shape))
            for n, e in entries.items()}


def _entry(handle, name: str, file: Path):
    if name not in handle.entries:
        raise ReductionError(f"tensor {name!r}: missing in {file}")
    return handle.entries[name]


class _Reused:
    """One float32 buffer for tensors of any shape, grown to the largest asked for."""

    def __init__(self) -> None:
        self.memory = torch.empty(0)

    def get(self, shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        if self.memory.numel() < n:
            self.memory = torch.empty(0)  # the old one freed before the larger one is made
            self.memory = torch.empty(n)
        return self.memory[:n].view(shape)


def _reduce_tensor(handles, files: list[Path], name: str, w: list[float],
                   integers_from: int | None, scratch: Scratch, buffer: _Reused | None = None
                   ) -> np.ndarray:
    """Σ w_i·θ_i of one tensor: the compiled pass where it applies (into `buffer` where
    given), else read by read."""
    if all(x == w[0] for x in w):
        summed = _sum_mapped(handles, name, w[0], buffer)
        if summed is not None:
            return summed
    first = _get(handles[0], name, files[0], files[0])
    if not first.is_floating_point() and integers_from is not None:
        return _owned(_get(handles[integers_from], name, files[integers_from], files[0]))
    if not first.is_floating_point():
        for f, h in zip(files[1:], handles[1:]):
            _check_same(name, first, _get(h, name, f, files[0]), files[0], f)
        return _owned(first)
    acc = _fresh_f32(first)
    del first  # free file 0's read before the others are
    return _accumulate(handles, files, name, acc, w, scratch)


def _accumulate(handles, files: list[Path], name: str, acc: torch.Tensor, w: list[float],
                scratch: Scratch) -> np.ndarray:
    """Σ w_i·θ_i of a floating tensor in float32, in `files` order (`acc`: file 0's θ, a
    fresh float32 copy)."""
    # Uniform: add then scale once, exactly as add_into + scaled do. Otherwise axpy.
    uniform = all(x == w[0] for x in w)
    if not uniform:
        acc.mul_(w[0])
    for f, h, wi in zip(files[1:], handles[1:], w[1:]):
        theta = _get(h, name, f, files[0], scratch)
        _check_shape(name, acc, theta, files[0], f)
        if uniform:
            acc.add_(theta)
        else:
            acc.add_(theta, alpha=wi)
        del theta  # free the read before the next one
    out = acc.numpy()
    if uniform:
        scale_({name: out}, w[0])  # the same float32 multiply as scale_/scaled
    return out


def _sum_mapped(handles, name: str, w: float, buffer: _Reused | None = None
                ) -> np.ndarray | None:
    """w·Σ θ_i of tensor `name` in one compiled pass over the files
    (`raysoup.reduce.mapped.sum_files`: the bits of the adds-then-scale below, on the I/O route
    `raysoup.reduce.route` picks), where every file holds it as local float32 in one shape;
    None otherwise (the Python route reads it, and names a missing tensor or a mismatch)."""
    if any(name not in h.entries for h in handles):
        return None
    if len({h.entries[name].shape for h in handles}) != 1:
        return None
    mapped = addresses(handles, name)
    if mapped is None:
        return None
    # torch's memory: numpy advises huge pages on large arrays (see merge._soup_from_files)
    shape = handles[0].entries[name].shape
    out = (torch.empty(shape, dtype=torch.float32) if buffer is None else buffer.get(shape)
           ).numpy()
    route = io_route(*mapped, out.size)
    note_route(route)
    failed = sum_files(route, *mapped, out.size, step(route, len(handles)), np.float32(w),
                       out.reshape(-1), rows(route, len(handles)))
    if failed >= 0:  # read it again through Python: its error names the file and the cause
        handles[failed].read_entries(name, 0, out.size, out.reshape(-1))
        raise TensorFileError(f"tensor {name!r}: reading {handles[failed].file} failed")
    return out


def _checked_weights(weights: list[float], n: int, what: str) -> list[float]:
    if n == 0 or len(weights) != n:
        raise ReductionError(f"need one weight per ingredient, got {n} paths, {len(weights)} {what}")
    weights = [float(w) for w in weights]
    if not all(math.isfinite(w) for w in weights):
        raise ReductionError(f"{what} must be finite, got {weights}")
    return weights


def add_into(
    acc: dict[str, np.ndarray] | None, path: Path, names: list[str]
) -> dict[str, np.ndarray]:
    """Running sum: acc + θ(path) for `names`, as a NEW dict of new arrays.

    `acc` is never modified: it may hold read-only views from Ray's object store.
    `acc=None` starts the sum with a float32 copy of θ.
    """
    file = weights_path(path)
    out: dict[str, np.ndarray] = {}
    with open_tensors(file) as h:
        for name in names:
            theta = _get(h, name, file, file)
            if acc is None:
                if theta.is_floating_point():
                    out[name] = _fresh_f32(theta).numpy()
                else:
                    out[name] = _owned(theta)
                continue
            if name not in acc:
                raise ReductionError(f"tensor {name!r}: in {file} but not in the running sum")
            prev = numpy_view(acc[name])
            if not theta.is_floating_point():
                _check_same(name, prev, theta, "the running sum", file)
                out[name] = acc[name]  # never mutated, so sharing it is safe
                continue
            _check_shape(name, prev, theta, "the running sum", file)
            # θ's float32 copy becomes the new sum: no temporary beyond the read itself.
            new = _fresh_f32(theta)
            del theta
            new.add_(prev)
            out[name] = new.numpy()
    return out


def scale_(acc: dict[str, np.ndarray], w: float) -> dict[str, np.ndarray]:
    """Multiply every floating array by w in place (float32) and return `acc`."""
    w32 = np.float32(w)
    for name, a in acc.items():
        if _is_float(a):
            if not a.flags.writeable:
                raise ReductionError(f"tensor {name!r}: read-only array, use scaled() instead")
            np.multiply(a, w32, out=a)
    return acc


def scaled(acc: dict[str, np.ndarray], w: float) -> dict[str, np.ndarray]:
    """Like scale_ but returns new arrays; same float32 multiply, so the same bits."""
    w32 = np.float32(w)
    return {
        name: np.multiply(a, w32, dtype=np.float32) if _is_float(a) else a.copy()
        for name, a in acc.items()
    }


def _is_float(a: np.ndarray) -> bool:
    if np.issubdtype(a.dtype, np.floating):
        if a.dtype != np.float32:
            raise ReductionError(f"accumulators must be float32, got {a.dtype}")
        return True
    return False


def _get(handle, name: str, file: Path, first: Path, scratch: Scratch | None = None
         ) -> torch.Tensor:
    """The tensor, in fresh memory, or in `scratch` (valid until the next read through it)."""
    if name not in handle.keys():  # noqa: SIM118 - a _TensorFile, not a dict
        other = f" (present in {first})" if file != first else ""
        raise ReductionError(f"tensor {name!r}: missing in {file}{other}")
    return handle.get_tensor(name, scratch)


def _check_shape(name: str, a: torch.Tensor, b: torch.Tensor, file_a, file_b) -> None:
    if not a.is_floating_point():
        raise ReductionError(f"tensor {name!r}: {a.dtype} in {file_a} but floating in {file_b}")
    if a.shape != b.shape:
        raise ReductionError(
            f"tensor {name!r}: shape {list(a.shape)} in {file_a} but {list(b.shape)} in {file_b}"
        )
    if not b.is_floating_point():
        raise ReductionError(f"tensor {name!r}: floating in {file_a} but {b.dtype} in {file_b}")


# BatchNorm's step counter: bookkeeping that fine-tuning advances and inference ignores (it
# only matters with momentum=None), so a soup with the zero-shot model may mix values; the
# first ingredient's is kept.
STEP_COUNTERS = ("num_batches_tracked",)


def _check_same(name: str, a: torch.Tensor, b: torch.Tensor, file_a, file_b) -> None:
    # Integer buffers (position ids, counters) cannot be averaged; they must agree.
    if name.rsplit(".", 1)[-1] in STEP_COUNTERS and a.shape == b.shape and a.dtype == b.dtype:
        return
    if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
        raise ReductionError(
            f"tensor {name!r}: non-floating tensor differs between {file_a} and {file_b} "
            f"({a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)})"
        )


def _fresh_f32(t: torch.Tensor) -> torch.Tensor:
    # _TensorFile reads into fresh memory nobody else holds, so a float32 read can become the
    # accumulator itself: no second copy of the largest tensor at the peak.
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def _owned(t: torch.Tensor) -> np.ndarray:
    # An owned copy, whatever the reader hands out (a safe_open handle may share memory
    # between get_tensor calls).
    return t.clone().numpy()
