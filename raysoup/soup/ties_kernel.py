"""TIES' trim, sign election and disjoint mean in one streaming pass (numba).

Per entry the pass keeps the sum and the count of the kept (trimmed) τ_i that are positive and
of those that are negative. The elected sign is the sign of their total; the disjoint mean is
then the positive mean, the negative mean or 0 — the same merge as electing first and averaging
the agreeing entries in a second pass (raysoup/soup/task_vectors.py: `elect_and_average`),
with each ingredient read once instead of twice and no temporaries: the torch formulation made
~14 element-wise passes over every task vector (B1: TIES 16x the raw-read floor).

The sums run in ingredient order, float32, per entry: the result depends only on the tensor's
inputs (bitwise identical for any shard count). The election's total is pos + neg rather than
a running sum in ingredient order, so an entry whose total is within rounding of 0 may elect
differently from the two-pass form.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numba
import numpy as np
import torch

from raysoup.reduce.merge import Stream, ingredient_count, read_slice, read_slices


# Branch-free bodies (selects, not ifs): LLVM vectorises them, 14x faster than branches. The
# first ingredient assigns (no zero-filled state to allocate and write first). Serial: a
# shard task has one CPU (Ray sets its threads); the shards are the parallelism.
@numba.njit(nogil=True, cache=True)
def _merge_slice(rows, m, base, thr, pos, neg, npos, nneg, out):  # pragma: no cover - compiled
    """TIES of one slice: rows[i, :m] = θ_i's entries, base = θ_0's, out = the merged τ."""
    zero = np.float32(0)
    for i in range(rows.shape[0]):
        t = thr[i]
        theta = rows[i]
        if i == 0:  # a loop of its own each: a test inside the loop stops the vectoriser
            for j in range(m):
                tau = np.float32(theta[j] - base[j])
                kept = abs(tau) >= t
                up = kept and tau > zero
                down = kept and tau < zero
                pos[j] = tau if up else zero
                neg[j] = tau if down else zero
                npos[j] = up
                nneg[j] = down
        else:
            for j in range(m):
                tau = np.float32(theta[j] - base[j])
                kept = abs(tau) >= t
                up = kept and tau > zero
                down = kept and tau < zero
                pos[j] += tau if up else zero
                neg[j] += tau if down else zero
                npos[j] += up
                nneg[j] += down
    for j in range(m):
        total = pos[j] + neg[j]
        up = pos[j] / np.float32(max(npos[j], 1))
        down = neg[j] / np.float32(max(nneg[j], 1))
        out[j] = up if total > zero else (down if total < zero else zero)


def _float32(t: torch.Tensor) -> np.ndarray:
    """A flat float32 numpy view (a copy only for other float dtypes)."""
    flat = t.reshape(-1)
    return (flat if flat.dtype == torch.float32 else flat.to(torch.float32)).numpy()


# Entries merged at a time, at most: the rows (every ingredient's slice, read into memory
# reused for every slice) stay within ROWS_BYTES, and with the state (10 bytes an entry) in
# the core's L2 cache.
# Before, 4M-entry chunks each re-drew the files' mappings per ingredient and the state lived
# in memory, read and written by every ingredient's pass (B1: TIES 4.2x the raw-read floor).
CHUNK = 1 << 17
ROWS_BYTES = 2 << 20


_local = threading.local()


def _scratch(slot: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """This thread's reusable array for `slot` (grown when too small): fresh arrays per tensor
    were fresh pages each time, and a page fault costs more than the reads here."""
    held = getattr(_local, "arrays", None)
    if held is None:
        held = _local.arrays = {}
    size = math.prod(shape)
    a = held.get((slot, np.dtype(dtype)))
    if a is None or a.size < size:
        a = held[(slot, np.dtype(dtype))] = np.empty(size, dtype)
    return a[:size].reshape(shape)


def ties_merge(stream: Stream, base: torch.Tensor, trims: Sequence[float | None],
               out: torch.Tensor | None = None) -> torch.Tensor:
    """TIES over the ingredients `stream` yields (θ_i; τ_i = θ_i − base), ingredient i trimmed
    at magnitude `trims[i]` (None: keep every entry; see `trim_thresholds`). One read of every
    ingredient, slice by slice: each slice of every ingredient is read into reused rows and
    merged by one compiled call; memory: the base, the result, the rows and the state (two
    float32 sums, two counts); the merged τ goes to `out` (contiguous float32, the base's
    shape) when given. The result does not depend on the slicing: each entry's sums run in
    ingredient order."""
    b = _float32(base)
    n = b.size
    count = ingredient_count(stream)
    if count == 0 or count != len(trims):
        raise ValueError(f"{len(trims)} trim thresholds for {count} ingredients (TIES needs "
                         "at least one, a threshold each)")
    thr = np.array([-np.inf if t is None else t for t in trims], np.float32)
    result = torch.empty(base.shape) if out is None else out
    out = result.reshape(-1).numpy()  # (a view: `out` is contiguous float32)
    chunk = max(1, min(CHUNK, n, ROWS_BYTES // (4 * max(count, 1))))
    counts = np.uint8 if count < 256 else np.uint32

    rows = _scratch(0, (count, chunk), np.float32)
    pos, neg = _scratch(1, (chunk,), np.float32), _scratch(2, (chunk,), np.float32)
    npos, nneg = _scratch(3, (chunk,), counts), _scratch(4, (chunk,), counts)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        read_slices(stream, lo, hi, rows[:, : hi - lo])
        _merge_slice(rows, hi - lo, b[lo:hi], thr, pos, neg, npos, nneg, out[lo:hi])
    return result


# Tensors with more entries estimate the trim threshold from a sample of this many τ entries
# (deterministic; the kept fraction is then the density within ~0.5 points): the exact k-th
# largest of a 2^20-entry tensor per ingredient was a third of TIES' time. The sample is BLOCKS
# contiguous runs spread evenly over the tensor, each one small read per ingredient — a
# strided sample would read every memory page, i.e. the whole tensor once more.
SAMPLE = 1 << 16
BLOCKS = 8


def sample_runs(n: int) -> list[tuple[int, int]]:
    """The [lo, hi) runs of a tensor's n entries that its trim threshold is taken from."""
    if n <= SAMPLE:
        return [(0, n)]
    length = SAMPLE // BLOCKS
    starts = ((r * (n - length)) // (BLOCKS - 1) for r in range(BLOCKS))
    return [(s, s + length) for s in starts]


def trim_thresholds(stream: Stream, base: torch.Tensor, density: float) -> list[float | None]:
    """Per ingredient, the magnitude at or above which an entry of τ_i is among its top
    `density` fraction (None: every entry is kept): exact up to SAMPLE entries, else from the
    `sample_runs`, one ingredient at a time."""
    b = _float32(base)
    n = b.size
    count = ingredient_count(stream)
    runs = sample_runs(n)
    m = sum(hi - lo for lo, hi in runs)
    if n == 0 or math.ceil(density * m) >= m:
        return [None] * count
    k = m - math.ceil(density * m)  # the k-th smallest (0-based) is the ceil(d·m)-th largest
    rows = _scratch(5, (2, m), np.float32)  # a run of θ_i; the sample's magnitudes
    found = []
    for i in range(count):
        at = 0
        for lo, hi in runs:
            read_slice(stream, i, lo, hi, rows[0, :hi - lo])
            _magnitude(rows[0, :hi - lo], b[lo:hi], rows[1, at:at + hi - lo])
            at += hi - lo
        found.append(_kth_smallest(rows[1, :m], k))
    return [float(x) for x in found]


@numba.njit(nogil=True, cache=True)
def _magnitude(theta, base, out):  # pragma: no cover - compiled
    for j in range(base.size):
        out[j] = abs(np.float32(theta[j] - base[j]))


@numba.njit(nogil=True, cache=True)
def _kth_smallest(magnitude, k):  # pragma: no cover - compiled
    """The k-th smallest (0-based) of non-negative float32s, exactly: a radix select on their
    bits (non-negative floats order as their bit patterns), three passes of 11, 11 and 10 bits
    whose 2048-bin histograms stay in L1 — 8x faster than 16-bit digits on a small tensor
    (zeroing and scanning 65536 bins), on par with numpy's introselect on a 2^16 sample."""
    bits = magnitude.view(np.uint32)
    prefix = np.uint32(0)
    rest = k
    hist = np.empty(2048, np.int64)
    for shift, width in ((21, 11), (10, 11), (0, 10)):
        mask = np.uint32((1 << width) - 1)
        above = shift + width  # the bits already decided
        hist[:] = 0
        for j in range(bits.size):
            b = bits[j]
            if above >= 32 or (b >> above) == (prefix >> above):
                hist[(b >> shift) & mask] += 1
        digit = 0
        for digit in range(1 << width):
            if hist[digit] > rest:
                break
            rest -= hist[digit]
        prefix |= np.uint32(digit) << shift
    found = np.empty(1, np.uint32)
    found[0] = prefix
    return found.view(np.float32)[0]
