"""Greedy soup's decision journal: one JSON line per decided candidate, fsynced.

A greedy soup over many ingredients is a long sequential loop (each decision is a held-out
evaluation). If the driver dies, the journal lets the next run replay the decisions already
taken (rebuilding the running sum costs adds, no evaluations) and continue after the last one.
The header pins the ranking the decisions were made on; a journal written for a different
candidate list is not replayed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from raysoup import storage
from raysoup.faults import failpoint
from raysoup.soup.base import Candidate

log = logging.getLogger(__name__)


class DecisionJournal:
    def __init__(self, path: Path, soup_id: str | None = None):
        """`soup_id`: the candidate set's id (names and sha256); names and accuracies alone
        would match an ingredient replaced under its name."""
        self.path = Path(path)
        self.soup_id = soup_id

    def _header(self, ranked: list[Candidate], settings: dict) -> dict:
        header = {"ranking": [[c.name, c.heldout] for c in ranked], "settings": settings}
        return {**header, "soup_id": self.soup_id} if self.soup_id else header

    def open(self, ranked: list[Candidate], settings: dict) -> list[dict]:
        """Decisions already journaled for `ranked` (in order); starts a new journal otherwise."""
        header = self._header(ranked, settings)
        entries = self._read(header)
        if entries is None:
            self._write_lines([header])
            return []
        return entries

    def _read(self, header: dict) -> list[dict] | None:
        try:
            lines = storage.read_text(self.path).splitlines()  # remote workdir: its copy
        except FileNotFoundError:
            return None
        try:
            if not lines or json.loads(lines[0]) != header:
                log.warning("%s was written for other candidates or settings; starting over",
                            self.path)
                return None
        except json.JSONDecodeError:
            log.warning("%s has an unreadable header; starting over", self.path)
            return None
        entries = []
        ranked = [name for name, _ in header["ranking"]][1:]
        for i, line in enumerate(lines[1:]):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by a crash: that decision is simply redone
            if i >= len(ranked) or entry.get("candidate") != ranked[i]:
                log.warning("%s line %d does not follow the ranking; starting over", self.path, i + 2)
                return None
            entries.append(entry)
        if len(entries) != len(lines) - 1 or storage.is_remote(self.path):
            # Drop a torn tail before appending; a remote journal is also copied to the local
            # mirror, which `record` appends to.
            self._write_lines([header, *entries])
        return entries

    def record(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        storage.publish(self.path)
        failpoint("greedy.decision")

    def _write_lines(self, items: list[dict]) -> None:
        storage.write_file(self.path, "".join(json.dumps(x) + "\n" for x in items))
