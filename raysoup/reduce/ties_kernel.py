"""TIES' trim, sign election and disjoint mean in one streaming pass (numba).

Per entry the pass keeps the sum and the count of the kept (trimmed) τ_i that are positive and
of those that are negative. The elected sign is the sign of their total; the disjoint mean is
then the positive mean, the negative mean or 0 — the same merge as electing first and averaging
the agreeing entries in a second pass (raysoup/soup/task_vectors.py: `elect_and_average`),
with each ingredient read once instead of twice and no temporaries: the torch formulation
makes ~14 element-wise passes over every task vector, each bound by memory bandwidth.

The sums run in ingredient order, float32, per entry: the result depends only on the tensor's
inputs (bitwise identical for any shard count). The election's total is pos + neg rather than
a running sum in ingredient order, so an entry whose total is within rounding of 0 may elect
differently from the two-pass form.

Each τ_i is first trimmed to exactly its k = ⌈density·n⌉ largest magnitudes (`Trim`,
`kept_count`): one ingredient at a time, its whole τ's magnitudes are computed into reused
memory while a histogram of their top bits is counted, and the k-th largest is selected among
the entries of its histogram bin only (`_top_k`); the merge then keeps |τ| above it, and of
those equal to it the first in index order.

Two drivers run that pass: `ties_merge` reads slices through Python (any stream: in-memory
tensors, other dtypes, remote files) and returns τ; `ties_soup` is the whole soup of one float32
tensor of local files in one compiled call — trims, merge and θ_0 + λ·τ — with no Python per
slice and no separate pass for the base or the apply: the trims read with `pread`, ahead of
the merge; the merge reads on the I/O route measured cheaper where it runs
(`raysoup.reduce.route`: in place through the files' mappings, releasing their pages behind
it, or copied into reused rows in the core's cache). Both run
the same compiled arithmetic on the same float32 inputs, so they give the same bits.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from raysoup.reduce.mapped import (
    SLICE,
    entries,
    fetch,
    note_route,
    read_entries,
    release,
    rows,
    step,
)
from raysoup.reduce.merge import Stream, ingredient_count, read_slice, read_slices
from raysoup.reduce.route import io_route


# Branch-free bodies (selects, not ifs): LLVM vectorises them; a branch keeps the loop scalar.
# The counts are float32 (exact to 2^24 ingredients), the width of the sums: as bytes beside
# float32 lanes every compare was widened and narrowed again, ~30 % of the pass.
@numba.njit(nogil=True, cache=True, inline="always")
def _kept(theta, base, t, p, q, cp, cn):  # pragma: no cover - compiled
    """One ingredient's entry added to an entry's state: τ kept if |τ| ≥ t, summed and counted
    on its sign's side."""
    zero, one = np.float32(0), np.float32(1)
    tau = np.float32(theta - base)
    kept = abs(tau) >= t
    up = kept & (tau > zero)
    down = kept & (tau < zero)
    return (p + (tau if up else zero), q + (tau if down else zero), cp + (one if up else zero),
            cn + (one if down else zero))


# Ingredients are taken four at a time, the entry's state in registers between them: a pass per
# ingredient would load and store the state for each, a memory round trip per
# entry-ingredient. The first pass starts from zeros instead of reading the state (nothing to
# allocate and clear first), in a loop of its own (a select per entry kept it from
# vectorising well). Serial: a shard task has one CPU (Ray sets its threads); the
# shards are the parallelism.
@numba.njit(nogil=True, cache=True)
def _accumulate(rows, lo, m, base, thr, pos, neg, npos, nneg):  # pragma: no cover - compiled
    """The kept τ_i of entries [lo, lo + m) summed and counted by sign, in ingredient order:
    rows[i] = the address of θ_i's entry 0 (a row of memory or a file's mapping), base = θ_0's
    entries [lo, lo + m)."""
    zero = np.float32(0)
    i = 0
    while i < rows.size:
        if rows.size - i >= 4:
            a, b = entries(rows[i], lo, m), entries(rows[i + 1], lo, m)
            c, d = entries(rows[i + 2], lo, m), entries(rows[i + 3], lo, m)
            ta, tb, tc, td = thr[i], thr[i + 1], thr[i + 2], thr[i + 3]
            if i == 0:
                for j in range(m):
                    x = base[j]
                    p, q, cp, cn = _kept(a[j], x, ta, zero, zero, zero, zero)
                    p, q, cp, cn = _kept(b[j], x, tb, p, q, cp, cn)
                    p, q, cp, cn = _kept(c[j], x, tc, p, q, cp, cn)
                    pos[j], neg[j], npos[j], nneg[j] = _kept(d[j], x, td, p, q, cp, cn)
            else:
                for j in range(m):
                    x = base[j]
                    p, q, cp, cn = _kept(a[j], x, ta, pos[j], neg[j], npos[j], nneg[j])
                    p, q, cp, cn = _kept(b[j], x, tb, p, q, cp, cn)
                    p, q, cp, cn = _kept(c[j], x, tc, p, q, cp, cn)
                    pos[j], neg[j], npos[j], nneg[j] = _kept(d[j], x, td, p, q, cp, cn)
            i += 4
        else:
            a, ta = entries(rows[i], lo, m), thr[i]
            if i == 0:
                for j in range(m):
                    pos[j], neg[j], npos[j], nneg[j] = _kept(a[j], base[j], ta, zero, zero,
                                                             zero, zero)
            else:
                for j in range(m):
                    pos[j], neg[j], npos[j], nneg[j] = _kept(a[j], base[j], ta, pos[j],
                                                             neg[j], npos[j], nneg[j])
            i += 1


@numba.njit(nogil=True, cache=True)
def _elected_mean(p, q, cp, cn):  # pragma: no cover - compiled
    """The disjoint mean of one entry: the mean of the side whose sum wins, 0 on a tie."""
    zero, one = np.float32(0), np.float32(1)
    total = p + q
    up = p / max(cp, one)
    down = q / max(cn, one)
    return up if total > zero else (down if total < zero else zero)


@numba.njit(nogil=True, cache=True)
def _apply_slice(m, pos, neg, npos, nneg, lam, base, out):  # pragma: no cover - compiled
    """out[:m] = θ_0 + λ·τ, base = θ_0's entries: the same float32 multiply, then add, as
    `raysoup.reduce.merge.axpy`: same bits."""
    for j in range(m):
        out[j] = base[j] + lam * _elected_mean(pos[j], neg[j], npos[j], nneg[j])


def _float32(t: torch.Tensor) -> np.ndarray:
    """A flat float32 numpy view (a copy only for other float dtypes)."""
    flat = t.reshape(-1)
    return (flat if flat.dtype == torch.float32 else flat.to(torch.float32)).numpy()


# Entries merged at a time, at most: the rows (every ingredient's slice, read into memory
# reused for every slice) stay within ROWS_BYTES, and with the state (16 bytes an entry) in
# the core's L2 cache: with larger chunks the state falls out to memory, and every
# ingredient's pass reads and writes it there.
CHUNK = 1 << 17
ROWS_BYTES = 2 << 20


_local = threading.local()


def _slice_state(count: int, n: int) -> tuple[np.ndarray, ...]:
    """This thread's reused rows (count × slice) and per-entry state for merging a tensor of n
    entries slice by slice."""
    chunk = max(1, min(CHUNK, n, ROWS_BYTES // (4 * count)))
    return _scratch(0, (count, chunk), np.float32), *_state(count, chunk)


def _state(count: int, chunk: int) -> tuple[np.ndarray, ...]:
    """This thread's reused per-entry state of a slice of `chunk` entries: two float32 sums,
    two counts (float32: exact to 2^24 ingredients)."""
    if count >= 1 << 24:
        raise ValueError(f"TIES of {count} ingredients: at most 2^24 - 1 are counted exactly")
    return tuple(_scratch(slot, (chunk,), np.float32) for slot in (1, 2, 3, 4))


def _scratch(slot: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """This thread's reusable array for `slot` (grown when too small): fresh arrays per tensor
    were fresh pages each time, and a page fault costs more than the reads here."""
    held = getattr(_local, "arrays", None)
    if held is None:
        held = _local.arrays = {}
    size = math.prod(shape)
    a = held.get((slot, np.dtype(dtype)))
    if a is None or a.size < size:
        # torch's memory, not numpy's: numpy advises huge pages on large arrays, whose faults
        # stall in compaction (see raysoup.reduce.merge._soup_from_files)
        raw = torch.empty(size * np.dtype(dtype).itemsize, dtype=torch.uint8).numpy()
        a = held[(slot, np.dtype(dtype))] = raw.view(dtype)
    return a[:size].reshape(shape)


class Trim(NamedTuple):
    """How one ingredient's τ is trimmed to exactly its k largest magnitudes: kept are the
    entries with |τ| > `magnitude` (the k-th largest) and, of those equal to it, the ones at flat
    index < `cut` — the first in index order, as a stable sort by descending magnitude takes
    them (`cut` = n where every entry equal to it is among the k)."""

    magnitude: float
    cut: int  # n where the magnitude is 0: a zero τ adds nothing whether kept or not


def kept_count(n: int, density: float) -> int:
    """k = ⌈density·n⌉ in exact arithmetic on the density as written (its shortest decimal
    form, `repr`): 0.3 of 10 entries keeps 3, where the float product 3.0000000000000004
    would round up to 4."""
    f = Fraction(repr(float(density)))
    return -(-f.numerator * n // f.denominator)


def _trim_arrays(trims: Sequence[Trim | float | None], n: int) -> tuple[np.ndarray, ...]:
    """Per ingredient: the magnitude kept at index < cut, the one kept at index ≥ cut (the next
    float up: |τ| ≥ it ⇔ |τ| > the magnitude) and the cut (None: keep every entry; a bare
    magnitude: keep every entry at or above it)."""
    at = np.full(len(trims), -np.inf, np.float32)
    cut = np.full(len(trims), n, np.int64)
    for i, t in enumerate(trims):
        if isinstance(t, Trim):
            at[i], cut[i] = t.magnitude, t.cut
        elif t is not None:
            at[i] = t
    return at, _next_up(at), cut


@numba.njit(nogil=True, cache=True)
def _next_up(magnitudes):  # pragma: no cover - compiled
    """The next float32 above each non-negative magnitude (-inf stays -inf)."""
    up = magnitudes.copy()
    bits = up.view(np.uint32)
    for i in range(up.size):
        if up[i] >= 0:
            bits[i] += 1
    return up


@numba.njit(nogil=True, cache=True)
def _accumulate_trimmed(rows, at, g, m, base, keep_at, keep_up, cut, thr, pos, neg, npos,
                        nneg):  # pragma: no cover - compiled
    """`_accumulate` of the tensor's entries [g, g + m) (the rows' entries [at, at + m)) under
    each ingredient's trim (`_trim_arrays`): the range is split where an ingredient's cut
    falls inside it — rarely: only where magnitudes tie at the threshold — so the inner loop
    keeps one threshold per ingredient."""
    s = 0
    while s < m:
        e = m
        for i in range(cut.size):
            c = cut[i] - g
            if s < c < e:
                e = c
        for i in range(cut.size):
            thr[i] = keep_at[i] if g + s < cut[i] else keep_up[i]
        _accumulate(rows, at + s, e - s, base[s:e], thr, pos[s:e], neg[s:e], npos[s:e],
                    nneg[s:e])
        s = e


@numba.njit(nogil=True, cache=True)
def _merge_slice(rows, lo, m, base, keep_at, keep_up, cut, pos, neg, npos, nneg,
                 out):  # pragma: no cover - compiled
    """TIES of the entries [lo, lo + m): rows[i, :m] = θ_i's, base = θ_0's, out = the merged τ."""
    addresses = np.empty(rows.shape[0], np.int64)
    for i in range(rows.shape[0]):
        addresses[i] = rows.ctypes.data + i * rows.strides[0]
    thr = np.empty(rows.shape[0], np.float32)
    _accumulate_trimmed(addresses, 0, lo, m, base, keep_at, keep_up, cut, thr, pos, neg, npos,
                        nneg)
    for j in range(m):
        out[j] = _elected_mean(pos[j], neg[j], npos[j], nneg[j])


def ties_merge(stream: Stream, base: torch.Tensor, trims: Sequence[Trim | float | None],
               out: torch.Tensor | None = None) -> torch.Tensor:
    """TIES over the ingredients `stream` yields (θ_i; τ_i = θ_i − base), ingredient i trimmed
    by `trims[i]` (`trim_thresholds`; None: keep every entry; a bare magnitude: keep the
    entries at or above it). One read of every ingredient, slice by slice: each slice of every
    ingredient is read into reused rows and merged by one compiled call; memory: the base, the
    result, the rows and the state (two float32 sums, two counts); the merged τ goes to `out`
    (contiguous float32, the base's shape) when given. The result does not depend on the
    slicing: each entry's sums run in ingredient order."""
    b = _float32(base)
    n = b.size
    count = ingredient_count(stream)
    if count == 0 or count != len(trims):
        raise ValueError(f"{len(trims)} trims for {count} ingredients (TIES needs at least "
                         "one, a trim each)")
    keep_at, keep_up, cut = _trim_arrays(trims, n)
    result = torch.empty(base.shape) if out is None else out
    out = result.reshape(-1).numpy()  # (a view: `out` is contiguous float32)
    rows, pos, neg, npos, nneg = _slice_state(count, n)
    chunk = rows.shape[1]
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        read_slices(stream, lo, hi, rows[:, : hi - lo])
        _merge_slice(rows, lo, hi - lo, b[lo:hi], keep_at, keep_up, cut, pos, neg, npos, nneg,
                     out[lo:hi])
    return result


def trim_thresholds(stream: Stream, base: torch.Tensor, density: float) -> list[Trim | None]:
    """Per ingredient, the `Trim` that keeps exactly the k = `kept_count(n, density)` largest
    |τ_i| of the tensor's n entries (None: k = n, every entry is kept): each ingredient's whole
    τ read in turn into reused memory (one tensor's magnitudes at a time, never N)."""
    b = _float32(base)
    n = b.size
    count = ingredient_count(stream)
    k = kept_count(n, density)
    if k >= n:
        return [None] * count
    mag, cand = _scratch(5, (n,), np.float32), _scratch(6, (n,), np.float32)
    hist = _scratch(7, (HIST,), np.int64)
    found = []
    for i in range(count):
        read_slice(stream, i, 0, n, mag)
        _magnitudes(mag, b, mag)
        t, cut = _top_k(mag, k, hist, cand)
        found.append(Trim(float(t), int(cut)))
    return found


@numba.njit(nogil=True, cache=True)
def _soup_files(route, files, mappings, n, step, rows, k, lam, pos, neg, npos, nneg, buf, sample,
                runs, mag, cand, index, hist, out):  # pragma: no cover - compiled
    """θ_0 + λ·TIES(τ) of one float32 tensor of n entries, into `out`: files[0] = the address of
    θ_0's entry 0 in its file's mapping (mappings[0]: its [start, end) and the file's
    descriptor), the others θ_1..θ_N's.
    First each ingredient's trim to its k largest |τ| (k ≥ n: keep every entry), the same as
    `trim_thresholds` (`_trim_mapped`: θ_0 read into `out`, each θ_i in `buf`-sized pieces with
    positioned reads — reads ahead of the pass, which through the mapping would fault in folios
    of every file that stay until the pass gets there); then slice by slice (pos.size entries) the merge
    and θ_0 + λ·τ, `step` entries of every file at a time on the I/O `route`
    (`raysoup.reduce.mapped.fetch`: in place through the mappings, or read into `rows`).
    Returns -1, or the index of the file whose read failed."""
    count = files.size - 1
    keep_at = np.full(count, -np.inf, np.float32)
    cut = np.full(count, n, np.int64)
    if k < n:
        if not read_entries(files[0], 0, mappings[0], out[:n]):
            return 0
        for i in range(count):
            found, keep_at[i], cut[i] = _trim_mapped(files[i + 1], mappings[i + 1], n, k, out,
                                                     buf, sample, runs, mag, cand, index, hist)
            if not found:
                return i + 1
    keep_up = _next_up(keep_at)
    thr = np.empty(count, np.float32)
    at = np.empty(files.size, np.int64)
    chunk = pos.size
    for w in range(0, n, step):
        e = min(n, w + step)
        failed = fetch(route, files, mappings, w, e, rows, at)
        if failed >= 0:
            return failed
        for lo in range(w, e, chunk):
            m = min(chunk, e - lo)
            base = entries(at[0], lo, m)
            _accumulate_trimmed(at[1:], lo, lo, m, base, keep_at, keep_up, cut, thr, pos,
                                neg, npos, nneg)
            _apply_slice(m, pos, neg, npos, nneg, lam, base, out[lo:lo + m])
        release(route, files, mappings, w, e, n)
    return -1


# Entries of θ_i read at a time for its trim: the piece stays in the core's cache between its
# read and its magnitudes.
READ = 1 << 14


def ties_soup(files: np.ndarray, mappings: np.ndarray, n: int, density: float, scale: float,
              out: np.ndarray) -> int:
    """θ_0 + scale·TIES(τ) of one float32 tensor of n entries, into `out` (float32, n entries),
    read from local files' mappings: files[0] = the address of θ_0's entry 0, then θ_1..θ_N's,
    mappings[i] = file i's mapping [start, end) and its descriptor
    (`raysoup.reduce.mapped.addresses`), read on the I/O route `raysoup.reduce.route` picks.
    The same trims, merge and apply as `trim_thresholds`, `ties_merge` and
    `raysoup.reduce.merge.axpy`, in one compiled call. Returns -1, or the index of the file
    whose read failed (the caller reads it through Python for the error)."""
    count = files.size - 1
    if count < 1:
        raise ValueError("TIES needs at least one ingredient besides the base")
    route = io_route(files, mappings, n)
    note_route(route)
    k = kept_count(n, density)
    pos, neg, npos, nneg = _state(count, max(1, min(SLICE, n)))
    buf = _scratch(8, (max(1, min(READ, n)),), np.float32)
    size = n if k < n else 1  # only where some entries go
    # (np.empty: the magnitudes' pages are touched only where a bracket misses)
    mag, cand = _scratch(5, (size,), np.float32), _scratch(6, (size,), np.float32)
    sample = _scratch(9, (SAMPLE,), np.float32)
    runs = sample_runs(n) if n > SAMPLE else np.zeros((0, 2), np.int64)
    return _soup_files(route, files, mappings, n, step(route, files.size),
                       rows(route, files.size), k, np.float32(scale), pos, neg, npos, nneg, buf,
                       sample, runs, mag, cand, _scratch(10, (size,), np.int64),
                       _scratch(7, (HIST,), np.int64), out)


# Bins of the first radix digit of a magnitude's bits (its top 11: the exponent and two
# mantissa bits, a quarter of an octave each): one pass over the tensor fills them while
# computing the magnitudes; the k-th largest is then selected among the entries of one bin.
HIST = 2048
HIST_SHIFT = 21


@numba.njit(nogil=True, cache=True)
def _magnitudes(theta, base, mag):  # pragma: no cover - compiled
    """mag = |θ − θ_0| (float32; may be θ itself)."""
    for j in range(base.size):
        mag[j] = abs(np.float32(theta[j] - base[j]))


@numba.njit(nogil=True, cache=True)
def _gather(mag, hist, lo_bin, hi_bin, cand, c):  # pragma: no cover - compiled
    """Count the magnitudes in `hist` by their top bits and append those whose bin is in
    [lo_bin, hi_bin] to cand[c:], in order; returns the new end of `cand`."""
    bits = mag.view(np.uint32)
    cand_bits = cand.view(np.uint32)
    for j in range(bits.size):  # a select, no branch: every entry is written, some kept
        b = bits[j]
        d = b >> HIST_SHIFT
        hist[d] += 1
        cand_bits[c] = b
        c += (d >= lo_bin) & (d <= hi_bin)
    return c


@numba.njit(nogil=True, cache=True)
def _bin_of(hist, rank):  # pragma: no cover - compiled
    """(the bin of the rank-th smallest magnitude, its rank within the bin)."""
    digit = 0
    for digit in range(HIST):
        if hist[digit] > rank:
            break
        rank -= hist[digit]
    return digit, rank


@numba.njit(nogil=True, cache=True)
def _select(cand, hist, lo_bin, hi_bin, digit, rest, k):  # pragma: no cover - compiled
    """(the k-th largest magnitude t, whether exactly k are ≥ t) from the candidates `cand`
    (every magnitude in bins [lo_bin, hi_bin], which hold the k-th largest's bin `digit`,
    where it has rank `rest`), `hist`: all magnitudes' counts by bin."""
    below = 0
    for d in range(lo_bin, digit):
        below += hist[d]
    t = _kth_smallest(cand, below + rest)
    at_least = 0
    for d in range(hi_bin + 1, HIST):
        at_least += hist[d]
    for j in range(cand.size):
        at_least += cand[j] >= t
    return t, at_least == k


@numba.njit(nogil=True, cache=True)
def _top_k(mag, k, hist, cand):  # pragma: no cover - compiled
    """(the k-th largest magnitude, the cut) of `Trim` for 0 < k < n = mag.size, exactly: the
    magnitudes counted by bin, then the k-th largest's bin gathered into `cand` (n float32s of
    scratch) and selected in it."""
    hist[:] = 0
    _gather(mag, hist, 1, 0, cand, 0)  # an empty range: counts only
    digit, rest = _bin_of(hist, mag.size - k)
    c = _gather(mag, np.zeros(HIST, np.int64), digit, digit, cand, 0)
    t, exact = _select(cand[:c], hist, digit, digit, digit, rest, k)
    if exact or t == 0:  # a k-th largest of 0: kept or not, a zero τ adds nothing to the merge
        return t, mag.size
    need = k - _count_above(mag, t)  # the first `need` entries equal to t, in index order
    for j in range(mag.size):
        need -= mag[j] == t
        if need == 0:
            return t, j + 1
    return t, mag.size


@numba.njit(nogil=True, cache=True)
def _count_above(mag, t):  # pragma: no cover - compiled
    above = 0
    for j in range(mag.size):
        above += mag[j] > t
    return above


# The trim's k-th largest is first bracketed from a sample of SAMPLE magnitudes (BLOCKS
# contiguous runs spread over the tensor, each one small read: a strided sample would read every
# page): one read of the whole τ then counts the entries above the bracket and gathers those in
# it (a few % of them), and the exact k-th largest is selected among those. Where the bracket
# misses (the k-th largest outside it: a tensor whose runs are unlike the rest), the whole τ's
# magnitudes are read again and selected by their top bits (`_top_k`): slower, as exact.
# The sample's two selections run per ingredient per tensor: 2^14 entries keep them small
# beside a tensor's own pass (2^16 cost as much as the pass on the many tensors of ~1M entries).
SAMPLE = 1 << 14
BLOCKS = 8
# Sample ranks either side of the k-th largest's that bound the bracket: ±1.6 % of the sample,
# over five standard errors of a quantile estimated from 2^14 entries.
MARGIN = SAMPLE // 64


def sample_runs(n: int) -> np.ndarray:
    """The [lo, hi) runs (BLOCKS × 2, int64) of a tensor's n > SAMPLE entries whose magnitudes
    bracket its trim."""
    length = SAMPLE // BLOCKS
    starts = [(r * (n - length)) // (BLOCKS - 1) for r in range(BLOCKS)]
    return np.array([(s, s + length) for s in starts], np.int64).reshape(-1, 2)


@intrinsic
def _bits(typingctx, x):
    """The bit pattern of a float32 (non-negative floats order as their bits)."""
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


# Entries per block of `_bracket`: one 512-bit vector of float32s (two 256-bit ones on AVX2).
BLOCK = 16


@intrinsic
def _bracket_block(typingctx, theta, base, hi_t, lo_b, span, cand, at, first):
    """`_bracket` of the BLOCK entries at addresses `theta` and `base` (first: the tensor index
    of the block's entry 0) in vector code: the magnitudes within the bracket are
    compress-stored at `cand` and their indices at `at`, in order (`llvm.masked.compressstore`:
    one instruction on AVX-512, a few per entry elsewhere — never a branch per entry); returns
    the count stored | the count past hi_t << 32."""
    sig = types.int64(theta, base, hi_t, lo_b, span, cand, at, first)

    def codegen(context, builder, signature, args):
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vf, vi, vl = (ir.VectorType(t, BLOCK) for t in (f32, i32, i64))
        vb, mask = ir.VectorType(ir.IntType(1), BLOCK), ir.IntType(BLOCK)

        def arg(i, want):
            return context.cast(builder, args[i], signature.args[i], want)

        def pointer(i, to):
            return builder.inttoptr(arg(i, types.uintp), to.as_pointer())

        def splat(value, vt):
            one = builder.insert_element(ir.Constant(vt, ir.Undefined), value,
                                         ir.Constant(i32, 0))
            return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                                          ir.Constant(ir.VectorType(i32, BLOCK), [0] * BLOCK))

        def function(name, ret, params):
            return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, params),
                                                  name)

        d = builder.fsub(builder.load(pointer(0, vf), align=4),
                         builder.load(pointer(1, vf), align=4))
        x = builder.call(function(f"llvm.fabs.v{BLOCK}f32", vf, [vf]), [d])
        above = builder.fcmp_ordered(">", x, splat(arg(2, types.float32), vf))
        rel = builder.sub(builder.bitcast(x, vi), splat(arg(3, types.uint32), vi))
        inside = builder.icmp_unsigned("<=", rel, splat(arg(4, types.uint32), vi))
        void = ir.VoidType()
        builder.call(function(f"llvm.masked.compressstore.v{BLOCK}f32", void,
                              [vf, f32.as_pointer(), vb]), [x, pointer(5, f32), inside])
        index = builder.add(splat(arg(7, types.int64), vl), ir.Constant(vl, list(range(BLOCK))))
        builder.call(function(f"llvm.masked.compressstore.v{BLOCK}i64", void,
                              [vl, i64.as_pointer(), vb]), [index, pointer(6, i64), inside])
        pop = function(f"llvm.ctpop.i{BLOCK}", mask, [mask])
        stored = builder.zext(builder.call(pop, [builder.bitcast(inside, mask)]), i64)
        past = builder.zext(builder.call(pop, [builder.bitcast(above, mask)]), i64)
        return builder.or_(stored, builder.shl(past, ir.Constant(i64, 32)))

    return sig, codegen


@numba.njit(nogil=True, cache=True)
def _bracket(theta, base, lo, lo_t, hi_t, cand, at, c, above):  # pragma: no cover - compiled
    """Per entry |θ − θ_0| (entries lo, lo + 1, … of the tensor): counted in `above` past hi_t,
    appended to cand[c:] within [lo_t, hi_t], its index to at[c:]; returns (c, above).
    The bracket test is one unsigned compare of the bits (NaN's bits lie past hi_t's, outside
    it, as the float compare has it). BLOCK entries at a time in vector code
    (`_bracket_block`): as a loop with a branch per entry it stayed scalar, ~5× slower; as
    two float compares, the first (≥ lo_t, true for ~a fifth of the entries) was a branch of
    its own, mispredicted at random."""
    lo_b = _bits(np.float32(lo_t))
    span = np.uint32(_bits(np.float32(hi_t)) - lo_b)
    hi = np.float32(hi_t)
    n = base.size
    theta_at, base_at = theta.ctypes.data, base.ctypes.data
    cand_at, index_at = cand.ctypes.data, at.ctypes.data
    whole = n - n % BLOCK
    for j in range(0, whole, BLOCK):
        got = _bracket_block(theta_at + 4 * j, base_at + 4 * j, hi, lo_b, span,
                             cand_at + 4 * c, index_at + 8 * c, lo + j)
        c += got & 0xFFFFFFFF
        above += got >> 32
    for j in range(whole, n):  # the tail
        x = abs(np.float32(theta[j] - base[j]))
        above += x > hi
        if np.uint32(_bits(x) - lo_b) <= span:
            cand[c] = x
            at[c] = lo + j
            c += 1
    return c, above


@numba.njit(nogil=True, cache=True)
def _trim_whole(address, mapping, n, k, base, mag, cand, hist):  # pragma: no cover - compiled
    """`_trim_mapped` from the whole tensor's magnitudes (`_top_k`)."""
    if not read_entries(address, 0, mapping, mag[:n]):
        return False, np.float32(0), n
    _magnitudes(mag[:n], base[:n], mag[:n])
    t, cut = _top_k(mag[:n], k, hist, cand[:n])
    return True, t, cut


@numba.njit(nogil=True, cache=True)
def _trim_mapped(address, mapping, n, k, base, buf, sample, runs, mag, cand, index,
                 hist):  # pragma: no cover - compiled
    """(read, the k-th largest |τ|, the cut) of `Trim` for the tensor at `address` of a file's
    mapping (positioned reads, `buf` at a time; `base`: θ_0's n entries), exactly as
    `_top_k` gives them: bracketed from the `runs`' sample (see SAMPLE), selected among the
    entries in the bracket (`index`: their indices, for the cut where magnitudes tie at the
    k-th largest). `read` False: a read failed."""
    fail = (False, np.float32(0), n)
    if n <= sample.size or runs.shape[0] == 0:  # small: the whole tensor at once
        return _trim_whole(address, mapping, n, k, base, mag, cand, hist)
    m = 0
    for r in range(runs.shape[0]):
        lo, hi = runs[r, 0], runs[r, 1]
        if not read_entries(address, lo, mapping, sample[m:m + hi - lo]):
            return fail
        _magnitudes(sample[m:m + hi - lo], base[lo:hi], sample[m:m + hi - lo])
        m += hi - lo
    rank = m - (k * m + n - 1) // n  # the sample's rank of the k-th largest (smallest first)
    lo_t = _kth_smallest(sample[:m], max(rank - MARGIN, 0))
    hi_t = _kth_smallest(sample[:m], min(rank + MARGIN, m - 1))
    if not lo_t <= hi_t:  # NaN at the sample's bracket: no entry compares inside it
        return _trim_whole(address, mapping, n, k, base, mag, cand, hist)
    c, above = 0, 0
    for lo in range(0, n, buf.size):
        e = min(n, lo + buf.size)
        if not read_entries(address, lo, mapping, buf[:e - lo]):
            return fail
        c, above = _bracket(buf[:e - lo], base[lo:e], lo, lo_t, hi_t, cand, index, c, above)
    need = k - above  # the k-th largest is the need-th largest in the bracket
    if not 0 < need <= c:  # missed: select from the whole tensor's magnitudes
        return _trim_whole(address, mapping, n, k, base, mag, cand, hist)
    if hi_t == 0:  # every entry in the bracket is 0 (a τ mostly zero: the base itself, frozen
        return True, np.float32(0), n  # parameters): see `_top_k` for the cut
    t = _kth_smallest(cand[:c], c - need)
    at_least = above
    for j in range(c):
        at_least += cand[j] >= t
    if at_least == k or t == 0:
        return True, t, n
    need = k - above  # the first `need` entries equal to t, in index order: k less those above t
    for j in range(c):
        need -= cand[j] > t
    for j in range(c):  # the bracket holds every entry equal to t, in index order
        need -= cand[j] == t
        if need == 0:
            return True, t, index[j] + 1
    return True, t, n


@numba.njit(nogil=True, cache=True)
def _kth_smallest(magnitude, k):  # pragma: no cover - compiled
    """The k-th smallest (0-based) of non-negative float32s, exactly: a radix select on their
    bits (non-negative floats order as their bit patterns), three passes of 11, 11 and 10 bits
    whose 2048-bin histograms stay in L1 — 16-bit digits would zero and scan 65536 bins per
    pass, which dominates on a small tensor."""
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
