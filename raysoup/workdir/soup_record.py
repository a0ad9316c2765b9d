"""The soup record: `soups/<recipe>/recipe.json`, what a cooked soup was made of, how, and
from which candidate set; for an ensemble, its member list (it has no weights of its own).

One writer (`write_recipe_file`: the reduction adds the shard facts to `SoupRecord.as_dict`)
and one reader (`SoupRecord.read`); the `<recipe>_soup` model-name rule lives here only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysoup import storage
from raysoup.workdir.layout import RECIPE_FILE

_FIELDS = ("recipe", "model", "kind", "ingredients", "weights", "trace", "candidates", "anchor",
           "soup_id", "tensor_weights", "merge", "num_shards", "shards_sha256", "paths")


def model_name(recipe: str, kind: str) -> str:
    """The results.parquet model name: `<recipe>_soup`, or `ensemble` for the ensemble."""
    return "ensemble" if kind == "ensemble" else f"{recipe}_soup"


@dataclass(frozen=True)
class CandidateSet:
    """What every soup of a soup stage is cooked from: candidates and the zero-shot anchor by
    name → tensor-file sha256. A soup whose recorded id differs is stale."""

    candidates: dict[str, str]
    anchor: dict[str, str] | None
    soup_id: str

    @classmethod
    def of(cls, candidates: dict[str, str], anchor: dict[str, str] | None) -> CandidateSet:
        """The set with its id: a hash of the names and digests (in any order)."""
        text = json.dumps({"candidates": candidates, "anchor": anchor}, sort_keys=True)
        return cls(candidates, anchor, hashlib.sha256(text.encode()).hexdigest()[:16])

    def as_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "anchor": self.anchor, "soup_id": self.soup_id}


@dataclass(frozen=True)
class SoupRecord:
    """`info`: the method's own facts (α, λ, inference cost, peak memory...), in its order."""

    recipe: str
    kind: str  # "soup" (weights written) or "ensemble" (outputs averaged at inference)
    ingredients: list[str]
    weights: list[float] | None
    trace: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # absent from records of old versions: `model_name` rule
    cooked_from: CandidateSet | None = None  # None: cooked before soups recorded one
    tensor_weights: dict[str, list[float]] | None = None
    merge: dict[str, Any] | None = None  # {"scale", "base"} of a task-vector merge
    num_shards: int | None = None  # written by the reduction
    shards_sha256: str | None = None
    paths: list[str] | None = None  # an ensemble's members, relative to its directory

    @property
    def name(self) -> str:
        """The model name results.parquet, the report and MLflow know the soup by."""
        return self.model or model_name(self.recipe, self.kind)

    @property
    def soup_id(self) -> str | None:
        return self.cooked_from.soup_id if self.cooked_from is not None else None

    @property
    def inference_cost(self) -> int:
        """Forward passes per input."""
        return self.info.get("inference_cost", 1)

    def as_dict(self) -> dict[str, Any]:
        """The JSON object, in the file's key order."""
        out = {"recipe": self.recipe, "model": self.name, "kind": self.kind,
               "ingredients": self.ingredients, "weights": self.weights, "trace": self.trace,
               **self.info}
        if self.cooked_from is not None:
            out.update(self.cooked_from.as_dict())
        optional = {"tensor_weights": self.tensor_weights, "merge": self.merge,
                    "num_shards": self.num_shards, "shards_sha256": self.shards_sha256,
                    "paths": self.paths}
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    def members(self, soup_dir: Path) -> list[Path]:
        """An ensemble's member directories (stored relative: a moved workdir resolves)."""
        return [(Path(soup_dir) / p).resolve() for p in self.paths or []]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], directory: Path | None = None) -> SoupRecord:
        cooked = None
        if "candidates" in data:
            cooked = CandidateSet(data["candidates"], data.get("anchor"), data["soup_id"])
        return cls(
            recipe=data.get("recipe", directory.name if directory else ""),
            kind=data.get("kind", "soup"), ingredients=data.get("ingredients", []),
            weights=data.get("weights"), trace=data.get("trace", []),
            info={k: v for k, v in data.items() if k not in _FIELDS}, model=data.get("model"),
            cooked_from=cooked,
            **{k: data.get(k) for k in ("tensor_weights", "merge", "num_shards",
                                        "shards_sha256", "paths")})

    @classmethod
    def read(cls, soup_dir: Path) -> SoupRecord:
        """Raises FileNotFoundError for a directory that holds no complete soup."""
        return cls.from_dict(json.loads(storage.read_text(Path(soup_dir) / RECIPE_FILE)),
                             Path(soup_dir))

    @classmethod
    def read_if_any(cls, soup_dir: Path) -> SoupRecord | None:
        try:
            return cls.read(soup_dir)
        except FileNotFoundError:
            return None


def write_recipe_file(directory: Path, record: Mapping[str, Any]) -> Path:
    """`directory/recipe.json` (a soup's temporary directory, renamed into place after)."""
    path = Path(directory) / RECIPE_FILE
    path.write_text(json.dumps(dict(record), indent=2))
    return path


def recipe_files(soups_dir: Path) -> list[Path]:
    """`<soups_dir>/<recipe>/recipe.json` of every complete soup (local or remote workdir)."""
    return [Path(soups_dir) / rel for rel in storage.list_files(soups_dir)
            if rel.count("/") == 1 and rel.endswith(f"/{RECIPE_FILE}")
            and not rel.startswith(".")]


def cooked_soup_id(soup_dir: Path) -> str | None:
    """The candidate set a soup directory was cooked from (None: not cooked, or cooked before
    soups recorded it)."""
    record = SoupRecord.read_if_any(soup_dir)
    return record.soup_id if record is not None else None


def ensemble_members(soup_dir: Path) -> list[Path] | None:
    """The member ingredient directories of an ensemble directory; None for anything else."""
    record = SoupRecord.read_if_any(soup_dir)
    if record is None or record.kind != "ensemble":
        return None
    return record.members(soup_dir)


def recipe_info(soups_dir: Path, recipe: str) -> dict[str, Any] | None:
    """The `info` of the complete soup `<soups_dir>/<recipe>` (None if there is none)."""
    soup_dir = Path(soups_dir) / recipe
    if not storage.is_file(soup_dir / RECIPE_FILE):
        return None
    return SoupRecord.read(soup_dir).info


def inference_costs(soups_dir: Path) -> dict[str, int]:
    """model name → forward passes per input, for the models that need more than one."""
    out = {}
    for file in recipe_files(soups_dir):
        record = SoupRecord.read(file.parent)
        if record.inference_cost > 1:
            out[record.name] = record.inference_cost
    return out
