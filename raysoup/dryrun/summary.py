"""`--dry-run`: what a command would do, from the validated config, and how big the job is.

Reads no image, loads no weights, starts no Ray and opens no MLflow store: only the config, the
open_clip model registry (JSON configs), listings of the data sources (local or s3:// / gs://)
and Parquet footers. From those it sizes the job (`sizing`) and checks the cluster file's node
types (`cluster`). Missing or unreadable paths are warnings naming them, not errors: the plan
is often checked on a laptop for a job that runs on a cluster.
"""

from __future__ import annotations

from pathlib import Path

from raysoup import storage
from raysoup.config import DATA_PARALLEL_DRIVER_CPU, ExperimentCfg, SplitSource
from raysoup.dryrun.cluster import CLUSTER_FILE, cluster_lines, local_lines
from raysoup.dryrun.sizing import sizing_lines
from raysoup.dryrun.sources import Sizes, count_data
from raysoup.search.distributions import as_dist
from raysoup.workdir import Workdir
from raysoup.workdir.snapshot import saved_config


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
    from raysoup.models.factory import ModelLoadError, model_config

    m = cfg.model
    try:
        arch = model_config(m.name)
    except ModelLoadError as err:
        warnings.append(f"model.name: {err}")
        arch = {}
    vision = arch.get("vision_cfg", {})
    act = "QuickGELU" if arch.get("quick_gelu") else "GELU"
    return [(f"model        {m.name}  (image {vision.get('image_size', '?')} px, embed dim "
             f"{arch.get('embed_dim', '?')}, {act}), tokenizer {m.tokenizer}"),
            *_weights_lines(cfg, arch, warnings)]


def _weights_lines(cfg: ExperimentCfg, arch: dict, warnings: list[str]) -> list[str]:
    """Where the initial weights come from; warns where they do not fit the architecture."""
    import open_clip  # the registry only: no weights are read or downloaded

    from raysoup.models.base_models import (
        SHIPPED_PREFIX,
        BaseModelError,
        read_base_manifest,
        shipped_base,
    )

    m = cfg.model
    if m.pretrain is not None:
        return [(f"  weights    contrastive pre-training on the data's captions: "
                f"{m.pretrain.steps} steps, batch {m.pretrain.batch_size} "
                "(cached under WORKDIR/base/)")]
    if m.pretrained.startswith(SHIPPED_PREFIX):
        try:
            manifest = read_base_manifest(shipped_base(m.pretrained))
        except BaseModelError as e:
            warnings.append(str(e))
            return []
        if manifest["model_name"] != m.name:
            warnings.append(f"model.pretrained: {m.pretrained} was pre-trained for "
                            f"{manifest['model_name']!r}, model.name is {m.name!r}")
        return [(f"  weights    base CLIP shipped with raysoup ({m.pretrained}): "
                f"{manifest['pretrain']['steps']} contrastive pre-training steps of "
                f"{manifest['model_name']}, sha256 {manifest['sha256'][:12]}…")]
    if m.pretrained in open_clip.list_pretrained_tags_by_model(m.name):
        tag_cfg = open_clip.get_pretrained_cfg(m.name, m.pretrained)
        if tag_cfg.get("quick_gelu", False) != arch.get("quick_gelu", False):
            warnings.append(f"model.name: {m.name!r} with pretrained {m.pretrained!r}: the weights "
                            f"were trained with quick_gelu={tag_cfg.get('quick_gelu', False)}, the "
                            f"architecture uses quick_gelu={arch.get('quick_gelu', False)} "
                            f"(use '{m.name}-quickgelu')")
        return [(f"  weights    open_clip tag {m.pretrained!r} (downloaded and cached by "
                "open_clip on first use)")]
    return [f"  weights    local file {_where(m.pretrained, warnings, 'model.pretrained')}"]


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
        lines.append(f"    {name:<16} {as_dist(dist).describe()}")
    return lines


def _workdir_line(cfg: ExperimentCfg, workdir: Path) -> str:
    if storage.is_remote(workdir):
        return f"workdir      {storage.display(workdir)}  (remote: not checked)"
    if not workdir.exists():
        return f"workdir      {workdir}  (new)"
    ingredients = Workdir(workdir).ingredients
    count = sum(1 for p in ingredients.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if ingredients.is_dir() else 0
    saved = saved_config(workdir)
    before = ExperimentCfg.model_validate(saved).sweep.trials if saved else cfg.sweep.trials
    if before < cfg.sweep.trials:  # the check the real run makes allowed it (check_growth)
        plan = (f"the sweep grows from {before} to {cfg.sweep.trials} trials: trial-"
                f"{before:03d} on continue its seeded search, then soups are cooked again")
    else:
        plan = "the run resumes"
    return f"workdir      {workdir}  (exists: {count} ingredient(s) on disk; {plan})"


def describe(cfg: ExperimentCfg, workdir: Path, stages: tuple[str, ...],
             source: str | None = None, cluster: Path | None = CLUSTER_FILE) -> str:
    """The plan as text: model, data, sweep, evaluation, soups, tracking, stages, sizing,
    the node types of the cluster file (`cluster`, relative to the current directory; None to
    leave them out), warnings."""
    warnings: list[str] = []
    if cfg.model.family == "hf_text":  # texts: sized from line counts and config.json
        from raysoup.dryrun.text import describe_text

        head = [f"raysoup dry run: {cfg.name}" + (f" ({source})" if source else ""),
                "  no text was read; nothing was downloaded, trained or started",
                "stages       prepare (data, initialisation, ingredient 0) -> "
                + " -> ".join(stages), _workdir_line(cfg, workdir)]
        lines, needs, warnings = describe_text(cfg, stages, source, head)
        lines += cluster_lines(cfg, needs, cluster, warnings) + local_lines(cfg, warnings)
        return "\n".join(lines + (["warnings"] + [f"  - {w}" for w in warnings]
                                   if warnings else []))
    sizes = count_data(cfg, warnings)
    sizing, needs = sizing_lines(cfg, sizes)
    e, soup = cfg.eval, cfg.soup
    database = Workdir(workdir).mlflow_db
    uri = cfg.tracking.uri or f"sqlite:///{database}"  # = tracking.default_uri
    if storage.is_remote(workdir) and not cfg.tracking.uri:
        uri += f" (copied to {storage.display(database)})"
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
             _workdir_line(cfg, workdir),
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
    lines.extend(cluster_lines(cfg, needs, cluster, warnings))
    lines.extend(local_lines(cfg, warnings))
    if warnings:
        lines.append("warnings")
        lines.extend(f"  - {w}" for w in warnings)
    return "\n".join(lines)
