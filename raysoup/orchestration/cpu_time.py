"""CPU seconds spent by this driver's process tree: the driver and, on a local Ray cluster it
started, the GCS, the raylet and every Ray worker (trials, eval actors, reduction tasks).

Wall time says little on a shared or slower machine; CPU seconds per stage carry over: on an
idle machine with C cores a stage that keeps them busy takes about CPU / C seconds, and a core
k times slower multiplies both. `resource.getrusage(RUSAGE_CHILDREN)` is not enough: Ray's
workers are the raylet's children, not the driver's, and stay alive between stages. So this
reads /proc: each live process's own time plus the time of its children it has reaped (a worker
that exited is counted in the raylet's). Processes outside the tree (a cluster joined with
`--address`) are not counted. Off Linux it falls back to the driver and its reaped children.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, utime + stime + cutime + cstime in clock ticks) of one process."""
    try:
        text = (PROC / pid / "stat").read_text()
    except OSError:  # exited meanwhile, or not ours to read
        return None
    # The command name (field 2) may hold spaces and parentheses: fields follow the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), float(sum(int(f) for f in fields[11:15]))


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds (user + system) of process `root` (default: this one) and its descendants,
    reaped children included."""
    root = os.getpid() if root is None else root
    if not PROC.is_dir():
        own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    stats = {int(p.name): s for p in PROC.iterdir() if p.name.isdigit()
             if (s := _stat(p.name)) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    ticks, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            ticks += stats[pid][1]
        todo.extend(children.get(pid, ()))
    return ticks / os.sysconf("SC_CLK_TCK")
