"""Failpoints for fault-injection tests and drills.

`RAYSOUP_FAILPOINTS="sweep.trial_complete=2,greedy.decision=1"` makes the process hit by the
named point crash there on its Nth hit — SIGKILL, so no `finally`, atexit or flush runs, as
when a node is preempted. `name=N:sleep=S` sleeps S seconds instead (a window in which a test
can kill a node while work is in flight); `name=N:wait=PATH` pauses until PATH exists (a
window the test closes itself, so a slow machine cannot make it miss). `:once=PATH` fires only
if PATH does not exist yet and creates it first: a Ray task retried in a fresh worker process
then runs through. Unset (the normal case), a failpoint costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter

ENV = "RAYSOUP_FAILPOINTS"
WAIT_LIMIT_S = 600
_hits: Counter[str] = Counter()


def _parse(spec: str) -> dict[str, tuple[int, dict[str, str]]]:
    points = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition("=")
        count, *actions = rest.split(":")
        points[name] = (int(count or 1), dict(a.partition("=")[::2] for a in actions))
    return points


def failpoint(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point = _parse(spec).get(name)
    if point is None:
        return
    _hits[name] += 1
    count, actions = point
    if _hits[name] != count:
        return
    if "once" in actions:
        try:
            os.close(os.open(actions["once"], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
    sleep = float(actions["sleep"]) if "sleep" in actions else None
    wait = actions.get("wait")
    action = (f"waiting for {wait}" if wait else f"sleeping {sleep:.0f} s" if sleep
              else "SIGKILL")
    print(f"raysoup: failpoint {name} hit {count}x: {action}", file=sys.stderr, flush=True)
    if wait:
        deadline = time.monotonic() + WAIT_LIMIT_S  # a drill that died must not hang us forever
        while not os.path.exists(wait) and time.monotonic() < deadline:
            time.sleep(0.1)
    elif sleep:
        time.sleep(sleep)
    else:
        os.kill(os.getpid(), signal.SIGKILL)
