"""CPU seconds spent by this driver's process tree: the driver and, on a local Ray cluster it
started, the GCS, the raylet and every Ray worker (trials, eval actors, reduction tasks) and
their children (data-loader workers).

Wall time says little on a shared or slower machine; CPU seconds per stage carry over: on an
idle machine with C cores a stage that keeps them busy takes about CPU / C seconds, and a core
k times slower multiplies both. `resource.getrusage(RUSAGE_CHILDREN)` is not enough: Ray's
workers are the raylet's children, not the driver's, and the raylet does not leave their times
to its own children totals when they exit. So `TreeCpu` samples /proc: every `interval` seconds
(and whenever asked) it reads each process of the tree's own user + system time and keeps the
last value seen per process; the total is their sum. What it misses: processes that live less
than one interval, and the last interval of each process that exits (a Ray worker lives for a
stage or the whole run). Processes outside the tree (a cluster joined with `--address`) are not
counted. Off Linux it counts the driver and its reaped children only.
"""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: str) -> tuple[int, str, int] | None:
    """(parent pid, start time, own utime + stime in clock ticks) of one process."""
    try:
        text = (PROC / pid / "stat").read_text()
    except OSError:  # exited meanwhile, or not ours to read
        return None
    # The command name (field 2) may hold spaces and parentheses: fields follow the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[19], int(fields[11]) + int(fields[12])


def _tree(root: int) -> dict[tuple[int, str], int]:
    """(pid, start time) → own CPU ticks of `root` and its live descendants."""
    stats = {int(p.name): s for p in PROC.iterdir() if p.name.isdigit()
             if (s := _stat(p.name)) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[(pid, stats[pid][1])] = stats[pid][2]
        todo.extend(children.get(pid, ()))
    return out


class TreeCpu:
    """A running total of the CPU seconds of process `root`'s tree (default: this process),
    sampled in a daemon thread from `start()` until `stop()`."""

    def __init__(self, root: int | None = None, interval: float = 1.0):
        self.root, self.interval = root or os.getpid(), interval
        self._seen: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def seconds(self) -> float:
        """CPU seconds (user + system) of the tree since its processes started."""
        if not PROC.is_dir():
            own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
            return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        with self._lock:
            self._seen.update(_tree(self.root))
            ticks = sum(self._seen.values())
        return ticks / os.sysconf("SC_CLK_TCK")

    def start(self) -> TreeCpu:
        if PROC.is_dir() and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="raysoup-cpu", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.seconds()

    def stop(self) -> None:
        self._stop.set()
