"""Shared helpers: timing, page-cache warming, ratios that survive a zero denominator, and
child interpreters that import this harness."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 24

# The checkout this harness runs from: bench/ is not installed, so the repository root is what
# makes `import bench` work, and where the example configs (experiments/) are.
REPO = Path(__file__).resolve().parents[1]


def child_command(module: str, *args: str) -> list[str]:
    """`python -m <module> args` in this interpreter; run it with `child_env()`."""
    return [sys.executable, "-m", module, *args]


def child_env(extra: dict | None = None) -> dict:
    """This process's environment with the repository root first on PYTHONPATH, so a child
    imports `bench` (and the same raysoup) wherever it is started from."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else ""),
            **(extra or {})}


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
    if all("cpu_seconds" in r for r in runs):
        best["cpu_best"] = min(r["cpu_seconds"] for r in runs)  # the least CPU any run used
    return best


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
