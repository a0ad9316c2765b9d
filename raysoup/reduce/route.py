"""Which I/O route the compiled passes take on this machine (`raysoup.reduce.mapped`).

Reading a file's page cache in place (MAPPING) skips the copy a positioned read (READ) makes,
but pays page-table work: filling the window's page tables, then releasing them. Where the page
cache holds a file in large folios that a fault maps whole (up to 2 MiB at once), that work is
small and the mapping wins; where it holds 4 KiB pages (older kernels, file systems without
large folios, a file read back a page at a time) every page costs a page-table entry in and
out, and the mapping costs several times the copy. So the route is measured, not assumed: the
first time a process reduces from a file system a file of at least twice PROBE_BYTES, pieces of
it are read both ways (each with the same integer sum over its entries, the better of three
tries, in CPU time of this thread, so other processes do not skew it), and the cheaper route is
kept for that file system for the rest of the process — a few ms once per worker. Smaller files
before then take READ, which is never much slower than the raw read of the same bytes.

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
    PAGE,
    READ,
    _advise,
    entries,
    read_entries,
    read_window,
)

ENV = "RAYSOUP_IO_ROUTE"
NAMES = {"mapping": MAPPING, "read": READ}
# What each route is timed on: PIECES pieces of a file of at least twice that, each of
# several large folios, so that mapping them whole (or not) shows; a few ms in all.
PROBE_BYTES = 8 << 20
PIECES = 4
TRIES = 3


class Calibration(NamedTuple):
    """The route chosen for one file system and what each cost, ns per MiB read."""

    route: str
    mapping_ns_per_mib: float
    read_ns_per_mib: float


# Per file system (st_dev) this process has measured: the page cache's folios depend mostly on
# the file system and the kernel (also on how a file came into the cache: written, read ahead,
# read a page at a time); measured once, as a file's reads cost more than its measurement.
_CHOSEN: dict[int, Calibration] = {}


def calibrations() -> dict[int, Calibration]:
    """The measurements this process made, by file system."""
    return dict(_CHOSEN)


def io_route(files: np.ndarray, mappings: np.ndarray, n: int) -> int:
    """The route for a compiled pass over one float32 tensor of n entries in each file
    (`raysoup.reduce.mapped.addresses`): forced by RAYSOUP_IO_ROUTE, else this file system's
    measured one (measured now on file 0 where it is large enough), else READ."""
    want = _forced()
    if want is not None:
        return want
    device = os.fstat(int(mappings[0, 2])).st_dev
    known = _CHOSEN.get(device)
    if known is None and mappings[0, 1] - mappings[0, 0] >= 2 * PROBE_BYTES:
        known = _CHOSEN[device] = calibrate(mappings[0], files.size)
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


def calibrate(mapping: np.ndarray, count: int) -> Calibration:
    """Time PIECES pieces of a file (`mapping`: its mapping's [start, end) and descriptor),
    spread over its middle, read both ways — READ in the pieces of a pass over `count` files;
    the cheaper route. Spread, because how the page cache holds a file varies along it (its
    first MiB, read while readahead ramps up, sit in smaller folios than the rest)."""
    rows = np.empty(read_window(count), np.float32)
    start, end = int(mapping[0]), int(mapping[1])
    m = PROBE_BYTES // PIECES // 4
    span = (end - start) // 2 - 4 * m  # the pieces lie in the middle half of the file
    at = [start + (end - start) // 4 + (span * i // max(1, PIECES - 1)) // PAGE * PAGE
          for i in range(PIECES)]
    for a in at:  # in the page cache first, and compiled
        _read_piece(a, mapping, m, rows)
        _map_piece(a, mapping, m)
    best = {MAPPING: np.inf, READ: np.inf}
    for _ in range(TRIES):
        for route in (MAPPING, READ):
            begin = time.thread_time_ns()
            for a in at:
                _map_piece(a, mapping, m) if route == MAPPING else \
                    _read_piece(a, mapping, m, rows)
            best[route] = min(best[route], time.thread_time_ns() - begin)
    mib = PROBE_BYTES / 2**20
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
