"""A soup shard's safetensors file written as its tensors are reduced, one at a time.

`writer.write_shard` takes a whole shard in memory: a reduction that hands it one model's
tensors in fresh memory pays a page fault and zeroing per 4 KiB of output, and hashing the file
afterwards reads it all back. Here the header is known before any tensor is reduced (names,
shapes and dtypes come from the ingredients' headers), so each tensor goes from the reduction's
reused buffer straight into the file and into the sha256: memory holds one tensor (the largest,
reused), never the shard. The bytes are those `safetensors.torch.save_file` writes for the same
tensors — checked per shard against safetensors itself (`_header` must give what it gives for a
tiny stand-in of each tensor; where not, the shard is collected and written by `write_shard`).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as st_save

from raysoup.atomic import write_atomic
from raysoup.faults import failpoint
from raysoup.reduce.writer import ShardedCheckpointError, _as_tensor, _torch_dtype, write_shard

# (dtype, shape) of each tensor a reduction yields, before the cast to the soup's dtypes.
Layout = dict[str, tuple[torch.dtype, tuple[int, ...]]]
# Called with the names in file order; yields (name, tensor) in that order, each valid until
# the next is drawn (a reused buffer).
Produce = Callable[[list[str]], Iterable[tuple[str, np.ndarray | torch.Tensor]]]

_METADATA = {"format": "pt"}  # what write_shard gives save_file
_ST_NAMES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
             torch.uint16: "U16", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int32: "I32", torch.uint32: "U32", torch.float32: "F32",
             torch.float64: "F64", torch.int64: "I64", torch.uint64: "U64",
             torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


def write_shard_stream(path: Path, layout: Layout, produce: Produce,
                       dtypes: dict[str, str] | None = None) -> str:
    """Write the shard file at `path` atomically from `produce` (see `Produce`), each tensor
    cast to `dtypes` where given (as `write_shard` does); returns the file's sha256, hashed from
    the bytes as they are written."""
    out = {name: (_torch_dtype(name, dtypes[name]) if dtypes and name in dtypes else dt, shape)
           for name, (dt, shape) in layout.items()}
    order, header = _checked_header(out)
    if header is None:  # safetensors lays this shard out in a way `_header` does not know
        shard = {name: _as_tensor(v).clone() for name, v in produce(order)}
        return write_shard(path, shard, dtypes)
    digest = hashlib.sha256()

    def save(tmp: Path) -> None:
        with open(tmp, "wb", buffering=0) as f:
            _put(f, digest, struct.pack("<Q", len(header)) + header)
            for data in _file_bytes(order, out, produce(order)):
                _put(f, digest, data)
        failpoint("reduce.shard_file")  # killed here, a task leaves its temp file behind

    write_atomic(Path(path), save)
    return digest.hexdigest()


def _file_bytes(order: list[str], out: Layout, tensors: Iterable) -> Iterator[memoryview]:
    """Each tensor's bytes in file order, cast to its dtype in one reused buffer."""
    cast = torch.empty(0, dtype=torch.uint8)
    it = iter(tensors)
    for name in order:
        got, value = next(it, (None, None))
        dtype, shape = out[name]
        t = _as_tensor(value) if got == name else None
        if t is None or tuple(t.shape) != shape:
            raise ShardedCheckpointError(
                f"tensor {name!r}: the reduction gave "
                f"{'nothing' if t is None else f'{got!r} {list(t.shape)}'} where the shard's "
                f"header has {list(shape)}")
        if t.dtype != dtype:
            nbytes = t.numel() * dtype.itemsize
            if cast.numel() < nbytes:
                cast = torch.empty(nbytes, dtype=torch.uint8)
            target = cast[:nbytes].view(dtype).view(t.shape)
            target.copy_(t)  # the same rounding as `t.to(dtype)` (write_shard's cast)
            t = target
        yield memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    if next(it, None) is not None:
        raise ShardedCheckpointError("the reduction gave more tensors than the shard's header")


def _put(f, digest, data) -> None:
    digest.update(data)
    view = memoryview(data)
    while view.nbytes:
        view = view[f.write(view):]


def _checked_header(out: Layout) -> tuple[list[str], bytes | None]:
    """(names in the order safetensors lays them out, the file's header) — the order and the
    header's format checked against safetensors for a one-entry stand-in of every tensor; the
    header is None where either differs or a dtype is one `_ST_NAMES` lacks."""
    if any(dt not in _ST_NAMES for dt, _ in out.values()):
        return list(out), None
    stand_in = {name: torch.zeros((1,) * len(shape), dtype=dt) for name, (dt, shape) in out.items()}
    data = st_save(stand_in, metadata=_METADATA)
    (n,) = struct.unpack("<Q", data[:8])
    order = [k for k in json.loads(data[8:8 + n]) if k != "__metadata__"]
    small = {name: (dt, (1,) * len(shape)) for name, (dt, shape) in out.items()}
    if _header(order, small) != data[8:8 + n]:
        return order, None
    return order, _header(order, out)


def _header(order: list[str], out: Layout) -> bytes:
    """safetensors' header: compact JSON, metadata first, then each tensor with its byte range
    in file order, padded with spaces to a multiple of 8 bytes."""
    entries: dict = {"__metadata__": _METADATA}
    at = 0
    for name in order:
        dtype, shape = out[name]
        end = at + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        entries[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [at, end]}
        at = end
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
    return text + b" " * (-len(text) % 8)

