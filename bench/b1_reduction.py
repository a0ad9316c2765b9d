"""B1: uniform soup of N ingredients — raysoup's reduction vs the seed-style loop vs a raw read.

Contenders run one at a time, each in a fresh interpreter right after the same page-cache
warm-up (the files it reads — safetensors or .pt — read once). Peak RSS is VmHWM minus the RSS after
imports; touched mmap pages count. The Ray path (`orchestration.reduce_tasks.write_soup`: shard
tasks that also write the output shards, index and sha256) is timed in the driver.
"""

from __future__ import annotations

import logging
import math
import os
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
        device: str = "cpu", with_ray: bool = True, routes_in_small_pages: bool = True,
        output_paths: bool = False,
        forced: dict[str, tuple[str, ...]] | None = None,
        ray_shard_counts: tuple[int, ...] | None = None) -> dict:
    """`output_paths`: the uniform soup's output side by side (`_output_paths`); `forced`:
    route -> the contenders ("raysoup", "ties") timed with that route forced (default: both on
    every route); `ray_shard_counts`: the shard counts of the Ray path (default:
    `shard_counts`)."""
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

        def probe(contender: str, files: list[Path], args: dict, route: str = "auto") -> dict:
            def once() -> dict:
                warm(files)  # the files this contender reads, right before it runs
                return run_probe(contender, args, route=route)
            return best_of(repeats, once)

        def by_route(floor_s: float) -> dict:
            # uniform (1 shard) and TIES with each I/O route forced, beside the chosen one
            uniform_args = {"paths": [str(p) for p in paths], "device": device,
                            "plan": plan_shards(nbytes, min(shard_counts))}
            ties_args = {"paths": [str(p) for p in paths],
                         "plan": plan_shards(nbytes, min(shard_counts))}
            out = {}
            for route, who in (forced or {r: CONTENDERS for r in ROUTES}).items():
                r: dict = {"routes": {}}
                if "raysoup" in who:
                    u = probe("raysoup_reduce", st_files, uniform_args, route)
                    r.update(raysoup_s=u["seconds"], floor_ratio=ratio(u["seconds"], floor_s))
                    r["routes"]["raysoup"] = u["routes"]
                if "ties" in who:
                    t = probe("raysoup_ties", st_files, ties_args, route)
                    r.update(ties_s=t["seconds"], ties_floor_ratio=ratio(t["seconds"], floor_s))
                    r["routes"]["ties"] = t["routes"]
                out[route] = r
            return out

        floor = probe("raw_read", st_files, {"files": [str(f) for f in st_files]})
        shapes = [t["shape"] for t in manifest["tensors"].values()
                  if t["dtype"] in ("F32", "float32")]
        floor_out = probe("raw_read", st_files, {"files": [str(f) for f in st_files],
                                                 "out_shapes": shapes})
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
            # the floor plus one model's output written to fresh memory (see contenders.py)
            "floor_with_output_s": floor_out["seconds"],
            "output_floor_ratio": ratio(base["seconds"], floor_out["seconds"]),
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
            # the route `auto` chose (and what each cost where it measured them), then each
            # route forced
            "io_calibration": {"raysoup": base["io_calibration"], "ties": ties["io_calibration"]},
            "by_route": by_route(floor["seconds"]) if device == "cpu" else {},
        }
        out["cpu"] = _cpu_figures(floor, base, ties)
        if output_paths and device == "cpu":
            out["output"] = _output_paths(probe, root, st_files, paths, plan_shards(nbytes, 1),
                                          floor, base, model_bytes)
        if with_ray and device == "cpu":
            out["ray_write_soup_s"] = _ray_path(root, paths, ray_shard_counts or shard_counts,
                                                repeats, st_files)
        if device == "cpu":
            # The slow condition: the same files in the page cache as 4 KiB pages
            huge_before = _file_huge_pages()
            cache_in_small_pages(st_files)
            small = probe("raw_read", st_files, {"files": [str(f) for f in st_files]})
            u = probe("raysoup_reduce", st_files, {"paths": [str(p) for p in paths],
                      "plan": plan_shards(nbytes, min(shard_counts)), "device": device})
            t = probe("raysoup_ties", st_files, {"paths": [str(p) for p in paths],
                      "plan": plan_shards(nbytes, min(shard_counts))})
            out["small_pages"] = {
                "floor_s": small["seconds"], "raysoup_s": u["seconds"], "ties_s": t["seconds"],
                "floor_ratio": ratio(u["seconds"], small["seconds"]),
                "ties_floor_ratio": ratio(t["seconds"], small["seconds"]),
                "io_calibration": {"raysoup": u["io_calibration"], "ties": t["io_calibration"]},
                "routes": {"raysoup": u["routes"], "ties": t["routes"]},
                # FileHugePages (/proc/meminfo) before and after: the files left 2 MiB folios
                "file_huge_pages_kib": [huge_before, _file_huge_pages()],
                "cpu": _cpu_figures(small, u, t),
                "by_route": by_route(small["seconds"]) if routes_in_small_pages else {}}
            out["small_pages_floor_ratio"] = out["small_pages"]["floor_ratio"]
            out["small_pages_ties_floor_ratio"] = out["small_pages"]["ties_floor_ratio"]
        log.info("B1: floor %.2fs  raysoup %.2fs  seed %.2fs  peak Δ: raysoup %s seed %s "
                 "(model %s)", floor["seconds"], base["seconds"], seed["seconds"],
                 gib(base["peak_rss_delta"]), gib(seed["peak_rss_delta"]), gib(model_bytes))
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


ROUTES = ("mapping", "read")
CONTENDERS = ("raysoup", "ties")


def _output_paths(probe, root: Path, st_files, paths, plan, floor: dict, base: dict,
                  model_bytes: int) -> dict:
    """Where the uniform soup's output goes, side by side (1 shard): kept in fresh memory (the
    headline), into one reused buffer and dropped, and written as a shard file — streamed into
    it as reduced (what a Ray shard task does) or reduced in memory first; wall and CPU."""
    args = {"paths": [str(p) for p in paths], "plan": plan}
    reused = probe("raysoup_reused", st_files, args)
    written = {mode: probe("raysoup_write", st_files, {**args, "out_dir": str(root / "written"),
                                                        "stream": mode == "streamed"})
               for mode in ("in_memory", "streamed")}
    if written["in_memory"]["sha256"] != written["streamed"]["sha256"]:
        raise RuntimeError("B1: the streamed shard differs from the one written from memory")
    rows = {"in_memory": base, "reused_buffer": reused,
            **{f"written_{mode}": r for mode, r in written.items()}}
    return {name: {"seconds": r["seconds"], "cpu_s": r["cpu_best"],
                   "floor_ratio": ratio(r["seconds"], floor["seconds"]),
                   "cpu_floor_ratio": ratio(r["cpu_best"], floor["cpu_best"]),
                   "rss_ratio": ratio(r["peak_rss_delta"], model_bytes)}
            for name, r in rows.items()}


def _cpu_figures(floor: dict, uniform: dict, ties: dict) -> dict:
    """The same ratios from CPU time (the least each contender used in its runs): what the
    headline wall-time ratios are on an idle machine, and what survives a busy one."""
    return {"floor_s": floor["cpu_best"], "raysoup_s": uniform["cpu_best"],
            "ties_s": ties["cpu_best"],
            "floor_ratio": ratio(uniform["cpu_best"], floor["cpu_best"]),
            "ties_floor_ratio": ratio(ties["cpu_best"], floor["cpu_best"])}


def cache_in_small_pages(files: list[Path]) -> None:
    """Put the files (this benchmark's own) back in the page cache a 4 KiB page at a time: each
    is flushed and dropped from the cache (`POSIX_FADV_DONTNEED`, this file only) and read again
    with readahead off (`POSIX_FADV_RANDOM`), which caches single pages instead of large
    folios — the page cache of kernels and file systems without large folios, where mapping a
    file costs a page-table entry per 4 KiB. The global page cache is left alone."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            buf, offset = bytearray(4 << 20), 0
            while n := os.preadv(fd, [buf], offset):
                offset += n
        finally:
            os.close(fd)


def _file_huge_pages() -> int | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("FileHugePages:"):
            return int(line.split()[1])
    return None


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
