"""Run the selected benchmarks, print each figure, write one JSON object (`python -m bench`)."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

ALL = ("B1", "B2", "B3", "B4", "B6", "S")

# name -> (quick, full) sizes
SIZES = {
    # quick: routes forced in the usual page cache only, TIES on the mapping and the uniform
    # soup on the reads, and the Ray path at one shard count (every probe is a fresh
    # interpreter, ~3 CPU-s of imports: the suite's smoke run keeps to the probes it checks)
    "B1": ({"model_name": "raysoup-tiny-vit", "n": 3, "shard_counts": (1, 2, 4), "repeats": 1,
            "routes_in_small_pages": False,
            "forced": {"mapping": ("ties",), "read": ("raysoup",)}, "ray_shard_counts": (2,)},
           {"model_name": "ViT-B-32", "n": 8, "shard_counts": (1, 2, 4), "repeats": 3,
            "output_paths": True}),
    # quick: B2 without B6's measured 2-actor greedy, B3 with one 1-thread actor against a
    # 1-thread loop only (the same functions, called with other counts: each actor is a
    # process importing torch and open_clip, ~5 CPU-s)
    "B2": ({"n": 5, "n_images": 200, "measure_m2": False}, {"n": 12, "n_images": 1000}),
    "B3": ({"model_name": "raysoup-tiny-rn", "classes": 10, "n_models": 3, "n_images": 500,
            "image_size": 32, "batch_size": 250, "one_thread_layout": False, "threads": 1},
           {"model_name": "raysoup-tiny-rn", "classes": 10, "n_models": 8, "n_images": 4000,
            "image_size": 32, "batch_size": 500}),
}
CUDA_B3 = {"model_name": "ViT-B-32", "classes": 1000, "n_models": 4, "n_images": 4096,
           "image_size": 224, "batch_size": 256}

HEADLINES = {
    "B1": ("floor_ratio", "seed_speedup", "rss_ratio", "seed_rss_ratio", "ties_floor_ratio",
           "ties_rss_ratio", "small_pages_floor_ratio", "small_pages_ties_floor_ratio"),
    "B2": ("seed_speedup", "same_selection"),
    "B3": ("pool_vs_bare",),
    "B4": ("overhead_ratio",),
    "S": ("train_rss_ratio", "eval_rss_ratio", "input_vs_step", "decodes_per_image",
          "input_vs_step_world", "dataloader_vs_raydata_224", "dataloader_vs_raydata_world"),
}


def machine() -> dict:
    import torch

    mem = next((int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal:")), 0)
    return {"cpus": os.cpu_count(), "memory_bytes": mem, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            **cpu(), "kernel": platform.release(),
            "transparent_hugepages": _chosen(THP / "enabled"),
            "transparent_hugepages_defrag": _chosen(THP / "defrag")}


THP = Path("/sys/kernel/mm/transparent_hugepage")


def cpu() -> dict:
    """The CPU's model name and feature flags (the first processor's, from /proc/cpuinfo)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor's block
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return {"cpu_model": fields.get("model name") or platform.processor() or None,
            "cpu_flags": fields.get("flags", "").split()}


def _chosen(path: Path) -> str | None:
    """The bracketed choice of a sysfs setting such as "always [madvise] never"."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else text.strip()


def _ray(cpus: int, gpus: int = 0) -> None:
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        # GPUs are given, not auto-detected: an actor asking for one never starts if Ray's
        # detection misses the device.
        ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False,
                 configure_logging=False,
                 log_to_driver=False)


def run(only: list[str] | None = None, quick: bool = False, workdir: Path | None = None,
        device: str = "cpu", tmp: Path | None = None) -> dict:
    import torch

    from bench import b1_reduction, evaluation, greedy, rounds, streaming, sweep

    only = list(only or ALL)
    unknown = sorted(set(only) - set(ALL))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; valid: {list(ALL)}")
    cpus = os.cpu_count() or 1
    gpus = 1.0 if device == "cuda" else 0.0
    size = 0 if quick else 1
    details: dict[str, dict] = {}
    base = Path(tmp or tempfile.gettempdir()) / f"raysoup-bench-{os.getpid()}"
    # B1 on the GPU times contenders in subprocesses only; Ray is started where it is used.
    if any(b in only for b in ("B2", "B3", "B4")) or ("B1" in only and device == "cpu"):
        _ray(cpus, torch.cuda.device_count() if device == "cuda" else 0)
    started = time.perf_counter()
    if "B1" in only:
        args = dict(SIZES["B1"][size])
        if device == "cuda":
            args["repeats"] = min(args["repeats"], 2)  # bench/gpu.sh gives B1 170 s
        details["B1"] = b1_reduction.run(base / "b1", device=device, **args)
    if "B2" in only:
        details["B2"] = greedy.run(base / "b2", workdir=workdir, gpus=gpus, **SIZES["B2"][size])
    if "B3" in only:
        args = dict(CUDA_B3 if device == "cuda" else SIZES["B3"][size])
        threads = args.pop("threads", cpus if device == "cpu" else 1)
        details["B3"] = evaluation.run(base / "b3", threads=threads, device=device, **args)
    if "B4" in only:
        details["B4"] = sweep.run(base / "b4", quick, cpus)
    if "S" in only:
        details["S"] = streaming.run(base / "s", quick)
    if "B6" in only:
        details["B6"] = rounds.run(details.get("B2", {}).get("accepted"))
        if "speculative_m2" in details.get("B2", {}):  # measured, not simulated
            details["B6"]["measured_m2"] = details["B2"]["speculative_m2"]
    out: dict = {}
    for name, keys in HEADLINES.items():
        if name in details:
            # (B1 on a GPU has no slow-condition figures)
            out.update({f"{name}.{k}": details[name][k] for k in keys if k in details[name]})
    if "B6" in details:
        out.update({f"B6.rounds.M{m}": r for m, r in details["B6"]["rounds"].items()})
        if "measured_m2" in details["B6"]:
            out["B6.m2_speedup"] = details["B6"]["measured_m2"]["speedup"]
            out["B6.m2_same_selection"] = details["B6"]["measured_m2"]["same_selection"]
    out.update({"quick": quick, "device": device, "seconds": time.perf_counter() - started,
                "machine": machine(), "details": details})
    return out


def report(result: dict) -> str:
    m = result["machine"]
    vector = [f for f in ("avx2", "avx512f", "fma") if f in m.get("cpu_flags", [])]
    lines = [(f"raysoup bench ({'quick' if result['quick'] else 'full'}, {result['device']}, "
              f"{m['cpus']} CPUs) — ratios measured side by side in this run"),
             (f"  machine: {m.get('cpu_model')} ({', '.join(vector) or 'no avx2/avx512f/fma'}),"
              f" kernel {m.get('kernel')}, transparent huge pages"
              f" {m.get('transparent_hugepages')}")]
    for key, value in result.items():
        if "." in key and not isinstance(value, dict):
            shown = f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else value
            lines.append(f"  {key:<22} {shown}")
    d = result["details"]
    if "B1" in d:
        b = d["B1"]
        lines.append(f"  B1: {b['ingredients']} x {b['model']} ({b['model_bytes'] / 2**20:.0f} MiB):"
                     f" floor {b['floor_s']:.2f}s (with one model's output in fresh memory"
                     f" {b['floor_with_output_s']:.2f}s), raysoup {b['raysoup_s']:.2f}s,"
                     f" seed-style {b['seed_s']:.2f}s, TIES {b['ties_s']:.2f}s (+"
                     f"{b['ties_numba_init_s']:.2f}s numba start-up, excluded); by shards (pure) "
                     + ", ".join(f"{k}: {v['seconds']:.2f}s" for k, v in b["pure_by_shards"].items())
                     + ("; Ray write_soup " + ", ".join(f"{k}: {v:.2f}s" for k, v in
                                                        b["ray_write_soup_s"].items())
                        if "ray_write_soup_s" in b else ""))
        lines.append("  B1 ran: " + "; ".join(
            f"{who}: tensors by route {ran['routes']}, compiled passes "
            f"{[k for k, v in ran['compiled'].items() if v['ran']]}, compiled in the timer "
            f"{[k for k, v in ran['compiled'].items() if v['compiled_in_timer']]} "
            f"({ran['compile_in_timer_s']:.2f}s)" for who, ran in b["ran"].items()))
        lines.append("  B1 CPU time: " + _cpu_line(b["cpu"]))
        if b["by_route"]:
            lines.append("  B1 routes: " + _routes_line(b))
        if "output" in b:
            lines.append("  B1 output (1 shard), wall / CPU: " + ", ".join(
                f"{k} {v['seconds']:.2f}s / {v['cpu_s']:.2f}s" for k, v in b["output"].items()))
        if "small_pages" in b:
            sp = b["small_pages"]
            lines.append(f"  B1 in 4 KiB pages: floor {sp['floor_s']:.2f}s, raysoup "
                         f"{sp['raysoup_s']:.2f}s, TIES {sp['ties_s']:.2f}s; " + _routes_line(sp))
            lines.append("  B1 in 4 KiB pages, CPU time: " + _cpu_line(sp["cpu"]))
    if "B2" in d:
        b = d["B2"]
        lines.append(f"  B2: {b['ingredients']} ingredients, {b['heldout_images']} held-out images:"
                     f" seed-style {b['seed_s']:.2f}s, raysoup {b['raysoup_s']:.2f}s"
                     f" (+{b['raysoup_actor_start_s']:.2f}s actor/worker start, excluded);"
                     f" selection {b['raysoup_selection']}")
    if "B3" in d:
        b = d["B3"]
        lines.append(f"  B3: pool {b['pool_img_s']:.0f} img/s vs bare {b['bare_img_s']:.0f} img/s"
                     f" ({b['layout']})" + (f"; 1 actor vs 1 thread: {b['pool1_vs_bare1']:.3f}"
                                             if "pool1_vs_bare1" in b else ""))
    if "B4" in d:
        b = d["B4"]
        lines.append(f"  B4: sweep {b['sweep_wall_s']:.1f}s, {b['trials']} trials Σ"
                     f" {b['sum_trial_s']:.1f}s / {b['concurrency']}; excluding Tune start-up"
                     f" {b['overhead_ratio_excl_startup']:.3f}")
    if "S" in d:
        b = d["S"]
        lines.append(
            f"  S: train peak PSS {b['train']['peak_pss_1x'] / 2**20:.0f} -> "
            f"{b['train']['peak_pss_8x'] / 2**20:.0f} MiB ({b['images_1x']} -> {b['images_8x']} "
            f"images); eval {b['eval_1x']['peak_pss'] / 2**20:.0f} -> "
            f"{b['eval_8x']['peak_pss'] / 2**20:.0f} MiB; input {b['input_224']['input_img_s']:.0f}"
            f" vs step {b['input_224']['step_img_s']:.0f} img/s (224 px), Ray Data "
            f"{b['raydata_224']['img_s']:.0f} img/s; world input {b['input_world']['input_img_s']:.0f}"
            f" vs step {b['input_world']['step_img_s']:.0f}, Ray Data "
            f"{b['raydata_world']['img_s']:.0f}; decoded {b['decodes']['decoded']} for "
            f"{b['decodes']['eval_images']} eval images, {b['decodes']['models']} models; "
            f"500x375 JPEG decode + crop {b['per_image_500px']['raysoup_ms']:.2f} ms/img (PIL "
            f"{b['per_image_500px']['pil_ms']:.2f})")
    if "B6" in d:
        lines.append(f"  B6 (simulated): {json.dumps({k: v for k, v in d['B6'].items() if k != 'note'})}")
    return "\n".join(lines)


def _routes_line(b: dict) -> str:
    """Each route's seconds (uniform / TIES) and the route `auto` chose with its measurement."""
    chosen = "; ".join(f"{who} chose {c['route']} (mapping {c['mapping_ns_per_mib'] / 1e3:.0f}"
                       f" vs read {c['read_ns_per_mib'] / 1e3:.0f} µs/MiB)"
                       for who, cal in b["io_calibration"].items() for c in cal.values())
    forced = ", ".join(f"{route}: {_secs(r.get('raysoup_s'))} / {_secs(r.get('ties_s'))}"
                       for route, r in b["by_route"].items()) or "(not forced here)"
    return f"uniform / TIES by route {forced}; {chosen or 'no tensor large enough to measure'}"


def _secs(s: float | None) -> str:
    return "-" if s is None else f"{s:.2f}s"


def main(json_path: Path | None, quick: bool, only: list[str] | None, workdir: Path | None,
         device: str) -> int:
    result = run(only, quick, workdir, device)
    print(report(result))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def _cpu_line(c: dict) -> str:
    return (f"floor {c['floor_s']:.2f}s, raysoup {c['raysoup_s']:.2f}s (floor_ratio "
            f"{c['floor_ratio']:.2f}), TIES {c['ties_s']:.2f}s (ties_floor_ratio "
            f"{c['ties_floor_ratio']:.2f})")
