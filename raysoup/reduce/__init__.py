"""Soup arithmetic: plan shards by bytes, reduce or merge one shard (pure torch), write sharded
output."""

from raysoup.reduce.blend import Blend
from raysoup.reduce.merge import TensorMerge, apply_task_vector, merge_shard, task_vectors
from raysoup.reduce.shard_reduce import (
    ReductionError,
    add_into,
    open_tensors,
    reduce_shard,
    scale_,
    scaled,
)
from raysoup.reduce.shards import plan_shards, tensor_nbytes
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
    "Blend",
    "ReductionError",
    "ShardedCheckpointError",
    "TensorMerge",
    "add_into",
    "apply_task_vector",
    "merge_shard",
    "open_tensors",
    "plan_shards",
    "read_sharded",
    "reduce_shard",
    "scale_",
    "scaled",
    "shard_filename",
    "task_vectors",
    "tensor_digest",
    "tensor_nbytes",
    "write_index",
    "write_shard",
    "write_sharded",
]
