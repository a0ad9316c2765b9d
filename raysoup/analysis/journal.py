"""The analysis journal: each finished evaluation's result under its key (a digest of what
was evaluated: the models' bytes, the weights, the splits), so a killed analysis resumes
without recomputing what it finished, and a changed sweep recomputes what changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from raysoup import storage


def job_key(**what: Any) -> str:
    """A stable key of a job's description (JSON-serialisable)."""
    text = json.dumps(what, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Journal:
    """{key: result} in one JSON file, rewritten atomically after every result."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.entries: dict[str, Any] = json.loads(storage.read_text(self.path))
        except FileNotFoundError:
            self.entries = {}
        except json.JSONDecodeError as err:
            raise ValueError(f"{storage.display(self.path)}: not an analysis journal ({err}); "
                             "move it aside to recompute") from None

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> Any:
        return self.entries[key]

    def put(self, key: str, result: Any) -> None:
        self.entries[key] = result
        storage.write_file(self.path, json.dumps(self.entries, indent=0, sort_keys=True))
