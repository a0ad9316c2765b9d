"""Checks an ingredient must pass before it is evaluated or souped (pure; no Ray).

- integrity: size and sha256 of the tensor file against its manifest (a truncated or
  replaced file is an error that names the file);
- finiteness: NaN/Inf counts per tensor, streamed one tensor at a time (a diverged fine-tune
  is excluded from soups with a warning, or refused under `soup.strict`);
- compatibility: every ingredient of a soup has the same tensor names, shapes and dtypes
  (the error names the tensor and both files).

Hashing a large checkpoint is not free, so results are cached in a small JSON file keyed by
the file's size and mtime: a changed file is checked again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from raysoup import storage
from raysoup.checkpoints.ingredient import IngredientError, verify_ingredient, weights_path
from raysoup.workdir import IngredientManifest


@dataclass(frozen=True)
class Audit:
    name: str
    path: Path
    sha256: str
    nonfinite: dict[str, int]  # tensor name → count of NaN/Inf values (only tensors with any)

    @property
    def finite(self) -> bool:
        return not self.nonfinite


def count_nonfinite(path: Path) -> dict[str, int]:
    # The reduction's reader: one tensor in memory at a time, ranged reads in a remote workdir.
    from raysoup.checkpoints.tensorfile import Scratch, TensorFileError, open_tensors

    file = weights_path(path)
    out = {}
    scratch = Scratch()
    try:
        with open_tensors(file) as h:
            for name in h.keys():  # noqa: SIM118 - a tensor file handle, not a dict
                t = h.get_tensor(name, scratch)
                if t.is_floating_point():
                    bad = int(t.numel() - torch.isfinite(t).sum())
                    if bad:
                        out[name] = bad
            scratch.release()
    except TensorFileError as e:
        raise IngredientError(f"unreadable safetensors file: {e}") from None
    return out


def audit_ingredient(path: Path) -> Audit:
    manifest = verify_ingredient(path)
    return Audit(Path(path).name, Path(path), manifest["sha256"], count_nonfinite(path))


class AuditCache:
    """name → audit, reused while the tensor file's size, mtime and manifest sha256 hold."""

    def __init__(self, file: Path):
        self.file = Path(file)
        try:
            self.entries = json.loads(storage.read_text(self.file))
        except (FileNotFoundError, json.JSONDecodeError):
            self.entries = {}

    @staticmethod
    def _key(path: Path) -> list:
        st = storage.stat(weights_path(path))
        if st is None:
            raise IngredientError(f"{storage.display(weights_path(path))}: missing tensor file")
        return [st[0], st[1], IngredientManifest.read(path).sha256]

    def audit(self, path: Path) -> Audit:
        path = Path(path)
        key = self._key(path)
        hit = self.entries.get(path.name)
        if hit and hit["key"] == key:
            return Audit(path.name, path, hit["sha256"], hit["nonfinite"])
        result = audit_ingredient(path)
        self.entries[path.name] = {"key": key, "sha256": result.sha256,
                                   "nonfinite": result.nonfinite}
        self._save()
        return result

    def _save(self) -> None:
        storage.write_file(self.file, json.dumps(self.entries, indent=1, sort_keys=True))


def check_compatible(paths: list[Path]) -> None:
    """Same tensor names, shapes and dtypes in every ingredient (from manifests, no reads)."""
    if not paths:
        return
    ref_path = storage.display(weights_path(paths[0]))
    ref = IngredientManifest.read(paths[0]).tensors
    for path in paths[1:]:
        other = IngredientManifest.read(path).tensors
        file = storage.display(weights_path(path))
        for name in sorted(set(ref) | set(other)):
            if name not in other:
                raise IngredientError(f"tensor {name!r}: in {ref_path} but missing in {file}")
            if name not in ref:
                raise IngredientError(f"tensor {name!r}: in {file} but missing in {ref_path}")
            a, b = ref[name], other[name]
            if a["shape"] != b["shape"]:
                raise IngredientError(f"tensor {name!r}: shape {a['shape']} in {ref_path} but "
                                      f"{b['shape']} in {file}")
            if a["dtype"] != b["dtype"]:
                raise IngredientError(f"tensor {name!r}: dtype {a['dtype']} in {ref_path} but "
                                      f"{b['dtype']} in {file}")
