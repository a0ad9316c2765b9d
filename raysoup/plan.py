"""`--dry-run`: what a command would do, from the validated config alone.

Reads no data, loads no weights, starts no Ray and opens no MLflow store: only the config, the
open_clip model registry (JSON configs) and whether paths exist. Missing paths are warnings,
not errors: the plan is often checked on a laptop for a job that runs on a cluster.
"""

from __future__ import annotations

from pathlib import Path

from raysoup import storage
from raysoup.config import Choice, ExperimentCfg, LogUniform, RandInt, SplitSource, Uniform


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


def _source(name: str, src: SplitSource, warnings: list[str], field: str) -> str:
    subset = f", classes: {len(src.classes)} listed" if src.classes else ""
    if src.class_map:
        subset = f", class groups from {src.class_map}"
    return f"  {name:<10} {src.format} {_where(src.path, warnings, field)}{subset}"


def _data_lines(cfg: ExperimentCfg, warnings: list[str]) -> list[str]:
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
        lines.append(_source("train", d.train, warnings, "data.train.path"))
        lines.append(_source("test", d.test, warnings, "data.test.path"))
        for name, src in d.shifts.items():
            lines.append(_source(f"shift {name}", src, warnings, f"data.shifts.{name}.path"))
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
    concurrent = min(s.max_concurrent, s.num_samples)
    lines = [(f"sweep        {s.num_samples} trials, random search (seed {s.seed}), at most "
             f"{s.max_concurrent} concurrent, {s.max_failures} retries per trial")]
    lines.append(f"  resources  per trial {r.cpu:g} CPU + {r.gpu:g} GPU; at full concurrency "
                 f"{concurrent * r.cpu:g} CPU + {concurrent * r.gpu:g} GPU; in all "
                 f"{s.num_samples} trials x {r.gpu:g} GPU (run time depends on sampled epochs)")
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
             source: str | None = None) -> str:
    """The plan as text: model, data, sweep, evaluation, soups, tracking, stages, warnings."""
    warnings: list[str] = []
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
             "  nothing was read, downloaded, trained or started",
             "stages       prepare (data, initialisation, zero-shot ingredient) -> "
             + " -> ".join(stages),
             _workdir_line(workdir),
             *_model_lines(cfg, warnings),
             *_data_lines(cfg, warnings),
             *_sweep_lines(cfg)]
    lines.append(f"eval         {e.num_actors} actor(s) x ({e.cpus_per_actor:g} CPU + "
                 f"{e.gpus_per_actor:g} GPU), batch {e.batch_size}; splits: heldout, test, "
                 f"shifts: {shifts}")
    lines.append(f"soup         recipes {', '.join(soup.recipes)}; {soup.num_shards} shard(s) per "
                 f"reduction; zero-shot ingredient {zeroshot}")
    lines.append(f"tracking     MLflow {uri}, experiment {cfg.tracking.experiment or cfg.name!r}")
    if warnings:
        lines.append("warnings")
        lines.extend(f"  - {w}" for w in warnings)
    return "\n".join(lines)
