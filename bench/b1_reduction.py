"""B1: uniform soup of N ingredients — raysoup's reduction vs the seed-style loop vs a raw read.

Contenders run one at a time, each in a fresh interpreter right after the same page-cache
warm-up (the files it reads — safetensors or .pt — read once). Peak RSS is VmHWM minus the RSS after
imports; touched mmap pages count. The Ray path (`orchestration.reduce_tasks.write_soup`: shard
tasks that also write the output shards, index and sha256) is timed in the driver.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import torch

from bench.common import best_of, gib, ratio, timed, warm
from bench.probe import run_probe
from raysoup.checkpoints import read_manifest, write_ingredient
from raysoup.reduce import tensor_nbytes
from raysoup.workdir import WEIGHTS_FILE, Workdir

log = logging.getLogger(__name__)


def make_ingredients(root: Path, model_name: str, n: int, seed: int = 0) -> list[Path]:
    """n ingredients of a randomly initialised open_clip model, each with seeded noise added;
    safetensors (the ingredient format) plus a torch.save .pt copy for the seed-style loop."""
    from raysoup.models.factory import build_clip

    torch.manual_seed(seed)
    base = build_clip(model_name).state_dict()
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(seed + 1 + i)
        state = {k: (v + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype)).contiguous()
                 if v.is_floating_point() else v.clone() for k, v in base.items()}
        path = root / f"ingredient-{i:02d}"
        write_ingredient(path, state, {"kind": "ingredient", "model_name": model_name})
        torch.save(state, path / "model.pt")
        paths.append(path)
        del state
    return paths


def run(root: Path, model_name: str, n: int, shard_counts: tuple[int, ...], repeats: int,
        device: str = "cpu", with_ray: bool = True) -> dict:
    from raysoup.reduce import plan_shards

    root.mkdir(parents=True, exist_ok=True)
    try:
        secs, paths = timed(make_ingredients, Workdir(root).ingredients, model_name, n)
        log.info("B1: %d ingredients of %s written in %.1f s", n, model_name, secs)
        manifest = read_manifest(paths[0])
        nbytes = tensor_nbytes(manifest["tensors"])
        model_bytes = sum(nbytes.values())
        st_files = [p / WEIGHTS_FILE for p in paths]
        pt_files = [p / "model.pt" for p in paths]

        def probe(contender: str, files: list[Path], args: dict) -> dict:
            def once() -> dict:
                warm(files)  # the files this contender reads, right before it runs
                return run_probe(contender, args)
            return best_of(repeats, once)

        floor = probe("raw_read", st_files, {"files": [str(f) for f in st_files]})
        seed = probe("seed_uniform", pt_files,
                     {"pt_files": [str(f) for f in pt_files], "device": device})
        ours = {}
        for k in shard_counts:
            ours[k] = probe("raysoup_reduce", st_files, {
                "paths": [str(p) for p in paths], "plan": plan_shards(nbytes, k), "device": device})
        base = ours[min(shard_counts)]
        ties = probe("raysoup_ties", st_files, {"paths": [str(p) for p in paths],
                                               "plan": plan_shards(nbytes, min(shard_counts))})
        out = {
            "model": model_name, "ingredients": n, "model_bytes": model_bytes,
            "params": sum(math.prod(t["shape"]) for t in manifest["tensors"].values()),
            "device": device, "repeats": repeats,
            "raysoup_contender": "raysoup.reduce.reduce_shard" if device == "cpu" else
            "bench prototype: reduce_shard's streaming order, accumulator on the GPU "
            "(raysoup.reduce is CPU-only)",
            "floor_s": floor["seconds"], "seed_s": seed["seconds"], "raysoup_s": base["seconds"],
            "floor_ratio": ratio(base["seconds"], floor["seconds"]),
            "seed_speedup": ratio(seed["seconds"], base["seconds"]),
            "rss_ratio": ratio(base["peak_rss_delta"], model_bytes),
            "seed_rss_ratio": ratio(seed["peak_rss_delta"], model_bytes),
            "ties_s": ties["seconds"],
            "ties_floor_ratio": ratio(ties["seconds"], floor["seconds"]),
            "ties_rss_ratio": ratio(ties["peak_rss_delta"], model_bytes),
            # numba's per-process start-up, paid before the timer like imports (probe.py)
            "ties_numba_init_s": ties["numba_init_s"],
            "floor_rss_ratio": ratio(floor["peak_rss_delta"], model_bytes),
            # what each timed reduction ran: I/O route per tensor, compiled passes, compile time
            "ran": {who: {k: r[k] for k in ("routes", "compiled", "compile_in_timer_s")}
                    for who, r in (("raysoup", base), ("ties", ties))},
            "pure_by_shards": {str(k): {"seconds": r["seconds"], "runs": r["runs"],
                                        "rss_ratio": ratio(r["peak_rss_delta"], model_bytes)}
                               for k, r in ours.items()},
        }
        if with_ray and device == "cpu":
            out["ray_write_soup_s"] = _ray_path(root, paths, shard_counts, repeats, st_files)
        log.info("B1: floor %.2fs  raysoup %.2fs  seed %.2fs  peak Δ: raysoup %s seed %s "
                 "(model %s)", floor["seconds"], base["seconds"], seed["seconds"],
                 gib(base["peak_rss_delta"]), gib(seed["peak_rss_delta"]), gib(model_bytes))
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ray_path(root: Path, paths: list[Path], shard_counts, repeats: int, files) -> dict:
    from raysoup.orchestration.reduce_tasks import ingredient_shards, write_soup

    out = {}
    for k in shard_counts:
        runs = []
        for _ in range(max(1, repeats)):
            warm(files)
            secs, soup = timed(write_soup, root / f"soup-{k}", paths, [1.0 / len(paths)] * len(paths),
                               ingredient_shards(paths[0], k), {"recipe": "bench"})
            runs.append(secs)
            shutil.rmtree(soup, ignore_errors=True)
        out[str(k)] = min(runs)
    return out
