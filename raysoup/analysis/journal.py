"""The analysis journal: each finished evaluation's result under its key (a digest of what
was evaluated: the models' bytes, the weights, the splits), so a killed analysis resumes
without recomputing what it finished, and a changed sweep recomputes what changed.

The journal is append-only JSON lines, one `{"key": ..., "result": ...}` record a finished
job, flushed and fsync'd as it lands: a result costs the bytes of its own line, whatever the
number of jobs before it (a whole-file rewrite per result is quadratic in the grid). A kill
can tear only the last line; it is ignored (and cut off) on reading, and its job runs again.
A remote workdir's journal is appended in its local mirror and uploaded whole at most every
`publish_every` seconds and on `flush()`.

The journal of earlier releases (`journal.json`, one JSON object) is read as it is, never
rewritten: its results count, new ones go to the JSON-lines file."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from raysoup import storage
from raysoup.atomic import fsync_path


def job_key(**what: Any) -> str:
    """A stable key of a job's description (JSON-serialisable)."""
    text = json.dumps(what, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def record_line(key: str, result: Any) -> bytes:
    """One journal record: a single line (JSON escapes every newline inside it)."""
    return (json.dumps({"key": key, "result": result}, sort_keys=True,
                       separators=(",", ":")) + "\n").encode()


class Journal:
    """{key: result}, read from the JSON-lines file at `path` (and `legacy`, the old one-object
    journal.json, where given and present); `put` appends one fsync'd line."""

    def __init__(self, path: Path, legacy: Path | None = None, publish_every: float = 30.0):
        self.path = Path(path)
        self.publish_every = publish_every
        self.entries: dict[str, Any] = _read_legacy(legacy) if legacy is not None else {}
        self._unpublished = False
        self._published_at = time.monotonic()
        self._mirror_remote()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        kept = self._parse(data)
        if kept < len(data):  # a torn last record (a kill mid-write): dropped, its job redone
            with open(self.path, "r+b") as f:
                f.truncate(kept)
                os.fsync(f.fileno())

    def _mirror_remote(self) -> None:
        """A remote journal into the local mirror, unless the mirror already holds it and
        more (this machine appended lines it had not uploaded yet)."""
        if not storage.is_remote(self.path):
            return
        try:
            remote = storage.read_bytes(self.path)
        except FileNotFoundError:
            return
        local = self.path.read_bytes() if self.path.is_file() else b""
        if not local.startswith(remote):
            storage.write_atomic(self.path, remote)

    def _parse(self, data: bytes) -> int:
        """Reads the records into `entries`; returns the length of the whole lines that hold
        them (less than `len(data)` when the last line is torn)."""
        lines = data.split(b"\n")
        end = 0
        for number, line in enumerate(lines, 1):
            last = number == len(lines)
            if not line:
                end += 0 if last else 1
                continue
            try:
                record = json.loads(line)
                key, result = record["key"], record["result"]
            except (ValueError, KeyError, TypeError) as err:
                if last:  # no newline after it: the write never finished
                    return end
                raise ValueError(
                    f"{storage.display(self.path)}: line {number} is not an analysis journal "
                    f"record ({err}); move the file aside to recompute") from None
            if last:  # a whole record without its newline: still torn (written in one go)
                return end
            self.entries[key] = result
            end += len(line) + 1
        return end

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> Any:
        return self.entries[key]

    def put(self, key: str, result: Any) -> None:
        line = record_line(key, result)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # the file's directory entry survives a host crash too
            fsync_path(self.path.parent)
        self.entries[key] = result
        self._unpublished = True
        if time.monotonic() - self._published_at >= self.publish_every:
            self.flush()

    def flush(self) -> None:
        """Uploads a remote workdir's journal (a no-op for a local one)."""
        if self._unpublished and storage.is_remote(self.path):
            storage.publish(self.path)
        self._unpublished = False
        self._published_at = time.monotonic()


def _read_legacy(path: Path) -> dict[str, Any]:
    try:
        entries = json.loads(storage.read_text(path))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as err:
        raise ValueError(f"{storage.display(path)}: not an analysis journal ({err}); move it "
                         "aside to recompute") from None
    if not isinstance(entries, dict):  # a bad file, as a bad parse is: the same error
        raise ValueError(  # noqa: TRY004
            f"{storage.display(path)}: not an analysis journal (a JSON object of results); "
            "move it aside to recompute")
    return entries
