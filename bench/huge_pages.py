"""One model's float32 output in fresh memory, made and written once, in 4 KiB or 2 MiB pages.

`python -m bench.huge_pages MODE FILE` makes the float32 tensors of the safetensors FILE's
shapes and fills them, and prints one JSON line: wall and CPU time (user, system), minor page
faults, the huge pages it got and the kernel's compaction and huge-page fault counters
(/proc/vmstat, machine-wide) over the run. MODE: `torch` (torch's allocator: 4 KiB pages, or
2 MiB ones under THP_MEM_ALLOC_ENABLE=1), `numpy` (which asks for huge pages on arrays of
4 MiB and more) or `huge_mapping` (one 2 MiB-aligned private anonymous mapping advised
MADV_HUGEPAGE). Not part of `python -m bench` (docs/benchmarks.md, B1).
"""

from __future__ import annotations

import json
import math
import mmap
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from raysoup.checkpoints.tensorfile import open_tensors

HUGE = 2 << 20
_VMSTAT = ("compact_stall", "compact_fail", "thp_fault_alloc", "thp_fault_fallback")


def _vmstat() -> dict[str, int]:
    pairs = (line.split() for line in Path("/proc/vmstat").read_text().splitlines())
    return {k: int(v) for k, v in pairs if k in _VMSTAT}


def _anon_huge_mib() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) >> 10
    return 0


def make(mode: str, shapes: list[tuple[int, ...]]) -> list:
    if mode == "torch":
        return [torch.empty(s, dtype=torch.float32).fill_(0.5) for s in shapes]
    if mode == "numpy":
        return [np.full(s, 0.5, np.float32) for s in shapes]
    if mode != "huge_mapping":
        raise SystemExit(f"unknown mode {mode!r}: torch, numpy or huge_mapping")
    sizes = [4 * math.prod(s) for s in shapes]
    total = sum(n + -n % 64 for n in sizes)
    m = mmap.mmap(-1, total + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    memory = np.frombuffer(m, np.uint8)
    at = -memory.ctypes.data % HUGE
    m.madvise(mmap.MADV_HUGEPAGE, at, total)
    kept = [m]
    for s, n in zip(shapes, sizes, strict=True):
        kept.append(memory[at:at + n].view(np.float32).reshape(s))
        kept[-1].fill(0.5)
        at += n + -n % 64
    return kept


def main(mode: str, file: str) -> dict:
    with open_tensors(Path(file)) as h:
        shapes = [e.shape for e in h.entries.values() if e.dtype == torch.float32]
    before, ru0, t0 = _vmstat(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    kept = make(mode, shapes)
    wall, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"mode": mode, "tensors": len(kept), "wall_s": round(wall, 3),
            "user_s": round(ru1.ru_utime - ru0.ru_utime, 3),
            "system_s": round(ru1.ru_stime - ru0.ru_stime, 3),
            "minor_faults": ru1.ru_minflt - ru0.ru_minflt, "anon_huge_mib": _anon_huge_mib(),
            "vmstat": {k: v - before[k] for k, v in _vmstat().items()}}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:3])))
