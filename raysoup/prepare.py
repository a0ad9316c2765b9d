"""Before the sweep: data on disk, the shared initialisation, and the zero-shot ingredient.

Pure (no Ray): runs on the driver. Each step is cached in the workdir and skipped when done.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from raysoup import storage
from raysoup.checkpoints import list_ingredients, read_manifest, write_ingredient
from raysoup.config import ConfigError, ExperimentCfg
from raysoup.data.sources import DatasetSplits, load_splits
from raysoup.workdir import ZEROSHOT, Workdir

log = logging.getLogger(__name__)


def check_data_paths(cfg: ExperimentCfg) -> None:
    """Refuse (ConfigError naming the field) a local data path that does not exist, before
    anything starts. URIs are left to the first read (their store may answer elsewhere)."""
    d = cfg.data
    sources = {"train": d.train, "test": d.test, **{f"shifts.{k}": v for k, v in d.shifts.items()}}
    for name, src in sources.items():
        if src is None:
            continue
        for field in ("path", "class_map"):
            value = getattr(src, field)
            if value and not storage.is_uri(value) and not Path(value).expanduser().exists():
                raise ConfigError(f"data.{name}.{field}: {value} does not exist")


def base_cache_dir(cfg: ExperimentCfg, workdir: Path) -> Path:
    # Keyed by everything the pre-trained weights depend on, so a changed config retrains.
    return Workdir(workdir).base / cfg.fingerprint("model", "data")


def pretrain_corpus(cfg: ExperimentCfg, splits: DatasetSplits):
    """The image-caption pairs a base is pre-trained on (model.pretrain.corpus): the train split
    (held-out excluded) or the world's broad web corpus, generated in memory (a miniature-only
    path: it exists to make the tiny base, never at dataset scale)."""
    if cfg.model.pretrain is not None and cfg.model.pretrain.corpus == "web":
        from raysoup.data.world import web_corpus

        pre = cfg.model.pretrain
        return web_corpus(cfg.data.world, pre.web_per_class, pre.web_photo_share)
    return splits.train


def ensure_zeroshot(cfg: ExperimentCfg, workdir: Path, splits: DatasetSplits) -> Path:
    """Ingredient 0: the family's initial classifier (open_clip: the image encoder and the
    zero-shot head from class names × templates)."""
    out = Workdir(workdir).zeroshot
    if out in list_ingredients(Workdir(workdir).ingredients):
        return out
    from raysoup.models.families import DEFAULT_FAMILY, family_of

    family = family_of(cfg.model)
    if cfg.model.pretrain is not None:
        from raysoup.train.base_clip import ensure_base_clip

        base = ensure_base_clip(cfg.model, splits, base_cache_dir(cfg, workdir),
                                corpus=pretrain_corpus(cfg, splits),
                                objective=family.pretrain_objective())
        storage.publish_missing(base_cache_dir(cfg, workdir))  # read back through storage
    else:
        base = family.packaged_base(cfg.model, splits)  # e.g. the shipped `raysoup:` base
    initial = family.initial_model(cfg.model, base, splits.classnames, splits.templates)
    model = initial.model
    write_ingredient(out, {k: v.detach().cpu() for k, v in model.state_dict().items()}, {
        "kind": ZEROSHOT,
        # workers rebuild the model from this manifest alone (families.family_of)
        **({"family": family.name} if family.name != DEFAULT_FAMILY else {}),
        "model_name": cfg.model.name,
        "num_classes": len(splits.classnames),
        "classnames": splits.classnames,
        "preprocess": initial.preprocess,
        "base_model": str(base) if base else cfg.model.pretrained,
    })
    log.info("zero-shot ingredient written: %s", out)
    return out


def prepare(cfg: ExperimentCfg, workdir: Path) -> tuple[DatasetSplits, dict]:
    # Denormal floats take a slow path on CPUs, and small weights and gradients reach them.
    torch.set_flush_denormal(True)
    # A remote workdir: what an earlier driver generated comes down first, so nothing is
    # generated twice, and what this one generates goes up for trials on other nodes.
    storage.pull(Workdir(workdir).data)
    storage.pull(Workdir(workdir).base)
    splits = load_splits(cfg.data, workdir)
    storage.publish_missing(Workdir(workdir).data)
    zs = ensure_zeroshot(cfg, workdir, splits)
    return splits, read_manifest(zs)
