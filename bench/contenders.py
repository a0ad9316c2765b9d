"""B1 contenders, each run alone in a fresh interpreter by `probe.py`.

- `raw_read`: the floor — read every byte of the safetensors files, no arithmetic (and, for
  `floor_with_output`, one model's tensors written to fresh memory).
- `raysoup_reduce`: the real pure reduction (`raysoup.reduce.reduce_shard`) over a shard plan,
  shards one after another in this process; optionally writes each shard (`write_shard`).
- `raysoup_reused`: the same reduction into one reused buffer, its tensors dropped (what the
  reduction costs without a soup in fresh memory).
- `raysoup_write`: a uniform soup written as shard files the way a Ray shard task writes it
  (streamed into the file as reduced, `Blend.write_shard`) or reduced in memory first
  (`write_shard(reduce_shard(...))`); sha256 and fsync included.
- `raysoup_ties`: TIES (an element-wise merge, two passes per tensor) through the same shard
  function.
- `seed_uniform`: the paper's uniform soup loop — `torch.load` each ingredient's .pt file and
  `soup = {k: v / N + soup.get(k, 0)}`.
"""

from __future__ import annotations

from pathlib import Path

import torch

_CHUNK = 1 << 22


def raw_read(files: list[str], out_shapes: list[list[int]] | None = None) -> dict:
    """The floor; with `out_shapes`, also one model's float32 tensors in fresh memory, written
    once (what any reduction that hands its soup back in memory pays on top of its reads: a
    page fault per 4 KiB and a write pass)."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    total = 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    kept = [torch.empty(shape, dtype=torch.float32).fill_(0.0) for shape in out_shapes or ()]
    return {"bytes": total, "out_tensors": len(kept)}


def raysoup_reduce(paths: list[str], plan: list[list[str]], out_dir: str | None = None,
                   device: str = "cpu") -> dict:
    from raysoup.reduce import reduce_shard, shard_filename, write_shard

    weights = [1.0 / len(paths)] * len(paths)
    soup = {}
    for k, names in enumerate(plan, start=1):
        if device == "cpu":
            shard = reduce_shard([Path(p) for p in paths], weights, names)
        else:
            shard = _stream_on_device(paths, weights, names, device)
        if out_dir is not None:
            write_shard(Path(out_dir) / shard_filename(k, len(plan)), shard)
        else:
            soup.update(shard)  # keep the soup in memory, like the seed-style loop does
    if device != "cpu":
        torch.cuda.synchronize()
    return {"tensors": len(soup) or sum(len(n) for n in plan)}


def raysoup_reused(paths: list[str], plan: list[list[str]]) -> dict:
    from raysoup.reduce.shard_reduce import reduce_tensors

    weights = [1.0 / len(paths)] * len(paths)
    count = 0
    for names in plan:
        for _ in reduce_tensors([Path(p) for p in paths], weights, names, reuse=True):
            count += 1
    return {"tensors": count}


def raysoup_write(paths: list[str], plan: list[list[str]], out_dir: str, stream: bool) -> dict:
    from raysoup.checkpoints import read_manifest
    from raysoup.reduce import Blend, shard_filename, write_shard

    files = [Path(p) for p in paths]
    blend = Blend((1.0 / len(paths),) * len(paths))
    dtypes = {n: t["dtype"] for n, t in read_manifest(files[0])["tensors"].items()}
    digests = []
    for k, names in enumerate(plan, start=1):
        out = Path(out_dir) / shard_filename(k, len(plan))
        digests.append(blend.write_shard(files, names, out, dtypes) if stream
                       else write_shard(out, blend.shard(files, names), dtypes))
    return {"sha256": digests}


def raysoup_ties(paths: list[str], plan: list[list[str]], density: float = 0.2) -> dict:
    """TIES over the same ingredients through the real shard function (`raysoup.reduce.Blend`,
    as the Ray shard tasks run it): θ_0 = the first file, every file an ingredient (its own τ is
    0), λ = 1; the soup stays in memory like `raysoup_reduce`'s."""
    from raysoup.reduce import Blend
    from raysoup.soup.ties import TiesMerge

    blend = Blend(merge=TiesMerge(density), scale=1.0)
    files = [Path(paths[0]), *(Path(p) for p in paths)]
    soup = {}
    for names in plan:
        soup.update(blend.shard(files, names))
    return {"tensors": len(soup)}


def _stream_on_device(paths, weights, names, device):
    # Bench prototype for GPUs (raysoup.reduce is CPU-only): the same streaming order as
    # reduce_shard — one float32 accumulator per tensor, ingredients added in order — with the
    # accumulator on the device.
    from safetensors import safe_open

    from raysoup.workdir import WEIGHTS_FILE

    handles = [safe_open(str(Path(p) / WEIGHTS_FILE), framework="pt") for p in paths]
    out = {}
    for name in names:
        acc = handles[0].get_tensor(name).to(device, torch.float32, non_blocking=True)
        for h in handles[1:]:
            acc.add_(h.get_tensor(name).to(device, non_blocking=True))
        out[name] = acc.mul_(weights[0])
    return out


def seed_uniform(pt_files: list[str], device: str = "cpu") -> dict:
    n = len(pt_files)
    soup: dict[str, torch.Tensor] = {}
    for f in pt_files:
        state = torch.load(f, map_location=device, weights_only=True)
        soup = {k: v / n + soup.get(k, 0) for k, v in state.items()}
        del state
    if device != "cpu":
        torch.cuda.synchronize()
    return {"tensors": len(soup)}
