"""Ingredient format: one fine-tuned checkpoint = a directory with

    model.safetensors   the tensors (never pickled)
    manifest.json       what describes them: kind, hparams, metrics, base model, sha256,
                        tensor index (`raysoup.workdir.IngredientManifest`)

A directory is complete once it exists under its final name: it is built in a hidden temp
directory next to it and renamed into place, so readers never see half an ingredient. In a
remote workdir (`raysoup.storage`) it is then uploaded with the manifest last, and reads go to
the remote copy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file

from raysoup import atomic, storage
from raysoup.atomic import fsync_path  # noqa: F401 - re-exported for writers of tensor files
from raysoup.workdir.manifest import (  # noqa: F401 - the format's names, re-exported
    COMPUTED,
    FORMAT,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    IngredientError,
    IngredientManifest,
)
from raysoup.workdir.manifest import read_json as read_manifest  # the manifest as JSON


def weights_path(path: Path | str) -> Path:
    """The tensor file of an ingredient directory (a file path is returned unchanged)."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path / WEIGHTS_FILE


def dtype_name(dtype: torch.dtype) -> str:
    """"float32" for torch.float32: the spelling used in manifests and soup indexes."""
    return str(dtype).removeprefix("torch.")


def file_sha256(path: Path, chunk: int = 1 << 22, committed: bool = False) -> str:
    """sha256 of a local file; `committed=True`: of a workdir file as readers see it (in a
    remote workdir, the remote object rather than this node's mirror copy)."""
    h = hashlib.sha256()
    with storage.open_input(path) if committed else open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_ingredient(dir: Path, state_dict: dict[str, torch.Tensor], meta: dict) -> dict:
    """Write `state_dict` + manifest to `dir` atomically and return the manifest."""
    dir = Path(dir)
    clash = [k for k in COMPUTED if k in meta]
    if clash:
        raise IngredientError(f"{dir}: meta may not set computed manifest fields {clash}")
    tensors = {name: t.detach().cpu().contiguous() for name, t in state_dict.items()}

    with storage.atomic_dir(dir) as tmp:
        weights = tmp / WEIGHTS_FILE
        save_file(tensors, str(weights), metadata={"format": "pt"})
        manifest = IngredientManifest(
            name=dir.name,
            sha256=file_sha256(weights),
            tensors={n: {"shape": list(t.shape), "dtype": dtype_name(t.dtype)}
                     for n, t in tensors.items()},
            bytes=weights.stat().st_size,
            meta=meta,
        )
        try:
            text = manifest.text()
        except (TypeError, ValueError) as e:
            raise IngredientError(f"{dir}: meta is not JSON-serialisable: {e}") from None
        (tmp / MANIFEST_FILE).write_text(text)
    return json.loads(text)


def verify_ingredient(dir: Path) -> dict:
    """Check size and sha256 of the tensor file against the manifest; return the manifest."""
    manifest = read_manifest(dir)
    weights = _checked_weights(Path(dir), manifest)
    digest = file_sha256(weights, committed=True)
    if digest != manifest["sha256"]:
        raise IngredientError(
            f"{storage.display(weights)}: sha256 {digest} does not match manifest {manifest['sha256']} "
            "(corrupt file)"
        )
    return manifest


def load_state_dict(dir: Path, verify: bool = False) -> dict[str, torch.Tensor]:
    dir = Path(dir)
    manifest = verify_ingredient(dir) if verify else read_manifest(dir)
    weights = _checked_weights(dir, manifest)
    try:
        # Local: safetensors maps the file; remote: one GET of the whole object.
        state = load(storage.read_bytes(weights)) if storage.is_remote(weights) \
            else load_file(str(weights))
    except SafetensorError as e:
        raise IngredientError(f"{storage.display(weights)}: unreadable safetensors file: {e}") from None
    if set(state) != set(manifest["tensors"]):
        diff = sorted(set(state) ^ set(manifest["tensors"]))
        raise IngredientError(f"{storage.display(weights)}: tensors differ from the manifest: {diff[:5]}")
    return state


def list_ingredients(root: Path) -> list[Path]:
    """Complete ingredient directories under `root`, sorted by name (temp dirs are hidden)."""
    root = Path(root)
    files = set(storage.list_files(root))  # one listing, also for a remote workdir
    return sorted(
        root / name
        for name in {rel.split("/", 1)[0] for rel in files}
        if not name.startswith(".")
        and f"{name}/{MANIFEST_FILE}" in files
        and f"{name}/{WEIGHTS_FILE}" in files
    )


def remove_stale_tmp(root: Path) -> list[str]:
    """Delete the hidden temp/old directories a killed writer left in `root`.

    Only call this when no writer is active in `root` (the start of a stage: one driver owns
    a workdir)."""
    return atomic.remove_temp(root, files=False)


def _checked_weights(dir: Path, manifest: dict) -> Path:
    # A size check is a cheap first line against truncated copies, even without verify=True.
    weights = dir / WEIGHTS_FILE
    st = storage.stat(weights)
    if st is None:
        raise IngredientError(f"{storage.display(weights)}: missing tensor file")
    size = st[0]
    if size != manifest.get("bytes"):
        raise IngredientError(
            f"{storage.display(weights)}: {size} bytes, manifest says {manifest.get('bytes')} "
            "(truncated or replaced)"
        )
    return weights

