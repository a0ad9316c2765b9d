"""Sharded safetensors output of a soup, in the Hugging Face layout:

    model-00001-of-00003.safetensors ...      one file per reduction shard (1-based)
    model.safetensors.index.json             {"metadata": {..., "total_size"}, "weight_map",
                                              "sha256": {file: hex}}

Each Ray task can write its own shard (`write_shard`); the driver then writes the index
(`write_index`), which is the completion marker: it is written last, atomically.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from raysoup import storage
from raysoup.atomic import is_temp_name, write_atomic
from raysoup.checkpoints.ingredient import dtype_name, file_sha256
from raysoup.faults import failpoint
from raysoup.reduce.shard_reduce import numpy_view

INDEX_FILE = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


class ShardedCheckpointError(ValueError):
    """A sharded soup that cannot be written or read back; the message names the file."""


def shard_filename(k: int, num_shards: int) -> str:
    """1-based k: shard_filename(1, 3) == "model-00001-of-00003.safetensors"."""
    return f"model-{k:05d}-of-{num_shards:05d}.safetensors"


def write_shard(
    path: Path,
    tensors: dict[str, np.ndarray | torch.Tensor],
    dtypes: dict[str, str] | None = None,
) -> str:
    """Write one shard file atomically, casting to `dtypes` ({name: "bfloat16", ...}) where given.

    Returns the file's sha256.
    """
    path = Path(path)
    out = {}
    for name, value in tensors.items():
        t = _as_tensor(value)
        if dtypes and name in dtypes:
            t = t.to(_torch_dtype(name, dtypes[name]))
        out[name] = t.contiguous()
    def save(tmp: Path) -> None:
        save_file(out, str(tmp), metadata={"format": "pt"})
        failpoint("reduce.shard_file")  # killed here, a task leaves its temp file behind

    write_atomic(path, save)
    return file_sha256(path)


def write_index(out_dir: Path, files: list[tuple[str, list[str]]], metadata: dict | None,
                digests: dict[str, str] | None = None) -> dict:
    """Index the shard files in `out_dir` (checked against their headers); drop stale shards.
    `digests`: {file: sha256} as `write_shard` returned them (hashed from the bytes it wrote),
    so the files are not read again; a file it lacks is hashed here."""
    out_dir = Path(out_dir)
    weight_map: dict[str, str] = {}
    sha256: dict[str, str] = {}
    total = 0
    for fname, names in files:
        header = _read_header(out_dir / fname)
        if set(header) != set(names):
            diff = sorted(set(header) ^ set(names))
            raise ShardedCheckpointError(
                f"{out_dir / fname}: tensors differ from the plan: {diff[:5]}"
            )
        for name in names:
            if name in weight_map:
                raise ShardedCheckpointError(
                    f"tensor {name!r} is in both {weight_map[name]} and {fname} under {out_dir}"
                )
            weight_map[name] = fname
            begin, end = header[name]["data_offsets"]
            total += end - begin
        sha256[fname] = (digests or {}).get(fname) or file_sha256(out_dir / fname)
    index = {
        "metadata": {**(metadata or {}), "total_size": total},
        "weight_map": weight_map,
        "sha256": sha256,
    }
    write_atomic(out_dir / INDEX_FILE, json.dumps(index, indent=2) + "\n")
    # A re-run with another shard count leaves differently named files behind, and a shard
    # task killed mid-write (then retried by Ray) its temp file: drop both. Every shard task
    # has finished when the index is written, so no temp file here is still being written.
    for p in out_dir.iterdir():
        if (_SHARD_RE.fullmatch(p.name) and p.name not in sha256) or is_temp_name(p.name):
            p.unlink(missing_ok=True)
    return index


def write_sharded(
    out_dir: Path,
    shards: list[dict[str, np.ndarray]],
    dtypes: dict[str, str] | None = None,
    metadata: dict | None = None,
) -> dict:
    """Write every shard and then the index; returns the index."""
    if not shards:
        raise ShardedCheckpointError(f"{out_dir}: no shards to write")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, digests = [], {}
    for k, shard in enumerate(shards, start=1):
        fname = shard_filename(k, len(shards))
        digests[fname] = write_shard(out_dir / fname, shard, dtypes)
        files.append((fname, list(shard)))
    return write_index(out_dir, files, metadata, digests)


def read_sharded(dir: Path) -> dict[str, torch.Tensor]:
    """Load a sharded soup after checking every file's sha256 against the index."""
    dir = Path(dir)
    index_path = dir / INDEX_FILE
    try:
        index = json.loads(storage.read_text(index_path))
        weight_map, sha256 = index["weight_map"], index["sha256"]
    except FileNotFoundError:
        raise ShardedCheckpointError(
            f"{storage.display(index_path)}: missing (soup not written or incomplete)"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ShardedCheckpointError(f"{storage.display(index_path)}: invalid index: {e!r}"
                                     ) from None
    loaded: dict[str, torch.Tensor] = {}
    for fname in dict.fromkeys(weight_map.values()):
        path = dir / fname
        shown = storage.display(path)
        try:  # one read serves the hash and the tensors (a remote shard is fetched once)
            data = storage.read_bytes(path)
        except FileNotFoundError:
            raise ShardedCheckpointError(
                f"{shown}: missing shard file listed in {storage.display(index_path)}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.get(fname):
            raise ShardedCheckpointError(
                f"{shown}: sha256 {digest} does not match index {sha256.get(fname)} (corrupt file)"
            )
        try:
            loaded.update(load(data))
        except SafetensorError as e:
            raise ShardedCheckpointError(f"{shown}: unreadable safetensors file: {e}") from None
    missing = [n for n in weight_map if n not in loaded]
    if missing:
        raise ShardedCheckpointError(
            f"{dir}: tensors in the index but not in their files: {missing[:5]}"
        )
    return {name: loaded[name] for name in weight_map}


def tensor_digest(state: dict[str, torch.Tensor | np.ndarray]) -> str:
    """sha256 over sorted names, dtypes, shapes and raw bytes: equal soups, any shard layout."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = _as_tensor(state[name]).detach().cpu().contiguous()
        h.update(json.dumps([name, dtype_name(t.dtype), list(t.shape)]).encode() + b"\n")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _as_tensor(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    # Not np.ascontiguousarray: it turns 0-d arrays into shape (1,).
    return numpy_view(value if value.flags.c_contiguous else value.copy(order="C"))


def _torch_dtype(name: str, spelling: str) -> torch.dtype:
    dtype = getattr(torch, spelling, None)
    if not isinstance(dtype, torch.dtype):
        raise ShardedCheckpointError(f"tensor {name!r}: unknown dtype {spelling!r}")
    return dtype


def _read_header(path: Path) -> dict:
    # safetensors layout: u64 little-endian header length, then the JSON header.
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise ShardedCheckpointError(f"{path}: missing shard file") from None
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardedCheckpointError(f"{path}: not a safetensors file: {e}") from None
    header.pop("__metadata__", None)
    return header

