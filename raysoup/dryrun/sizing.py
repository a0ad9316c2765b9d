"""Sizing of a job: eval cache bytes, memory per trial and per eval actor, GPU-hours."""

from __future__ import annotations

from dataclasses import dataclass

from raysoup.config import DEFAULT_MEMORY_SHARE, ExperimentCfg
from raysoup.dryrun.sources import Sizes
from raysoup.search.distributions import as_dist

GiB, MiB = 2**30, 2**20
# Measured img/s per GPU for open_clip architectures (the benchmarks, on one NVIDIA H200):
# train = the fine-tuning loop, bf16, batch 256, images already in memory; eval = one Ray eval
# actor, bf16. A real input pipeline may feed less than this.
THROUGHPUT = {"ViT-B-32": {"gpu": "H200", "train": 4547, "eval": 6944}}
# What a process costs before any data: importing torch alone takes ~0.65 GB RSS.
RUNTIME_BYTES = int(0.65 * 2**30)
# Weights + gradients + AdamW's two moments, fp32 (4 x 4 bytes per parameter).
TRAIN_BYTES_PER_PARAM = 16


@dataclass
class Needs:
    trial: int | None  # host bytes one trial needs
    actor: int | None  # host bytes one eval actor needs
    train_decoded: int | None  # the train split decoded at the model's size


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 4 else f"{n / MiB:.1f} MiB"


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _vision(cfg: ExperimentCfg) -> tuple[int | None, int | None, dict]:
    """(input size S, image-tower parameters, vision_cfg); the tower is built on torch's meta
    device: no memory, no weights."""
    import torch
    from open_clip.model import _build_vision_tower

    from raysoup.models.factory import ModelLoadError, model_config

    try:
        arch = model_config(cfg.model.name)
    except ModelLoadError:
        return None, None, {}
    vision = arch.get("vision_cfg", {})
    size = vision.get("image_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    try:
        with torch.device("meta"):
            tower = _build_vision_tower(arch["embed_dim"], vision, arch.get("quick_gelu", False))
        params = sum(p.numel() for p in tower.parameters())
    except Exception:  # noqa: BLE001 - an architecture that cannot build on meta: no estimate
        params = None
    return size, params, {**vision, "embed_dim": arch.get("embed_dim")}


def sizing_lines(cfg: ExperimentCfg, sizes: Sizes) -> tuple[list[str], Needs]:
    """The sizing section and what one trial / eval actor needs (for the cluster's nodes)."""
    size, vparams, vision = _vision(cfg)
    lines = ["sizing       from the sources' listings and footers; memory figures are estimates"]
    evals = sizes.evals
    lines.append("  images     train " + _count(sizes.train) + f" (held-out ~{_count(evals['heldout'])}"
                 " of them); " + ", ".join(f"{k} {_count(v)}" for k, v in evals.items()
                                           if k != "heldout"))
    if size is None:
        return lines + ["  (model input size unknown: no memory or cache estimates)"], \
            Needs(None, None, None)
    per_image = 3 * size * size
    known = [v for v in evals.values() if v is not None]
    cache = sum(known) * per_image
    lines.append(f"  eval cache {gib(cache)} ({_count(sum(known))} images x 3x{size}x{size} "
                 f"uint8{', splits of unknown size left out' if len(known) < len(evals) else ''})")
    params = None
    if vparams is not None and sizes.classes is not None:
        params = vparams + (vision["embed_dim"] or 0) * sizes.classes + sizes.classes  # + head
    train_decoded = None if sizes.train is None else sizes.train * per_image
    trial = actor = None
    if params is not None:
        trial = _trial_bytes(cfg, params, size, lines)
        actor = _actor_bytes(cfg, params, size, vision, lines)
    if train_decoded is not None:
        budget = ("data.memory_budget_mb" if cfg.data.memory_budget_mb is not None
                  else f"the default budget ({DEFAULT_MEMORY_SHARE:.0%} of the node's memory)")
        lines.append(f"  train      decoded {gib(train_decoded)}: held in a trial's memory if "
                     f"it fits {budget}, else streamed")
    lines.extend(gpu_hours(cfg, sizes))
    return lines, Needs(trial, actor, train_decoded)


def _trial_bytes(cfg: ExperimentCfg, params: int, size: int, lines: list[str]) -> int:
    """A trial's host memory: training state, prefetched batches, the runtime."""
    s, per_image = cfg.sweep, 3 * size * size
    workers = cfg.data.loader_workers or max(1, int(s.resources_per_trial.cpu) - 1)
    prefetch = s.base.batch_size * per_image * (workers * 2 + 2)
    trial = params * TRAIN_BYTES_PER_PARAM + prefetch + RUNTIME_BYTES
    lines.append(f"  per trial  ~{gib(trial)}: weights+grads+AdamW {gib(params * 16)} "
                 f"({params / 1e6:.1f}M params x 16 B) + prefetched batches {gib(prefetch)} "
                 f"({s.base.batch_size} x 3x{size}x{size} uint8 x {workers * 2 + 2}: "
                 f"{workers} loader workers x 2 + 2) + runtime {gib(RUNTIME_BYTES)}")
    return trial


def _actor_bytes(cfg: ExperimentCfg, params: int, size: int, vision: dict,
                 lines: list[str]) -> int:
    """An eval actor's host memory: the fp32 model, a cache shard, a batch, the runtime."""
    e, per_image = cfg.eval, 3 * size * size
    shard = cfg.data.eval_cache_shard * per_image
    batch = e.batch_size * per_image * 4  # float32 model input
    act = 0
    if vision.get("patch_size") and vision.get("width"):
        # One block's live tensors at a time under no_grad: ~(mlp_ratio + 4) x width floats
        # per token.
        tokens = (size // vision["patch_size"]) ** 2 + 1
        act = e.batch_size * tokens * vision["width"] * (vision.get("mlp_ratio", 4) + 4) * 4
    actor = params * 4 + shard + batch + act + RUNTIME_BYTES
    lines.append(f"  per actor  ~{gib(actor)}: model {gib(params * 4)} (fp32) + cache shard "
                 f"{gib(shard)} ({cfg.data.eval_cache_shard} images) + a batch "
                 f"{gib(batch + act)} ({e.batch_size} images: input + activations) + runtime "
                 f"{gib(RUNTIME_BYTES)}")
    return actor


def gpu_hours(cfg: ExperimentCfg, sizes: Sizes) -> list[str]:
    """The sweep's and the evaluation's GPU-hours at the measured throughputs."""
    arch = cfg.model.name.removesuffix("-quickgelu")  # same compute with either activation
    rate = THROUGHPUT.get(arch)
    if rate is None:
        return [(f"  GPU-hours  not estimated: no measured throughput for {cfg.model.name} "
                 f"(measured: {', '.join(THROUGHPUT)})")]
    if sizes.train is None:
        return ["  GPU-hours  not estimated: the train split's size is unknown"]
    s = cfg.sweep
    epochs = as_dist(s.space["epochs"]).mean() if "epochs" in s.space else s.base.epochs
    trained = sizes.train - (sizes.evals["heldout"] or 0)
    sweep_h = s.trials * epochs * trained / rate["train"] / 3600
    lines = [(f"  GPU-hours  sweep ~{sweep_h:,.1f}: {s.trials} trials x {epochs:g} epochs "
              f"(mean) x {trained:,} images / {rate['train']:,} img/s ({arch} fine-tuning, bf16, "
              f"one {rate['gpu']})")]
    known = sum(v for v in sizes.evals.values() if v is not None)
    models = s.trials + 1  # + the zero-shot ingredient
    eval_h = models * known / rate["eval"] / 3600
    lines.append(f"             evaluation ~{eval_h:,.2f}: {models} ingredients x {known:,} eval "
                 f"images / {rate['eval']:,} img/s; soups add one pass per candidate")
    return lines
