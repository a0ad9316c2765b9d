"""`--dry-run`: what a command would do, from the validated config, and how big the job is.

Reads no image, loads no weights, starts no Ray and opens no MLflow store: only the config, the
open_clip model registry (JSON configs), listings of the data sources (local or s3:// / gs://)
and Parquet footers. From those it sizes the job: images per split, eval cache bytes, memory
per trial and per eval actor, GPU-hours at measured throughputs, and whether cluster.yaml's
node types can hold a trial or an actor. Missing or unreadable paths are warnings naming
them, not errors: the plan is often checked on a laptop for a job that runs on a cluster.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from raysoup import storage
from raysoup.config import (
    DATA_PARALLEL_DRIVER_CPU,
    Choice,
    ExperimentCfg,
    LogUniform,
    RandInt,
    SplitSource,
    Uniform,
)
from raysoup.data.images import DataError

GiB, MiB = 2**30, 2**20
# Measured img/s per GPU for open_clip architectures (docs/benchmarks.md, "GPU": one
# NVIDIA H200): train = the fine-tuning loop, bf16, batch 256, images already in memory;
# eval = one Ray eval actor, bf16. A real input pipeline may feed less than this.
THROUGHPUT = {"ViT-B-32": {"gpu": "H200", "train": 4547, "eval": 6944}}
# Host memory of the instance types cluster.yaml uses (AWS specifications).
INSTANCE_MEMORY_GIB = {"m6i.2xlarge": 32, "g5.xlarge": 16, "p4d.24xlarge": 1152}
CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
# What a process costs before any data: importing torch alone takes ~0.65 GB RSS.
RUNTIME_BYTES = int(0.65 * 2**30)
# Weights + gradients + AdamW's two moments, fp32 (4 x 4 bytes per parameter).
TRAIN_BYTES_PER_PARAM = 16


def _dist(value) -> str:
    if isinstance(value, LogUniform):
        return f"loguniform [{value.loguniform[0]:g}, {value.loguniform[1]:g}]"
    if isinstance(value, Uniform):
        return f"uniform [{value.uniform[0]:g}, {value.uniform[1]:g}]"
    if isinstance(value, RandInt):
        lo, hi = value.randint
        return f"randint [{lo}, {hi}) = {lo}..{hi - 1}"
    if isinstance(value, Choice):
        return f"choice {value.choice}"
    return f"constant {value}"


def _is_remote(path: str) -> bool:
    return "://" in path


def _where(path: str, warnings: list[str], field: str) -> str:
    if _is_remote(path):
        return f"{path}  (remote: not checked)"
    if Path(path).expanduser().exists():
        return f"{path}  (exists)"
    warnings.append(f"{field}: {path} does not exist on this machine "
                    "(fine if the job runs where it does)")
    return f"{path}  (MISSING here)"


def _model_lines(cfg: ExperimentCfg, warnings: list[str]) -> list[str]:
    import open_clip  # the registry only: no weights are read or downloaded

    from raysoup.models.base import (
        SHIPPED_PREFIX,
        BaseModelError,
        read_base_manifest,
        shipped_base,
    )
    from raysoup.models.factory import ModelLoadError, model_config

    m = cfg.model
    try:
        arch = model_config(m.name)
    except ModelLoadError as err:
        warnings.append(f"model.name: {err}")
        arch = {}
    vision = arch.get("vision_cfg", {})
    act = "QuickGELU" if arch.get("quick_gelu") else "GELU"
    lines = [(f"model        {m.name}  (image {vision.get('image_size', '?')} px, embed dim "
             f"{arch.get('embed_dim', '?')}, {act}), tokenizer {m.tokenizer}")]
    if m.pretrain is not None:
        lines.append(f"  weights    contrastive pre-training on the data's captions: "
                     f"{m.pretrain.steps} steps, batch {m.pretrain.batch_size} "
                     "(cached under WORKDIR/base/)")
    elif m.pretrained.startswith(SHIPPED_PREFIX):
        try:
            manifest = read_base_manifest(shipped_base(m.pretrained))
            lines.append(f"  weights    base CLIP shipped with raysoup ({m.pretrained}): "
                         f"{manifest['pretrain']['steps']} contrastive pre-training steps of "
                         f"{manifest['model_name']}, sha256 {manifest['sha256'][:12]}…")
            if manifest["model_name"] != m.name:
                warnings.append(f"model.pretrained: {m.pretrained} was pre-trained for "
                                f"{manifest['model_name']!r}, model.name is {m.name!r}")
        except BaseModelError as e:
            warnings.append(str(e))
    elif m.pretrained in open_clip.list_pretrained_tags_by_model(m.name):
        lines.append(f"  weights    open_clip tag {m.pretrained!r} (downloaded and cached by "
                     "open_clip on first use)")
        tag_cfg = open_clip.get_pretrained_cfg(m.name, m.pretrained)
        if tag_cfg.get("quick_gelu", False) != arch.get("quick_gelu", False):
            warnings.append(f"model.name: {m.name!r} with pretrained {m.pretrained!r}: the weights "
                            f"were trained with quick_gelu={tag_cfg.get('quick_gelu', False)}, the "
                            f"architecture uses quick_gelu={arch.get('quick_gelu', False)} "
                            f"(use '{m.name}-quickgelu')")
    else:
        where = _where(m.pretrained, warnings, "model.pretrained")
        lines.append(f"  weights    local file {where}")
    return lines


def _source(name: str, src: SplitSource, n: int | None) -> str:
    subset = f", classes: {len(src.classes)} listed" if src.classes else ""
    if src.class_map:
        subset = f", class groups from {src.class_map}"
    found = "MISSING or unreadable here" if n is None else f"{n:,} images"
    return f"  {name:<10} {src.format} {src.path}  ({found}){subset}"


def _data_lines(cfg: ExperimentCfg, sizes: Sizes) -> list[str]:
    d = cfg.data
    lines = ["data"]
    if d.world is not None:
        w = d.world
        lines.append(f"  world      generated: {w.num_classes} classes, {w.image_size} px, "
                     f"{w.train_per_class}/{w.test_per_class}/{w.shift_per_class} train/test/"
                     f"shift per class, seed {w.seed} (cached under WORKDIR/data/world/)")
        from raysoup.data.world import SHIFTS

        lines.append(f"  shifts     generated: {', '.join(SHIFTS)}")
    else:
        lines.append(_source("train", d.train, sizes.train))
        lines.append(_source("test", d.test, sizes.evals["test"]))
        for name, src in d.shifts.items():
            lines.append(_source(f"shift {name}", src, sizes.evals[name]))
        if not d.shifts:
            lines.append("  shifts     none")
    lines.append(f"  held-out   {d.heldout_fraction:.1%} of train, chosen by a stable hash of "
                 "each sample key (never trained on)")
    if d.classnames == "imagenet":
        names = "imagenet (open_clip's 1000 ImageNet class names)"
    elif isinstance(d.classnames, list):
        names = f"{len(d.classnames)} given"
    else:
        names = "from the data (folder names / Parquet metadata)"
    lines.append(f"  classnames {names}")
    templates = d.templates if isinstance(d.templates, str) else f"{len(d.templates)} given"
    lines.append(f"  templates  {templates}")
    return lines


def _sweep_lines(cfg: ExperimentCfg) -> list[str]:
    s = cfg.sweep
    r = s.resources_per_trial
    concurrent = min(s.max_concurrent, s.trials)
    search = {"random": "random search",
              "grid": f"grid search ({s.num_samples} per combination of the choices)",
              "optuna": "Optuna TPE search on held-out accuracy",
              "soup": (f"soup-aware search ({s.soup_search.initial} random draws, then "
                       "proposals steered by the anytime soup)")}[s.search]
    lines = [(f"sweep        {s.trials} trials, {search} (seed {s.seed}), at most "
              f"{s.max_concurrent} concurrent, {s.max_failures} retries per trial")]
    if s.scheduler == "asha":
        lines.append(f"  scheduler  ASHA on held-out accuracy per epoch: every trial gets "
                     f"{s.asha.grace_period} epoch(s), then 1/{s.asha.reduction_factor} go on "
                     "at each rung; a stopped trial is no ingredient")
    if s.anytime.enabled:
        a = s.anytime
        lines.append(f"  anytime    each finished trial is offered to a running soup on held-out "
                     f"(one eval actor: {a.cpus:g} CPU + {a.gpus:g} GPU)")
    if s.workers_per_trial > 1:
        w, n = s.resources_per_worker, s.workers_per_trial
        cpu, gpu = n * w.cpu + DATA_PARALLEL_DRIVER_CPU, n * w.gpu
        lines.append(f"  resources  per trial {n} data-parallel workers (Ray Train, DDP over "
                     f"{'NCCL' if w.gpu else 'gloo'}) x ({w.cpu:g} CPU + {w.gpu:g} GPU) + "
                     f"{DATA_PARALLEL_DRIVER_CPU:g} CPU for the trial's own process = "
                     f"{cpu:g} CPU + {gpu:g} GPU; global batch {s.base.batch_size} = {n} x "
                     f"{s.base.batch_size // n} per worker")
        lines.append(f"             at full concurrency {concurrent * cpu:g} CPU + "
                     f"{concurrent * gpu:g} GPU ({concurrent} trials x {n} workers)")
    else:
        lines.append(f"  resources  per trial {r.cpu:g} CPU + {r.gpu:g} GPU; at full "
                     f"concurrency {concurrent * r.cpu:g} CPU + {concurrent * r.gpu:g} GPU; in "
                     f"all {s.trials} trials x {r.gpu:g} GPU (run time depends on sampled "
                     "epochs)")
    sampled = set(s.space)
    fixed = {k: v for k, v in s.base.model_dump().items() if k not in sampled}
    lines.append("  fixed      " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    lines.append("  space" if sampled else "  space      (empty: all trials use the fixed values)")
    for name, dist in s.space.items():
        lines.append(f"    {name:<16} {_dist(dist)}")
    return lines


def _workdir_line(workdir: Path) -> str:
    if storage.is_remote(workdir):
        return f"workdir      {storage.display(workdir)}  (remote: not checked)"
    if not workdir.exists():
        return f"workdir      {workdir}  (new)"
    ingredients = workdir / "ingredients"
    count = sum(1 for p in ingredients.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if ingredients.is_dir() else 0
    return f"workdir      {workdir}  (exists: {count} ingredient(s) on disk; the run resumes)"


def describe(cfg: ExperimentCfg, workdir: Path, stages: tuple[str, ...],
             source: str | None = None, cluster: Path | None = CLUSTER_YAML) -> str:
    """The plan as text: model, data, sweep, evaluation, soups, tracking, stages, sizing,
    cluster.yaml's node types (`cluster`: None to leave them out), warnings."""
    warnings: list[str] = []
    sizes = _count_data(cfg, warnings)
    sizing, needs = _sizing_lines(cfg, sizes)
    e, soup = cfg.eval, cfg.soup
    uri = cfg.tracking.uri or f"sqlite:///{workdir / 'mlflow.db'}"  # = tracking.default_uri
    if storage.is_remote(workdir) and not cfg.tracking.uri:
        uri += f" (copied to {storage.display(workdir / 'mlflow.db')})"
    if cfg.data.world is not None:
        from raysoup.data.world import SHIFTS

        shifts = ", ".join(SHIFTS)
    else:
        shifts = ", ".join(cfg.data.shifts) or "none"
    zeroshot = "included" if soup.include_zeroshot else "excluded"
    lines = [f"raysoup dry run: {cfg.name}" + (f" ({source})" if source else ""),
             "  no image was read; nothing was downloaded, trained or started",
             "stages       prepare (data, initialisation, zero-shot ingredient) -> "
             + " -> ".join(stages),
             _workdir_line(workdir),
             *_model_lines(cfg, warnings),
             *_data_lines(cfg, sizes),
             *_sweep_lines(cfg)]
    lines.append(f"eval         {e.num_actors} actor(s) x ({e.cpus_per_actor:g} CPU + "
                 f"{e.gpus_per_actor:g} GPU), batch {e.batch_size}; splits: heldout, test, "
                 f"shifts: {shifts}")
    lines.append(f"soup         recipes {', '.join(soup.recipes)}; {soup.num_shards} shard(s) per "
                 f"reduction; zero-shot ingredient {zeroshot}")
    lines.append(f"tracking     MLflow {uri}, experiment {cfg.tracking.experiment or cfg.name!r}")
    lines.extend(sizing)
    lines.extend(_cluster_lines(cfg, needs, cluster, warnings))
    if warnings:
        lines.append("warnings")
        lines.extend(f"  - {w}" for w in warnings)
    return "\n".join(lines)


# ---------------------------------------------------------------- sizing



def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 4 else f"{n / MiB:.1f} MiB"


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _is_image(name: str) -> bool:
    from raysoup.data.imagefolder import IMAGE_SUFFIXES

    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def count_parquet(path: str) -> tuple[int, list[str] | None]:
    """(rows, class names from the metadata) from the Parquet footers: no image bytes read."""
    import json

    import pyarrow.parquet as pq

    from raysoup.data import fs as data_fs
    from raysoup.data.parquet import CLASSNAMES_KEY

    info = data_fs.info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    paths = [path] if info.type == pafs.FileType.File else [
        data_fs.join(path, e.base_name) for e in data_fs.listdir(path)
        if e.type == pafs.FileType.File and e.base_name.endswith(".parquet")]
    if not paths:
        raise DataError(f"no *.parquet files in {path}")
    rows, names = 0, None
    for p in paths:
        fs, key = data_fs.resolve(p)
        try:
            with fs.open_input_file(key) as f:
                meta = pq.read_metadata(f)
        except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError: not Parquet
            raise DataError(f"cannot read the Parquet footer of {p}: {e}") from None
        rows += meta.num_rows
        kv = meta.metadata or {}
        if names is None and CLASSNAMES_KEY in kv:
            names = json.loads(kv[CLASSNAMES_KEY])
    return rows, names


def count_imagefolder(path: str, only: set[str] | None = None) -> tuple[int, list[str]]:
    """(images, class dirs) of root/<class dir>/<image>, one listing per class dir (no
    file is opened). `only`: count just these class dirs (ObjectNet's mapped ones)."""
    from raysoup.data import fs as data_fs

    info = data_fs.info(path)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(path)
    dirs = sorted(e.base_name for e in data_fs.listdir(path)
                  if e.type == pafs.FileType.Directory and not e.base_name.startswith("."))
    if not dirs:
        raise DataError(f"image folder {path} has no class directories")
    n = 0
    for d in dirs:
        if only is None or d in only:
            n += sum(1 for e in data_fs.listdir(data_fs.join(path, d))
                     if e.type == pafs.FileType.File and _is_image(e.base_name))
    return n, dirs


def _count_source(src: SplitSource, field: str, warnings: list[str]) -> tuple[int | None, int | None]:
    """(images, classes) of a split, or (None, None) with a warning naming the path."""
    import json

    from raysoup.data import fs as data_fs

    try:
        if src.format == "parquet":
            rows, names = count_parquet(src.path)
            return rows, None if names is None else len(names)
        only = None
        if src.class_map is not None:
            try:
                only = set(json.loads(data_fs.read_bytes(src.class_map)))
            except (DataError, ValueError) as e:
                warnings.append(f"{field.rsplit('.', 1)[0]}.class_map: {e}")
        n, dirs = count_imagefolder(src.path, only)
        return n, len(dirs)
    except FileNotFoundError:
        warnings.append(f"{field}: {src.path} does not exist on this machine "
                        "(fine if the job runs where it does)")
    except DataError as e:  # denied, unreachable, not Parquet, empty
        warnings.append(f"{field}: {e}")
    return None, None


@dataclass
class Sizes:
    train: int | None  # the whole train source (held-out included)
    classes: int | None
    evals: dict[str, int | None]  # heldout, test, shifts


def _count_data(cfg: ExperimentCfg, warnings: list[str]) -> Sizes:
    d = cfg.data
    if d.world is not None:
        from raysoup.data.world import SHIFTS, split_size

        train = split_size(d.world, "train")
        evals = {"test": split_size(d.world, "test"),
                 **{s: split_size(d.world, s) for s in SHIFTS}}
        classes = d.world.num_classes
    else:
        train, classes = _count_source(d.train, "data.train.path", warnings)
        evals = {"test": _count_source(d.test, "data.test.path", warnings)[0]}
        for name, src in d.shifts.items():
            evals[name] = _count_source(src, f"data.shifts.{name}.path", warnings)[0]
    if isinstance(d.classnames, list):
        classes = len(d.classnames)
    elif d.classnames == "imagenet":
        classes = 1000
    heldout = None if train is None else round(train * d.heldout_fraction)
    return Sizes(train, classes, {"heldout": heldout, **evals})


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


def _mean(dist, default: float) -> float:
    if isinstance(dist, RandInt):
        return (dist.randint[0] + dist.randint[1] - 1) / 2
    if isinstance(dist, Uniform):
        return sum(dist.uniform) / 2
    if isinstance(dist, LogUniform):
        lo, hi = dist.loguniform
        return (hi - lo) / math.log(hi / lo)
    if isinstance(dist, Choice):
        return sum(float(v) for v in dist.choice) / len(dist.choice)
    return float(dist) if dist is not None else default


@dataclass
class Needs:
    trial: int | None  # host bytes one trial needs
    actor: int | None  # host bytes one eval actor needs
    train_decoded: int | None  # the train split decoded at the model's size


def _sizing_lines(cfg: ExperimentCfg, sizes: Sizes) -> tuple[list[str], Needs]:
    s, e, d = cfg.sweep, cfg.eval, cfg.data
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
    lines.append(f"  eval cache {_gib(cache)} ({_count(sum(known))} images x 3x{size}x{size} "
                 f"uint8{', splits of unknown size left out' if len(known) < len(evals) else ''})")
    params = None
    if vparams is not None and sizes.classes is not None:
        params = vparams + (vision["embed_dim"] or 0) * sizes.classes + sizes.classes  # + head
    workers = d.loader_workers or max(1, int(s.resources_per_trial.cpu) - 1)
    prefetch = s.base.batch_size * per_image * (workers * 2 + 2)
    train_decoded = None if sizes.train is None else sizes.train * per_image
    trial = actor = None
    if params is not None:
        trial = params * TRAIN_BYTES_PER_PARAM + prefetch + RUNTIME_BYTES
        lines.append(f"  per trial  ~{_gib(trial)}: weights+grads+AdamW {_gib(params * 16)} "
                     f"({params / 1e6:.1f}M params x 16 B) + prefetched batches {_gib(prefetch)} "
                     f"({s.base.batch_size} x 3x{size}x{size} uint8 x {workers * 2 + 2}: "
                     f"{workers} loader workers x 2 + 2) + runtime {_gib(RUNTIME_BYTES)}")
        shard = d.eval_cache_shard * per_image
        batch = e.batch_size * per_image * 4  # float32 model input
        act = 0
        if vision.get("patch_size") and vision.get("width"):
            # One block's live tensors at a time under no_grad: ~(mlp_ratio + 4) x width floats
            # per token.
            tokens = (size // vision["patch_size"]) ** 2 + 1
            act = e.batch_size * tokens * vision["width"] * (vision.get("mlp_ratio", 4) + 4) * 4
        actor = params * 4 + shard + batch + act + RUNTIME_BYTES
        lines.append(f"  per actor  ~{_gib(actor)}: model {_gib(params * 4)} (fp32) + cache shard "
                     f"{_gib(shard)} ({d.eval_cache_shard} images) + a batch {_gib(batch + act)} "
                     f"({e.batch_size} images: input + activations) + runtime "
                     f"{_gib(RUNTIME_BYTES)}")
    if train_decoded is not None:
        budget = ("data.memory_budget_mb" if d.memory_budget_mb is not None
                  else "the default budget (10% of the node's memory)")
        lines.append(f"  train      decoded {_gib(train_decoded)}: held in a trial's memory if "
                     f"it fits {budget}, else streamed")
    lines.extend(_gpu_hours(cfg, sizes))
    return lines, Needs(trial, actor, train_decoded)


def _gpu_hours(cfg: ExperimentCfg, sizes: Sizes) -> list[str]:
    arch = cfg.model.name.removesuffix("-quickgelu")  # same compute with either activation
    rate = THROUGHPUT.get(arch)
    if rate is None:
        return [(f"  GPU-hours  not estimated: no measured throughput for {cfg.model.name} "
                 f"(measured: {', '.join(THROUGHPUT)})")]
    if sizes.train is None:
        return ["  GPU-hours  not estimated: the train split's size is unknown"]
    s = cfg.sweep
    epochs = _mean(s.space.get("epochs"), s.base.epochs)
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


def _cluster_lines(cfg: ExperimentCfg, needs: Needs, path: Path | None,
                   warnings: list[str]) -> list[str]:
    """Each node type of cluster.yaml: how many trials / eval actors its resources admit,
    and whether its memory holds them."""
    import yaml

    if path is None or not Path(path).is_file():
        return []
    try:
        types = (yaml.safe_load(Path(path).read_text()) or {}).get("available_node_types") or {}
    except yaml.YAMLError as e:
        warnings.append(f"{path}: not valid YAML: {e}")
        return []
    r, e = cfg.sweep.resources_per_trial, cfg.eval
    lines = [f"cluster      {path.name}: node types"]
    for name, node in types.items():
        res = node.get("resources") or {}
        cpu, gpu = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        itype = (node.get("node_config") or {}).get("InstanceType", "?")
        mem = INSTANCE_MEMORY_GIB.get(itype)
        if cpu == 0 and gpu == 0:
            lines.append(f"  {name:<12} {itype}: runs no tasks (driver, services)")
            continue
        parts = []
        trial = needs.trial
        if trial is not None and needs.train_decoded is not None and mem is not None:
            budget = (cfg.data.memory_budget_mb * MiB if cfg.data.memory_budget_mb is not None
                      else 0.1 * mem * GiB)
            if needs.train_decoded <= budget:  # the trial holds the decoded split
                trial += needs.train_decoded
        workers = cfg.sweep.workers_per_trial
        # A data-parallel trial's unit of placement is one worker (Train may spread them
        # over nodes); its memory need is a worker's.
        unit = ("trial worker", cfg.sweep.resources_per_worker) if workers > 1 else ("trial", r)
        for what, need_cpu, need_gpu, need in ((unit[0], unit[1].cpu, unit[1].gpu, trial),
                                               ("eval actor", e.cpus_per_actor,
                                                e.gpus_per_actor, needs.actor)):
            fit = int(cpu // need_cpu) if need_cpu else 10**9
            if need_gpu:
                fit = min(fit, int(gpu // need_gpu))
            parts.append(f"{fit} {what}(s)" + (f" = {fit // workers} whole {workers}-worker "
                                               "trial(s)" if what == "trial worker" else ""))
            if fit == 0:
                warnings.append(f"cluster node type {name} ({itype}: {cpu:g} CPU, {gpu:g} GPU) "
                                f"cannot run {'an' if what[0] == 'e' else 'a'} {what}: it needs {need_cpu:g} CPU + {need_gpu:g} "
                                "GPU")
                continue
            if mem is None or need is None:
                continue
            if need > mem * GiB:
                warnings.append(f"cluster node type {name} ({itype}, {mem} GiB) cannot hold "
                                f"{'an' if what[0] == 'e' else 'a'} {what}: it needs "
                                f"~{_gib(need)}")
            elif fit * need > mem * GiB:
                warnings.append(f"cluster node type {name} ({itype}, {mem} GiB): {fit} "
                                f"{what}s fit its CPUs/GPUs but need ~{_gib(fit * need)} of memory")
        memory = f"{mem} GiB" if mem is not None else "memory unknown"
        lines.append(f"  {name:<12} {itype} ({memory}, {cpu:g} CPU, {gpu:g} GPU): "
                     + ", ".join(parts))
    return lines
