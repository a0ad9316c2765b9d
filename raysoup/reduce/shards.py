"""Split a model's tensors into shards of similar byte size, one reduction task per shard."""

from __future__ import annotations

import math

import torch


def plan_shards(tensor_bytes: dict[str, int], num_shards: int) -> list[list[str]]:
    """Greedy balance: largest tensor first into the lightest shard (ties: lowest index).

    Deterministic for a given dict. Names inside a shard keep the dict order, so a shard file
    lists its tensors in model order. Never returns an empty shard.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    for name, size in tensor_bytes.items():
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"tensor {name!r}: byte size must be a non-negative int, got {size!r}")
    names = list(tensor_bytes)
    k = min(num_shards, len(names))
    loads = [0] * k
    members: list[list[int]] = [[] for _ in range(k)]
    # sorted() is stable, so equal sizes keep dict order.
    for i in sorted(range(len(names)), key=lambda i: -tensor_bytes[names[i]]):
        s = min(range(k), key=lambda j: (loads[j], j))
        loads[s] += tensor_bytes[names[i]]
        members[s].append(i)
    # Only zero-byte tensors can leave a shard empty; drop it rather than schedule no-op work.
    return [[names[i] for i in sorted(m)] for m in members if m]


def tensor_nbytes(tensors: dict[str, dict]) -> dict[str, int]:
    """Byte sizes from a manifest's "tensors" index: {name: {"shape": [...], "dtype": "..."}}."""
    out = {}
    for name, info in tensors.items():
        try:
            itemsize = getattr(torch, info["dtype"]).itemsize
        except (AttributeError, KeyError, TypeError):
            raise ValueError(f"tensor {name!r}: unknown dtype in {info!r}") from None
        out[name] = math.prod(info["shape"]) * itemsize
    return out
