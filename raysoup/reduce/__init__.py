"""Soup arithmetic: plan shards by bytes, reduce one shard (pure torch), write sharded output."""

from raysoup.reduce.plan import plan_shards, tensor_nbytes
from raysoup.reduce.reduction import (
    ReductionError,
    add_into,
    open_tensors,
    reduce_shard,
    scale_,
    scaled,
)
from raysoup.reduce.writer import (
    INDEX_FILE,
    ShardedCheckpointError,
    read_sharded,
    shard_filename,
    tensor_digest,
    write_index,
    write_shard,
    write_sharded,
)

__all__ = [
    "INDEX_FILE",
    "ReductionError",
    "ShardedCheckpointError",
    "add_into",
    "open_tensors",
    "plan_shards",
    "read_sharded",
    "reduce_shard",
    "scale_",
    "scaled",
    "shard_filename",
    "tensor_digest",
    "tensor_nbytes",
    "write_index",
    "write_shard",
    "write_sharded",
]
