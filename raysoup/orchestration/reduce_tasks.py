"""Distributed weight averaging: one Ray task per shard of tensor names.

Each task streams its tensors from every ingredient (lazy safetensors reads) and either writes
its output shard file directly or returns it as numpy arrays through the object store. The
arithmetic lives in `raysoup.reduce` (pure); this module only fans it out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raysoup import storage
from raysoup.checkpoints import read_manifest
from raysoup.checkpoints.ingredient import weights_path
from raysoup.checkpoints.tensorfile import open_tensors
from raysoup.faults import failpoint
from raysoup.orchestration import metrics
from raysoup.reduce import (
    Blend,
    add_into,
    apply_task_vector,
    plan_shards,
    shard_filename,
    task_vectors,
    tensor_nbytes,
    write_index,
    write_shard,
)
from raysoup.reduce.merge import TensorMerge
from raysoup.workdir import write_recipe_file

# Where reduction tasks run: Ray's default placement, or the CPUs the soup stage reserved for
# them (the task options `reserved_cpus` sets while its block runs). A ContextVar scoped to that
# block, not a parameter: the recipes reach the tasks through several layers (souping, the
# kitchen, soup_files) that have no reason to know about placement.
_placement: ContextVar[dict | None] = ContextVar("raysoup_reduction_placement", default=None)
RESERVE_WAIT_S = 600


def placed(fn):
    """Remote function `fn` with the reduction placement in force."""
    options = _placement.get()
    return fn.options(**options) if options else fn


def soup_cpus(total: float, actors: int, per_actor: float, shards: int) -> tuple[int, float | None]:
    """(whole CPUs to reserve for reduction tasks, CPUs per scoring actor or None = as
    configured) while the soup stage keeps `actors` eval actors alive beside its reductions.

    Actors that must shrink get whole CPUs, or 1/k of one, so that they fill whole CPUs
    exactly wherever Ray puts them; with no CPU left beside the reservation they hold none
    (a 1-CPU cluster: scoring and reducing then take turns)."""
    reserve = int(max(1, min(shards, math.floor(total - actors * per_actor))))
    left = math.floor(total - reserve)
    if actors * per_actor <= left:
        return reserve, None
    if left < 1:
        return reserve, 0.0
    share = left // actors if left >= actors else 1 / math.ceil(actors / left)
    return reserve, min(per_actor, share)


@contextmanager
def reserved_cpus(count: int, wait_s: float | None = None) -> Iterator[None]:
    """Run this module's reduction tasks in `count` reserved 1-CPU bundles while the block runs.

    The soup stage's eval actors stay alive during reductions. Without a reservation Ray may
    spread them so that no node keeps a whole CPU free, and every reduction task waits forever.
    Raises TimeoutError if the bundles cannot be placed within `wait_s` (default RESERVE_WAIT_S), naming what was asked and what is free."""
    pg = placement_group([{"CPU": 1}] * count, strategy="PACK")
    limit = RESERVE_WAIT_S if wait_s is None else wait_s
    ready, _ = ray.wait([pg.ready()], timeout=limit)
    if not ready:
        remove_placement_group(pg)
        raise TimeoutError(
            f"could not reserve {count} CPU(s) for the soup's reduction tasks within {limit:.0f} s "
            f"(cluster CPUs {ray.cluster_resources().get('CPU', 0)}, available "
            f"{ray.available_resources().get('CPU', 0)}): lower eval.num_actors or "
            f"eval.cpus_per_actor, or add CPUs")
    token = _placement.set(
        {"scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=pg)})
    try:
        yield
    finally:
        _placement.reset(token)
        remove_placement_group(pg)


def ingredient_shards(ingredient_dir: Path, num_shards: int) -> list[list[str]]:
    """Balanced shards of tensor names, planned from an ingredient manifest (no tensor reads)."""
    return plan_shards(tensor_nbytes(read_manifest(ingredient_dir)["tensors"]), num_shards)


def _same_float_mode() -> None:
    # Eval actors flush denormals (a slow path on CPUs otherwise); soup arithmetic must use the
    # same mode everywhere, or a greedy candidate and its written soup could differ in a bit.
    torch.set_flush_denormal(True)


def _measured(shard: dict, ingredients: int, start: float) -> dict:
    """Report the float32 bytes a task accumulated (metrics); returns `shard` unchanged."""
    nbytes = ingredients * sum(a.nbytes for a in shard.values())
    metrics.reduced(nbytes, time.perf_counter() - start)
    return shard


def _float32_bytes(first: Path, names: list[str]) -> int:
    """The bytes of `names` as a reduction holds them (floating tensors in float32)."""
    with open_tensors(weights_path(first)) as h:
        return sum(math.prod(e.shape) * (4 if e.dtype.is_floating_point else e.dtype.itemsize)
                   for e in (h.entries[n] for n in names if n in h.entries))


def as_blend(weights: list[float] | Blend, tensor_weights: dict | None = None,
             integers_from: int | None = None) -> Blend:
    """A `Blend` as given, or the weighted average that `weights` (+ per-tensor ones) describe."""
    if isinstance(weights, Blend):
        return weights
    return Blend(tuple(weights), tensor_weights, integers_from=integers_from)


# Here, not beside its caller in kitchen.py: a task worker imports the task's module, and the
# kitchen's imports pull in the eval actors' model code (open_clip, ~3 CPU-s per worker).
@ray.remote(max_retries=2)
def _per_tensor(fn, paths: list[str], names: list[str]) -> dict:
    _same_float_mode()
    return fn([Path(p) for p in paths], names)


@ray.remote(max_retries=2)
def _reduce_to_file(paths: list[str], blend: Blend, names: list[str], out: str,
                    dtypes: dict[str, str]) -> str:
    _same_float_mode()
    failpoint("reduce.shard")  # a worker lost mid-task: Ray retries it (max_retries)
    start = time.perf_counter()
    # Each tensor streamed into the file as it is reduced: no shard in memory (Blend.write_shard);
    # the seconds recorded are the reduction and its write
    digest = blend.write_shard([Path(p) for p in paths], names, Path(out), dtypes)
    metrics.reduced(len(paths) * _float32_bytes(Path(paths[0]), names),
                    time.perf_counter() - start)
    return digest


@ray.remote(max_retries=2)
def _reduce(paths: list[str], blend: Blend, names: list[str]):
    _same_float_mode()
    start = time.perf_counter()
    return _measured(blend.shard([Path(p) for p in paths], names), len(paths), start)


def reduce_to_refs(paths: list[Path], blend: list[float] | Blend, plan: list[list[str]],
                   tensor_weights: dict[str, list[float]] | None = None,
                   integers_from: int | None = None) -> list:
    """The blend of `paths` shard-parallel into the object store (bit-identical to
    `write_soup`'s shards); `blend` may be plain weights (+ `tensor_weights`)."""
    blend = as_blend(blend, tensor_weights, integers_from)
    task = placed(_reduce)
    return [task.remote([str(p) for p in paths], blend.for_shard(names), names) for names in plan]


@ray.remote(max_retries=2)
def _task_vectors(paths: list[str], base: str, names: list[str], merge: TensorMerge):
    _same_float_mode()
    start = time.perf_counter()
    return _measured(task_vectors([Path(p) for p in paths], Path(base), names, merge),
                     len(paths) + 1, start)


@ray.remote(max_retries=2)
def _apply(base: str, taus: dict, scale: float, names: list[str]):
    _same_float_mode()
    return apply_task_vector(Path(base), taus, scale, names)


def task_vector_refs(base: Path, paths: list[Path], merge: TensorMerge,
                     plan: list[list[str]]) -> list:
    """merge(τ_1..τ_N) per shard into the object store (integers from the first ingredient)."""
    task = placed(_task_vectors)
    return [task.remote([str(p) for p in paths], str(base), names, merge) for names in plan]


def apply_refs(base: Path, tau_refs: list, scale: float, plan: list[list[str]]) -> list:
    """θ_0 + scale·τ per shard from `task_vector_refs`: the same bits `Blend(merge=...)` writes."""
    task = placed(_apply)
    return [task.remote(str(base), ref, scale, names)
            for ref, names in zip(tau_refs, plan, strict=True)]


@ray.remote(max_retries=2)
def _add(acc, path: str, names: list[str]):
    _same_float_mode()
    start = time.perf_counter()
    return _measured(add_into(acc, Path(path), names), 1, start)


def add_ingredient(sum_refs: list | None, path: Path, plan: list[list[str]]) -> list:
    """Running sum + θ(path), shard-parallel; returns new per-shard object refs."""
    accs = sum_refs or [None] * len(plan)
    return [placed(_add).remote(acc, str(path), names)
            for acc, names in zip(accs, plan, strict=True)]


def write_soup(out_dir: Path, paths: list[Path], blend: list[float] | Blend,
               plan: list[list[str]], recipe: dict,
               tensor_weights: dict[str, list[float]] | None = None,
               integers_from: int | None = None) -> Path:
    """Reduce into `out_dir` (shards + index + recipe.json), complete or absent: everything is
    written into a temporary sibling directory that is renamed into place last.
    `blend`: a `Blend`, or plain weights (+ per-tensor `tensor_weights`, see `reduce_shard`)."""
    blend = as_blend(blend, tensor_weights, integers_from)
    blend.check({n for names in plan for n in names})
    with storage.atomic_dir(out_dir) as tmp:
        k = len(plan)
        files = [shard_filename(i + 1, k) for i in range(k)]
        # The soup keeps the first ingredient's dtypes (accumulation itself is float32).
        dtypes = {n: t["dtype"] for n, t in read_manifest(paths[0])["tensors"].items()}
        if storage.is_remote(out_dir):
            # A task on another node cannot write into this driver's directory: shards come
            # back through the object store and are written here one at a time (peak memory
            # one shard); the finished directory is uploaded by atomic_dir.
            refs = reduce_to_refs(paths, blend, plan)
            digests = {}
            for i, f in enumerate(files):
                digests[f] = write_shard(tmp / f, ray.get(refs[i]), dtypes)
                refs[i] = None  # frees the shard in the object store
        else:
            task = placed(_reduce_to_file)
            refs = [task.remote([str(p) for p in paths], blend.for_shard(names), names,
                                str(tmp / f), dtypes)
                    for f, names in zip(files, plan, strict=True)]
            digests = dict(zip(files, ray.get(refs), strict=True))
        # each shard's sha256 as its writer hashed it: the index does not read the soup again
        index = write_index(tmp, list(zip(files, plan, strict=True)), {"recipe": recipe["recipe"]},
                            digests)
        recipe = {**recipe, "num_shards": k, "shards_sha256": index["sha256"]}
        write_recipe_file(tmp, recipe)
    return out_dir
