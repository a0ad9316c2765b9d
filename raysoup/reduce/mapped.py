"""Compiled passes over local float32 tensors of their files, on either of two I/O routes.

A merge over N ingredients reads N files once each. Copying them into memory (`pread`, the
READ route: into reused rows in the core's cache) costs the copy; reading the page cache in
place through a mapping (MAPPING) costs page-table work instead, which is cheaper only where
a fault maps many pages (large page-cache folios) — `raysoup.reduce.route` measures which is
cheaper where it runs. MAPPING takes each file a window at a time: the window's page tables
are filled in one call (MADV_POPULATE_READ; where a fault maps one 4 KiB page and costs
microseconds, faulting page by page would cost more than the copy) and released after it
(MADV_DONTNEED: the page cache keeps the pages, the process drops them). Resident at once: the
windows of all files (within MAPPED_BYTES, at least a SLICE each) plus, per file, up to a
page-cache folio either side of its window (a fault maps the whole folio, up to 2 MiB) — a
few MiB per ingredient, never N tensors; READ holds its rows (READ_BYTES).

`addresses` hands the compiled code each file's address of the tensor (`_TensorFile.mapped`,
which first checks that the file is still the size it was opened at: a mapped page past the
end would kill the process with SIGBUS instead of naming the file; READ reads at the same
offsets of the file). `sum_files` is the uniform soup's pass (used by
`shard_reduce.reduce_shard`); TIES' is in `ties_kernel.py`; both read through `fetch`.
"""

from __future__ import annotations

import mmap
import threading
from collections import Counter

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

PAGE = mmap.PAGESIZE
MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux >= 5.14
# A fault on a file's mapping maps a run of page-cache pages around the address (a large
# folio, up to MARGIN), not only the pages asked for: a tensor's pages are released
# with this margin before its start and after its end, within the file's mapping — released
# at the tensor's own bounds, a run of small tensors would keep the folios between them
# resident, most of a transformer block.
MARGIN = 2 << 20
# What the windows of all the files of one pass may hold resident: N files get a window of
# MAPPED_BYTES / N each (at least one SLICE).
MAPPED_BYTES = 16 << 20
# Entries per slice of a pass: a merge's per-entry state stays in the core's L1 cache; a
# larger slice spills it to L2 and slows every ingredient's pass over the slice.
SLICE = 1024


@intrinsic
def _f32_at(typingctx, address):
    """The float32 pointer at an integer address (a mapping's or an array's memory)."""
    sig = types.CPointer(types.float32)(address)

    def codegen(context, builder, signature, args):
        a = context.cast(builder, args[0], signature.args[0], types.uintp)
        return builder.inttoptr(a, context.get_value_type(signature.return_type))

    return sig, codegen


@intrinsic
def _madvise(typingctx, address, nbytes, advice):
    """libc's madvise((void *) address, nbytes, advice) from compiled code: an external symbol
    the JIT resolves in the process (unlike a ctypes pointer, which numba cannot cache)."""
    sig = types.int32(address, nbytes, advice)

    def codegen(context, builder, signature, args):
        ptr = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), [ptr, ir.IntType(64),
                                                             ir.IntType(32)]), "madvise")
        a, n, advice_ = (context.cast(builder, v, t, want) for v, t, want in
                         zip(args, signature.args, (types.uintp, types.int64, types.int32)))
        return builder.call(fn, [builder.inttoptr(a, ptr), n, advice_])

    return sig, codegen


@intrinsic
def _pread(typingctx, fd, address, nbytes, offset):
    """libc's pread(fd, (void *) address, nbytes, offset) from compiled code (see `_madvise`)."""
    sig = types.int64(fd, address, nbytes, offset)

    def codegen(context, builder, signature, args):
        i64, ptr = ir.IntType(64), ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [ir.IntType(32), ptr, i64, i64]), "pread")
        fd_, address_, n_, offset_ = (
            context.cast(builder, v, t, want) for v, t, want in
            zip(args, signature.args, (types.int32, types.uintp, types.int64, types.int64)))
        return builder.call(fn, [fd_, builder.inttoptr(address_, ptr), n_, offset_])

    return sig, codegen


@numba.njit(nogil=True, cache=True)
def read_entries(address, lo, mapping, out):  # pragma: no cover - compiled
    """out = entries [lo, lo + out.size) of the tensor at `address`, copied with a positioned
    read of its file (mapping[2]: the descriptor) rather than through the mapping: for small
    reads ahead of a pass (a sample), whose faults would map whole folios of every file that
    stay until the pass gets there. True, or False when the read fails or the file ends early
    (the caller names the file)."""
    target = out.ctypes.data
    nbytes = out.size * 4
    offset = address + 4 * lo - mapping[0]
    done = 0
    while done < nbytes:
        got = _pread(mapping[2], target + done, nbytes - done, offset + done)
        if got <= 0:
            return False
        done += got
    return True


@numba.njit(nogil=True, cache=True)
def entries(address, lo, m):  # pragma: no cover - compiled
    """Entries [lo, lo + m) of the float32 array at `address`."""
    return numba.carray(_f32_at(address + 4 * lo), m)


@numba.njit(nogil=True, cache=True)
def _advise(begin, end, mapping, advice):  # pragma: no cover - compiled
    """madvise the pages that hold [begin, end) of a file's mapping ([mapping[0], mapping[1])),
    never past the mapping. The result is ignored: a kernel without MADV_POPULATE_READ faults
    the pages in as they are read."""
    lo = max(begin // PAGE * PAGE, mapping[0])
    hi = min((end + PAGE - 1) // PAGE * PAGE, mapping[1])
    if hi > lo:
        _madvise(lo, hi - lo, advice)


@numba.njit(nogil=True, cache=True)
def map_window(files, mappings, lo, hi):  # pragma: no cover - compiled
    """Fill the page tables of entries [lo, hi) of every file's tensor."""
    for f in range(files.size):
        _advise(files[f] + 4 * lo, files[f] + 4 * hi, mappings[f], MADV_POPULATE_READ)


@numba.njit(nogil=True, cache=True)
def unmap_window(files, mappings, lo, hi, n):  # pragma: no cover - compiled
    """Release entries [lo, hi) of every file's tensor of n entries from this process; the first
    and the last window also what faults mapped before and after the tensor."""
    before = MARGIN if lo == 0 else 0
    after = MARGIN if hi == n else 0
    for f in range(files.size):
        _advise(files[f] + 4 * lo - before, files[f] + 4 * hi + after, mappings[f],
                MADV_DONTNEED)


def window(count: int) -> int:
    """Entries per window of a pass over `count` files (a multiple of SLICE)."""
    return max(SLICE, MAPPED_BYTES // (4 * count) // SLICE * SLICE)


# Tensors per I/O route taken in this process, counted where the route is decided (once per
# tensor, never per slice), so a benchmark can say which route its figures measured (`routes`).
_ROUTES: Counter[str] = Counter()


def routes() -> dict[str, int]:
    """Tensors this process handed to compiled passes, by the I/O route they took ("mapping":
    read in place through the files' mappings; "pread": positioned reads into reused rows — see
    `raysoup.reduce.route`), and those it left to reads through Python ("read": pread on local
    files, ranged requests on remote ones), since it started."""
    return dict(_ROUTES)


def note_route(route: int) -> None:
    """Count one tensor handed to a compiled pass on `route` (see `routes`)."""
    _ROUTES["mapping" if route == MAPPING else "pread"] += 1


def addresses(handles, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(address of entry 0 of tensor `name` in each handle's file mapping, each mapping's
    [start, end) and the file's descriptor) for compiled passes; None where a file is remote
    or holds it in another dtype than float32 (read those through Python)."""
    found = [h.mapped(name) for h in handles]
    if any(at is None for at in found):
        _ROUTES["read"] += 1
        return None
    at = np.array([(*where, h.fd) for where, h in zip(found, handles)], np.int64).reshape(-1, 4)
    return at[:, 0].copy(), at[:, 1:].copy()


# The I/O routes of a compiled pass (numba takes them as ints): MAPPING reads each file's
# entries in place through its mapping (`map_window`: no copy, page-table work instead), READ
# copies them with positioned reads into reused rows (the copy the raw read pays, no page-table
# work). Which is cheaper depends on the machine and the page cache (`raysoup.reduce.route`);
# the arithmetic after them is the same code on the same float32 values: the same bits.
MAPPING, READ = 0, 1
# What the READ route's rows of all the files of one pass hold: within a core's L2 cache, so a
# pass over them reads cache, not memory (a larger piece spills; a smaller one costs a system
# call per few KiB).
READ_BYTES = 1 << 20


def read_window(count: int) -> int:
    """Entries per piece of the READ route over `count` files (a multiple of SLICE)."""
    return max(SLICE, READ_BYTES // (4 * count) // SLICE * SLICE)


def step(route: int, count: int) -> int:
    """Entries of every file a pass over `count` files takes at a time on `route`."""
    return window(count) if route == MAPPING else read_window(count)


_local = threading.local()


def rows(route: int, count: int) -> np.ndarray:
    """This thread's reused rows for a READ pass over `count` files (count × its piece; an
    empty array for MAPPING, which reads in place): fresh memory per tensor would be a page
    fault per 4 KiB, a cost the route is there to avoid. (READ_BYTES: below the size numpy
    asks huge pages for.)"""
    if route != READ:
        return np.empty((count, 0), np.float32)
    piece = read_window(count)
    held = getattr(_local, "rows", None)
    if held is None or held.size < count * piece:
        held = _local.rows = np.empty(count * piece, np.float32)
    return held[:count * piece].reshape(count, piece)


@numba.njit(nogil=True, cache=True)
def fetch(route, files, mappings, w, e, rows, at):  # pragma: no cover - compiled
    """Make entries [w, e) of every file's tensor readable: at[f] + 4·j is the address of entry
    j of file f's (j in [w, e)): its mapping (MAPPING), or rows[f] (READ: a positioned read of
    them; rows: count × at least e − w float32s). Returns -1, or the index of the file whose
    read failed."""
    if route == MAPPING:
        map_window(files, mappings, w, e)
        for f in range(files.size):
            at[f] = files[f]
        return -1
    for f in range(files.size):
        row = rows[f, :e - w]
        if not read_entries(files[f], w, mappings[f], row):
            return f
        at[f] = row.ctypes.data - 4 * w
    return -1


@numba.njit(nogil=True, cache=True)
def release(route, files, mappings, w, e, n):  # pragma: no cover - compiled
    """Undo `fetch` for entries [w, e) of tensors of n entries (MAPPING: release the pages)."""
    if route == MAPPING:
        unmap_window(files, mappings, w, e, n)


@numba.njit(nogil=True, cache=True)
def sum_files(route, files, mappings, n, step, scale, out, rows):  # pragma: no cover - compiled
    """out = scale · (θ_0 + θ_1 + ... + θ_{k-1}) of one float32 tensor of n entries, files[i] =
    θ_i's address in its file's mapping, read on `route` `step` entries at a time (`fetch`;
    rows: READ's reused rows): each add rounded in that order, then one float32
    multiply — the bits of torch's in-place adds and numpy's multiply (`shard_reduce.add_into` +
    `scaled`). Ingredients four at a time with the sum in registers; the slice of `out` stays
    in L1 between them. Returns -1, or the index of the file whose read failed."""
    k = files.size
    at = np.empty(k, np.int64)
    for w in range(0, n, step):
        e = min(n, w + step)
        failed = fetch(route, files, mappings, w, e, rows, at)
        if failed >= 0:
            return failed
        for lo in range(w, e, SLICE):
            m = min(SLICE, e - lo)
            acc = out[lo:lo + m]
            i = 0
            while i < k:
                if k - i >= 4:
                    a, b = entries(at[i], lo, m), entries(at[i + 1], lo, m)
                    c, d = entries(at[i + 2], lo, m), entries(at[i + 3], lo, m)
                    if i == 0:
                        for j in range(m):
                            acc[j] = ((a[j] + b[j]) + c[j]) + d[j]
                    else:
                        for j in range(m):
                            acc[j] = (((acc[j] + a[j]) + b[j]) + c[j]) + d[j]
                    i += 4
                else:
                    a = entries(at[i], lo, m)
                    if i == 0:
                        for j in range(m):
                            acc[j] = a[j]
                    else:
                        for j in range(m):
                            acc[j] = acc[j] + a[j]
                    i += 1
            for j in range(m):
                acc[j] = acc[j] * scale
        release(route, files, mappings, w, e, n)
    return -1
