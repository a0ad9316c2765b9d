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
  written soup is made from;
- a method may also make a whole soup tensor itself from local float32 files (`soup_files`,
  TIES' compiled path, reading the files' mappings in place): the shard then reads nothing for
  it in Python. θ_0 + λ·τ is one float32 multiply, then one add (`axpy`), wherever it is
  computed, so both routes give the same bits.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

import numba
import numpy as np
import torch

from raysoup.checkpoints.ingredient import weights_path
from raysoup.checkpoints.tensorfile import Scratch, TensorFileError, numpy_view, open_tensors
from raysoup.reduce.mapped import addresses
from raysoup.reduce.route import maps_views
from raysoup.reduce.shard_reduce import (
    ReductionError,
    _check_same,
    _check_shape,
    _entry,
    _get,
    _owned,
    _Reused,
)

# θ_1..θ_N of one tensor, drawn afresh by each call (see TensorMerge). The streams `_merged`
# gives also have `len()` and `read_slices` (see `read_slices`).
Stream = Callable[[], Iterator[torch.Tensor]]


def ingredient_count(stream: Stream) -> int:
    return len(stream) if hasattr(stream, "__len__") else sum(1 for _ in stream())


def read_slices(stream: Stream, lo: int, hi: int, rows: np.ndarray) -> None:
    """rows[i] = ingredient i's flattened entries [lo, hi) as float32, for every ingredient
    (`rows`: float32, one contiguous row of hi − lo entries per ingredient). Where the stream
    reads files, positioned reads straight into the rows (no view of a file's mapping is
    touched): a merge that visits every ingredient per slice keeps its state in the CPU's
    cache and calls its kernel once per slice, not once per ingredient."""
    fast = getattr(stream, "read_slices", None)
    if fast is not None:
        fast(lo, hi, rows)
        return
    for i, theta in enumerate(stream()):
        torch.from_numpy(rows[i]).copy_(theta.reshape(-1)[lo:hi])


def read_slice(stream: Stream, i: int, lo: int, hi: int, out: np.ndarray) -> None:
    """`out` = ingredient i's flattened entries [lo, hi) as float32 (see `read_slices`)."""
    fast = getattr(stream, "read_slice", None)
    if fast is not None:
        fast(i, lo, hi, out)
        return
    for j, theta in enumerate(stream()):
        if j == i:
            torch.from_numpy(out).copy_(theta.reshape(-1)[lo:hi])
            return
    raise IndexError(f"no ingredient {i} in a stream of {ingredient_count(stream)}")


class TensorMerge(Protocol):
    """m(τ_1..τ_N) for one tensor: `base` is θ_0 (float32), `stream()` yields θ_1..θ_N (read-only
    views, any float dtype; each valid until the next is drawn). Returns the merged task vector
    (float32, the base's shape), which may be `out` (a float32 tensor of the base's shape, or
    None) written in place: the shard writer reuses one for every tensor, since fresh memory is
    a page fault per 4 KiB. Must be picklable (it travels to shard tasks)."""

    def __call__(self, name: str, base: torch.Tensor, stream: Stream,
                 out: torch.Tensor | None = None) -> torch.Tensor: ...

    # Optional, for the written soup: `soup_files(files, mappings, n, scale, out)` puts θ_0 +
    # scale·m(τ) of one float32 tensor of n entries into `out` (float32), reading the local
    # files' mappings itself — files[0] = the address of θ_0's entry 0, then θ_1..θ_N's
    # (`raysoup.reduce.mapped.addresses`) — and returns -1, or the index of the file whose
    # read failed. Its bits must be those of `__call__` + `axpy`.


@numba.njit(nogil=True, cache=True)
def _axpy(theta, tau, scale):  # pragma: no cover - compiled
    for j in range(theta.size):
        theta[j] = theta[j] + scale * tau[j]


def axpy(theta0: torch.Tensor, tau: torch.Tensor, scale: float) -> torch.Tensor:
    """θ_0 + scale·τ in place in `theta0` (float32, contiguous): one rounded multiply, then one
    rounded add — not torch's `add_(alpha=)`, which fuses them (FMA) on CPUs that have it, so
    a compiled merge that applies λ itself (TIES' `soup_files`) could not match its bits."""
    _axpy(theta0.reshape(-1).numpy(), tau.reshape(-1).numpy(), np.float32(scale))
    return theta0


def tensor_generator(seed: int, name: str, index: int) -> torch.Generator:
    """A generator for ingredient `index`'s randomness on tensor `name`: independent of shard
    layout and of every other tensor (a stable hash, not Python's salted `hash`)."""
    digest = hashlib.sha256(f"{seed}/{name}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def task_vectors(paths: list[Path], base: Path, names: list[str], merge: TensorMerge
                 ) -> dict[str, np.ndarray]:
    """{name: m(τ) as float32} for the floating tensors of `names` (paths: the ingredients θ_i,
    `base`: θ_0); non-floating tensors (integer buffers) are the first ingredient's
    (fine-tuning advanced BatchNorm's step counter, so the base's differs); the others must
    hold the same (step counters aside) or it is a ReductionError naming the tensor."""
    return {name: (tau if tau is not None else theta0).numpy()
            for name, theta0, tau in _merged(paths, base, names, merge)}


def _merged(paths: list[Path], base: Path, names: list[str], merge: TensorMerge,
            reuse: bool = False, scale: float | None = None, reuse_soup: bool = False
            ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """Per name: (name, θ_0 as a float32 copy the caller may overwrite, m(τ)), or for a
    non-floating tensor (name, the first ingredient's tensor, None); one name at a time.
    `reuse`: m(τ) may live in one buffer reused for every name (valid until the next).
    `scale`: where the merge has `soup_files` and every file holds the tensor as local float32,
    (name, θ_0 + scale·m(τ), None) made by it instead — in one buffer reused for every name
    where `reuse_soup` (valid until the next)."""
    if not paths:
        raise ReductionError("a task-vector merge needs at least one ingredient")
    files = [weights_path(p) for p in paths]
    base_file = weights_path(base)
    with ExitStack() as stack:
        handles = [stack.enter_context(open_tensors(f)) for f in files]
        base_h = stack.enter_context(open_tensors(base_file))
        scratch = Scratch(maps=maps_views(base_h.fd) if base_h.fd >= 0 else True)
        buffer = torch.empty(0)
        soups = _Reused() if reuse_soup else None
        soup_files = getattr(merge, "soup_files", None) if scale is not None else None
        for name in names:
            entry = base_h.entries.get(name)  # a TensorEntry: the header only
            if entry is not None and not entry.dtype.is_floating_point:
                first = _get(handles[0], name, files[0], base_file)
                for f, h in zip(files[1:], handles[1:], strict=True):  # equal, or an error
                    _check_same(name, first, _get(h, name, f, base_file), files[0], f)
                yield name, numpy_view(_owned(first)), None
                continue
            if soup_files is not None and entry is not None:
                soup = _soup_from_files(name, soup_files, scale, (base_file, base_h),
                                        list(zip(files, handles, strict=True)), soups)
                if soup is not None:
                    yield name, soup, None
                    continue
            # Read into fresh memory the caller may overwrite (the soup's tensor): a copy from
            # a view of the file's mapping faulted every page of the base in first.
            theta0 = _get(base_h, name, base_file, files[0]).to(torch.float32)
            out = None
            if reuse:
                if buffer.numel() < theta0.numel():
                    buffer = torch.empty(_largest(base_h, names))
                out = buffer[:theta0.numel()].view(theta0.shape)
            tau = merge(name, theta0, _FileStream(name, theta0, files, handles, base_file,
                                                  scratch), out=out)
            if tau.shape != theta0.shape or tau.dtype != torch.float32:
                raise ReductionError(f"tensor {name!r}: the merge returned {tau.dtype}"
                                     f"{list(tau.shape)}, expected float32{list(theta0.shape)}")
            yield name, theta0, tau
        scratch.release()


def _soup_from_files(name, soup_files, scale, base, ingredients, into: _Reused | None = None
                     ) -> torch.Tensor | None:
    """θ_0 + scale·m(τ) of tensor `name` made by the merge's `soup_files` in fresh memory (the
    soup's tensor; or in `into`), or None where a file is remote or holds it in another dtype
    than float32. `base`, `ingredients`: (file, open handle)."""
    base_file, base_h = base
    _, _, dtype, shape = base_h.entries[name]
    meta = torch.empty(shape, dtype=dtype, device="meta")  # the base's shape and dtype, no read
    _FileStream(name, meta, [f for f, _ in ingredients], [h for _, h in ingredients],
                base_file, None)._check()  # every ingredient has it, in the base's shape
    mapped = addresses([h for _, h in (base, *ingredients)], name)
    if mapped is None:
        return None
    # torch's memory, not numpy's: numpy asks for transparent huge pages on large arrays,
    # whose faults enter compaction when free memory is short (a soup task with the page cache
    # full) and fall back to 4 KiB pages for part of it; huge pages cut the fault count but
    # were not cheaper to touch than torch's 4 KiB pages (docs/benchmarks.md, B1). A shard
    # written to its file reuses one buffer instead (`into`: `shard_stream`).
    soup = torch.empty(shape, dtype=torch.float32) if into is None else into.get(shape)
    out = soup.reshape(-1).numpy()
    failed = soup_files(*mapped, out.size, scale, out)
    if failed >= 0:  # read it again through Python: its error names the file and the cause
        file, handle = (base, *ingredients)[failed]
        handle.read_entries(name, 0, out.size, out)
        raise TensorFileError(f"tensor {name!r}: reading {file} failed")
    return soup


def _largest(handle, names: list[str]) -> int:
    return max((math.prod(handle.entries[n].shape) for n in names if n in handle.entries),
               default=0)


class _FileStream:
    """The ingredients' tensor `name` from their files: `stream()` yields views of each file's
    mapping, `read_slices` positioned reads of a slice of each into rows the caller reuses."""

    def __init__(self, name, theta0, files, handles, base_file, scratch):
        self.name, self.theta0, self.files, self.handles = name, theta0, files, handles
        self.base_file, self.scratch = base_file, scratch
        self.checked = False

    def __call__(self) -> Iterator[torch.Tensor]:
        for f, h in zip(self.files, self.handles, strict=True):
            theta = _get(h, self.name, f, self.base_file, self.scratch)
            _check_shape(self.name, self.theta0, theta, self.base_file, f)
            yield theta

    def __len__(self) -> int:
        return len(self.files)

    def read_slices(self, lo: int, hi: int, rows: np.ndarray) -> None:
        self._check()
        for i, h in enumerate(self.handles):
            h.read_entries(self.name, lo, hi, rows[i])

    def read_slice(self, i: int, lo: int, hi: int, out: np.ndarray) -> None:
        self._check()
        self.handles[i].read_entries(self.name, lo, hi, out)

    def _check(self) -> None:
        if not self.checked:  # every ingredient's header, once, before any slice is read
            for f, h in zip(self.files, self.handles, strict=True):
                if self.name not in h.keys():  # noqa: SIM118 - a _TensorFile, not a dict
                    raise ReductionError(f"tensor {self.name!r}: missing in {f} (present in "
                                         f"{self.base_file})")
                _, _, dtype, shape = h.entries[self.name]
                meta = torch.empty(shape, dtype=dtype, device="meta")  # no read
                _check_shape(self.name, self.theta0, meta, self.base_file, f)
            self.checked = True


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
            out[name] = axpy(theta0, tau.to(torch.float32), s32).numpy()
    return out


def merge_shard(paths: list[Path], base: Path, names: list[str], merge: TensorMerge,
                scale: float) -> dict[str, np.ndarray]:
    """θ_0 + scale·m(τ) for `names`: the same float32 operations as
    `apply_task_vector(task_vectors(...))`, so a soup scored from cached task vectors and the
    one written from scratch are the same bits; each m(τ) is dropped once applied (memory: the
    shard's output and one tensor's merge, not a second copy of the shard)."""
    return dict(merge_tensors(paths, base, names, merge, scale))


def merge_tensors(paths: list[Path], base: Path, names: list[str], merge: TensorMerge,
                  scale: float, reuse: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """`merge_shard`'s tensors one at a time, in `names` order, the same bits. `reuse`: a
    tensor the merge's `soup_files` makes lives in one buffer reused for every name (valid
    until the next is drawn; see `shard_reduce.reduce_tensors`)."""
    s32 = float(np.float32(scale))
    for name, theta0, tau in _merged(paths, base, names, merge, reuse=True, scale=s32,
                                     reuse_soup=reuse):
        yield name, (theta0 if tau is None else axpy(theta0, tau, s32)).numpy()
        del tau


def merge_layout(paths: list[Path], base: Path, names: list[str]
                 ) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """{name: (dtype, shape)} of what `merge_tensors` yields, from the files' headers: float32
    in the base's shape for a floating tensor, the first ingredient's for an integer one."""
    base_file, first_file = weights_path(base), weights_path(paths[0])
    with open_tensors(base_file) as b, open_tensors(first_file) as first:
        out = {}
        for name in names:
            e = _entry(b, name, base_file)
            if not e.dtype.is_floating_point:
                e = _entry(first, name, first_file)
            out[name] = (torch.float32 if e.dtype.is_floating_point else e.dtype, tuple(e.shape))
    return out

