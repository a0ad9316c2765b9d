"""Run one contender in a fresh interpreter and measure it honestly.

`python -m bench.probe '<json>'` imports what every contender needs, records RSS after
imports, runs the named contender once (timed with perf_counter, excluding interpreter start
and imports) and prints one JSON line: seconds, cpu_seconds (process_time), rss_after_imports, peak_rss (VmHWM: every
touched page counts, including mmapped file pages), numba_init_s (see `_init_numba`) and
whatever the contender returns.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# Imported by every contender before the baseline is taken, so imports cost all the same.
import numpy as np  # noqa: F401
import safetensors.torch  # noqa: F401
import torch

import raysoup.reduce
import raysoup.soup.ties  # noqa: F401
from bench import contenders
from bench.common import child_command, child_env
from raysoup.reduce.route import ENV


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _init_numba() -> float:
    """Numba's own start-up, done for every contender before the baseline like the imports
    above: its first compiled call in a process loads the typing and lowering registries, which
    import more modules (its numpy support, scipy's BLAS): ~0.3 s, once per process — a Ray
    worker pays it once, not per soup. Loading a cached compiled function afterwards takes
    milliseconds, and stays in the timing. Returns the seconds it took (reported, not timed)."""
    from numba.core.registry import cpu_target

    start = time.perf_counter()
    cpu_target.typing_context.refresh()
    cpu_target.target_context.refresh()
    return time.perf_counter() - start


def compiled_paths() -> dict:
    """Per compiled pass of the reduction: whether it ran in this process, and whether numba
    compiled it here (a cache miss: the compile time is inside the timer) or loaded it from
    its cache."""
    from raysoup.reduce import mapped, merge, ties_kernel

    # The entry points called from Python (what they call is compiled into them): the mapped
    # passes, and the Python route's slice merge, trim select and apply.
    passes = {"uniform_files": mapped.sum_files, "ties_files": ties_kernel._soup_files,
              "ties_slices": ties_kernel._merge_slice, "ties_trims": ties_kernel._top_k,
              "axpy": merge._axpy}
    return {name: {"ran": bool(d.signatures),
                   "compiled_in_timer": sum(d.stats.cache_misses.values()) > 0}
            for name, d in passes.items()}


def _compile_seconds(recorded) -> float:
    """Seconds numba spent compiling (outermost compile events only: nested ones are inside)."""
    total, depth, start = 0.0, 0, 0.0
    for at, ev in recorded.buffer:
        if ev.is_start:
            depth += 1
            start = at if depth == 1 else start
        elif ev.is_end:
            depth -= 1
            total += at - start if depth == 0 else 0.0
    return total


def main(spec: dict) -> dict:
    torch.set_num_threads(spec.get("threads", 1))
    torch.set_flush_denormal(True)
    fn = getattr(contenders, spec["contender"])
    numba_init = _init_numba()
    rss0 = _status_kib("VmRSS") * 1024
    from numba.core import event

    from raysoup.reduce.mapped import routes
    from raysoup.reduce.route import calibrations

    with event.install_recorder("numba:compile") as compiles:
        start, cpu_start = time.perf_counter(), time.process_time()
        extra = fn(**spec.get("args", {})) or {}
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    # CPU time (user + sys of the process) beside the wall time: on a busy machine the wall
    # time measures the machine's load, the CPU time still the contender's own work
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "rss_after_imports": rss0,
            "peak_rss": _status_kib("VmHWM") * 1024, "numba_init_s": numba_init,
            # what ran: the I/O route per tensor, the compiled passes, compile time timed
            "routes": routes(), "compiled": compiled_paths(),
            # auto: what each route cost where it was measured, and the one chosen
            "io_calibration": {str(dev): c._asdict() for dev, c in calibrations().items()},
            "compile_in_timer_s": _compile_seconds(compiles), **extra}


def run_probe(contender: str, args: dict, threads: int = 1, timeout: float = 1800,
              route: str = "auto") -> dict:
    """Run `contender` in a fresh interpreter, its compiled passes on I/O `route` (auto: the
    one `raysoup.reduce.route` measures cheaper there); returns its JSON result."""
    spec = json.dumps({"contender": contender, "args": args, "threads": threads})
    proc = subprocess.run(child_command("bench.probe", spec), check=False, capture_output=True,
                          text=True, timeout=timeout, env=child_env({ENV: route}))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"probe {contender} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
