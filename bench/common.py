"""Shared helpers: timing, page-cache warming, ratios that survive a zero denominator."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 24


def warm(files: list[Path]) -> None:
    """Read every file once so each contender starts from the same (warm) page cache."""
    buf = bytearray(_CHUNK)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.inf


def best_of(repeats: int, fn: Callable[[], dict], key: str = "seconds") -> dict:
    """Run fn `repeats` times; keep the fastest run, and the largest peak RSS seen in any run
    (the conservative choice for memory)."""
    runs = [fn() for _ in range(max(1, repeats))]
    best = dict(min(runs, key=lambda r: r[key]))
    if "peak_rss" in best:
        best["peak_rss_delta"] = max(r["peak_rss"] - r["rss_after_imports"] for r in runs)
    best["runs"] = [round(r[key], 4) for r in runs]
    return best


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
