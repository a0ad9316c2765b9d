"""The ingredient manifest: `ingredients/<name>/manifest.json`, what describes a tensor file.

    {"format": "raysoup.ingredient/1", "name": ..., <meta: kind, hparams, metrics, ...>,
     "sha256": ..., "tensors": {name: {"shape": [...], "dtype": "float32"}}, "bytes": ...}

One writer (`IngredientManifest.text`, used by `checkpoints.write_ingredient`, which owns the
tensor file) and one reader (`IngredientManifest.read`). JSON only: reading never unpickles.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysoup import storage
from raysoup.workdir.layout import Workdir

FORMAT = "raysoup.ingredient/1"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
# Manifest fields computed from the tensor file; meta may not set them.
COMPUTED = ("format", "sha256", "tensors", "bytes")


class IngredientError(ValueError):
    """A missing, incomplete or corrupt ingredient; the message names the file."""


@dataclass(frozen=True)
class IngredientManifest:
    """`meta`: what the writer recorded (kind, model_name, num_classes, preprocess, hparams,
    metrics...), in its order; the other fields are computed from the tensor file."""

    name: str
    sha256: str
    tensors: dict[str, dict[str, Any]]  # tensor name → {"shape": [...], "dtype": "float32"}
    bytes: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str | None:
        return self.meta.get("kind")

    @property
    def model_name(self) -> str:
        return self.meta["model_name"]

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.meta["preprocess"]

    @property
    def hparams(self) -> dict[str, Any]:
        return self.meta.get("hparams", {})

    def as_dict(self) -> dict[str, Any]:
        """The JSON object, in the file's key order (a meta "name" overrides the directory's)."""
        return {"format": FORMAT, "name": self.name, **self.meta, "sha256": self.sha256,
                "tensors": self.tensors, "bytes": self.bytes}

    def text(self) -> str:
        """The file's bytes. Raises TypeError/ValueError for a meta that is not JSON."""
        return json.dumps(self.as_dict(), indent=2, default=_json_default) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IngredientManifest:
        meta = {k: v for k, v in data.items() if k not in (*COMPUTED, "name")}
        return cls(data["name"], data["sha256"], data["tensors"], data["bytes"], meta)

    @classmethod
    def read(cls, directory: Path) -> IngredientManifest:
        return cls.from_dict(read_json(directory))


def read_json(directory: Path) -> dict[str, Any]:
    """An ingredient directory's manifest as its JSON object, its format checked."""
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise IngredientError(
            f"{storage.display(path)}: no manifest (not an ingredient, or still being written)"
        ) from None
    except json.JSONDecodeError as e:
        raise IngredientError(f"{storage.display(path)}: invalid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise IngredientError(f"{storage.display(path)}: format is {got!r}, expected {FORMAT!r}")
    return manifest


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths turn up in metrics/hparams; anything else is a caller bug.
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


# A trial that ended without weights (diverged, or stopped by the scheduler) leaves its
# outcome in the manifest's place, with no tensor file, so the sweep counts it as ended.


def write_trial_outcome(directory: Path, record: dict[str, Any]) -> None:
    storage.write_file(Path(directory) / MANIFEST_FILE,
                       json.dumps(record, indent=1, sort_keys=True, default=str))


def read_record(directory: Path) -> dict[str, Any]:
    """`manifest.json` of an ingredient or of a trial outcome, unchecked."""
    return json.loads(storage.read_text(Path(directory) / MANIFEST_FILE))


def diverged_hparams(workdir: Path, diverged: list[str], keys) -> dict[str, dict]:
    """Each diverged trial's values of `keys` (the sweep's sampled hyper-parameters), from the
    record it left: what the report shows for it."""
    out = {}
    for name in diverged:
        hp = read_record(Workdir(workdir).ingredient(name)).get("hparams", {})
        out[name] = {k: hp[k] for k in keys if k in hp}
    return out
