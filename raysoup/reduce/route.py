"""Which I/O route the compiled passes take on this machine (`raysoup.reduce.mapped`).

Reading a file's page cache in place (MAPPING) skips the copy a positioned read (READ) makes,
but pays page-table work: filling the window's page tables, then releasing them. Where the page
cache holds a file in large folios that a fault maps whole (up to 2 MiB at once), that work is
small and the mapping wins; where it holds 4 KiB pages (older kernels, file systems without
large folios, a file read back a page at a time) every page costs a page-table entry in and
out, and the mapping costs several times the copy. So the route is measured, not assumed: on
the first tensor of at least PROBE_BYTES a process reduces from a file system, one piece of it is
read both ways (each with the same integer sum over its entries, the better of three tries, in
CPU time of this thread, so other processes do not skew it), and the cheaper route is kept for
that file system for the rest of the process — a few ms once per worker. Smaller tensors before
then take READ, which is never much slower than the raw read of the same bytes.

Reads through Python of local files (weighted soups, task-vector merges without a compiled
pass) follow the measured route too (`maps_views`: a view of the mapping, or a copy into a
reused buffer). `RAYSOUP_IO_ROUTE` = `mapping` or `read` forces a route (the benchmark measures
each); `auto` (or unset) measures. Every route gives the same bits.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import numba
import numpy as np

from raysoup.reduce.mapped import (
    MADV_DONTNEED,
    MADV_POPULATE_READ,
    MAPPING,
    READ,
    _advise,
    entries,
    read_entries,
    read_window,
)

ENV = "RAYSOUP_IO_ROUTE"
NAMES = {"mapping": MAPPING, "read": READ}
# The piece each route is timed on: several large folios, so that mapping them whole (or not)
# shows, and a fraction of a ms of copying.
PROBE_BYTES = 8 << 20
TRIES = 3


class Calibration(NamedTuple):
    """The route chosen for one file system and what each cost, ns per MiB read."""

    route: str
    mapping_ns_per_mib: float
    read_ns_per_mib: float


# Per file system (st_dev) this process has measured: the page cache's folios depend on the
# file system and the kernel, not on the file.
_CHOSEN: dict[int, Calibration] = {}


def calibrations() -> dict[int, Calibration]:
    """The measurements this process made, by file system."""
    return dict(_CHOSEN)


def io_route(files: np.ndarray, mappings: np.ndarray, n: int) -> int:
    """The route for a compiled pass over one float32 tensor of n entries in each file
    (`raysoup.reduce.mapped.addresses`): forced by RAYSOUP_IO_ROUTE, else this file system's
    measured one (measured now on file 0 where the tensor is large enough), else READ."""
    want = _forced()
    if want is not None:
        return want
    device = os.fstat(int(mappings[0, 2])).st_dev
    known = _CHOSEN.get(device)
    if known is None and 4 * n >= PROBE_BYTES:
        known = _CHOSEN[device] = calibrate(int(files[0]), mappings[0], PROBE_BYTES // 4,
                                            files.size)
    return NAMES[known.route] if known is not None else READ


def maps_views(fd: int) -> bool:
    """Whether a read through Python of a local file (the file descriptor `fd`) should view its
    mapping rather than copy it (`raysoup.checkpoints.tensorfile.Scratch`): forced by
    RAYSOUP_IO_ROUTE, else as measured for its file system, else a copy."""
    want = _forced()
    if want is not None:
        return want == MAPPING
    known = _CHOSEN.get(os.fstat(fd).st_dev)
    return known is not None and known.route == "mapping"


def _forced() -> int | None:
    want = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if want in NAMES:
        return NAMES[want]
    if want != "auto":
        raise ValueError(f"{ENV}={want!r}: expected auto, mapping or read")
    return None


def calibrate(address: int, mapping: np.ndarray, m: int, count: int) -> Calibration:
    """Time entries [0, m) of the float32 tensor at `address` (a file's mapping, `mapping`:
    its [start, end) and descriptor) read both ways, READ in the pieces of a pass over `count`
    files; the cheaper route."""
    rows = np.empty(read_window(count), np.float32)
    _read_piece(address, mapping, m, rows)  # in the page cache first, and compiled
    _map_piece(address, mapping, m)
    best = {MAPPING: np.inf, READ: np.inf}
    for _ in range(TRIES):
        for route in (MAPPING, READ):
            start = time.thread_time_ns()
            _map_piece(address, mapping, m) if route == MAPPING else \
                _read_piece(address, mapping, m, rows)
            best[route] = min(best[route], time.thread_time_ns() - start)
    mib = 4 * m / 2**20
    return Calibration("mapping" if best[MAPPING] < best[READ] else "read",
                       best[MAPPING] / mib, best[READ] / mib)


@numba.njit(nogil=True, cache=True)
def _sum_bits(a):  # pragma: no cover - compiled
    """An integer sum of the entries' bits: reads every entry, vectorised, cheap."""
    total = np.uint32(0)
    bits = a.view(np.uint32)
    for j in range(bits.size):
        total += bits[j]
    return total


@numba.njit(nogil=True, cache=True)
def _map_piece(address, mapping, m):  # pragma: no cover - compiled
    """MAPPING over entries [0, m): page tables filled, entries read, pages released."""
    _advise(address, address + 4 * m, mapping, MADV_POPULATE_READ)
    total = _sum_bits(entries(address, 0, m))
    _advise(address, address + 4 * m, mapping, MADV_DONTNEED)
    return total


@numba.njit(nogil=True, cache=True)
def _read_piece(address, mapping, m, rows):  # pragma: no cover - compiled
    """READ over entries [0, m): positioned reads into `rows`, entries read there."""
    total = np.uint32(0)
    for lo in range(0, m, rows.size):
        e = min(m, lo + rows.size)
        if not read_entries(address, lo, mapping, rows[:e - lo]):
            return total
        total += _sum_bits(rows[:e - lo])
    return total
