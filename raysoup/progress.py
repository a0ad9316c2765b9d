"""Console progress: a tqdm bar on a terminal, periodic log lines everywhere else.

A bar redraws itself with carriage returns, which is unreadable in CI logs, in files and in
`ray job logs`; when the stream is not a TTY the same updates become plain `raysoup:` lines,
at most one every `every_s` seconds (plus the first and the last).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger("raysoup")


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "it", stream: TextIO | None = None,
                 every_s: float = 10.0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        stream = stream or sys.stderr
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=stream,
                        disable=not self.interactive)
        self.done, self._last = 0, float("-inf")
        self._start = time.perf_counter()

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if self.interactive:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note)
            return
        now = time.perf_counter()
        if self.done >= self.total or now - self._last >= self.every_s:
            self._last = now
            log.info("%s: %d/%d %s (%.0f s)%s", self.desc, self.done, self.total, self.unit,
                     now - self._start, f"  {note}" if note else "")

    def close(self) -> None:
        self.bar.close()
