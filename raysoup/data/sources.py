"""Load every split an experiment needs (train, held-out, test, shifts) from its DataCfg."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysoup.config import DataCfg, SplitSource
from raysoup.data import world
from raysoup.data.imagefolder import class_dirs_of, read_imagefolder, read_mapped_imagefolder
from raysoup.data.images import DataError, LabeledImages
from raysoup.data.parquet import read_parquet_split
from raysoup.data.split import split_heldout
from raysoup.workdir import Workdir


@dataclass
class DatasetSplits:
    train: LabeledImages  # without the held-out samples
    heldout: LabeledImages
    test: LabeledImages
    shifts: dict[str, LabeledImages]
    classnames: list[str]
    # Zero-shot prompts as format strings with one "{}" (what open_clip's
    # build_zero_shot_classifier accepts, and picklable unlike open_clip's lambdas).
    templates: list[str]


def resolve_templates(spec: str | list[str]) -> list[str]:
    if spec == "world":
        return list(world.TEMPLATES)
    if spec == "openai_imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        # Each is `lambda c: f"...{c}..."`; calling it with "{}" recovers the format string.
        return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    if isinstance(spec, list):
        return list(spec)
    raise DataError(f"data.templates: unknown template set {spec!r}; "
                    "use 'openai_imagenet', 'world' or a list of strings with '{}'")


def resolve_classnames(spec: str | list[str] | None) -> list[str] | None:
    """data.classnames: "imagenet" → open_clip's 1000 ImageNet names; a list or None as given."""
    if spec == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    return None if spec is None else list(spec)


def _class_map(path: str, name: str) -> dict[str, list[str]]:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"data.shifts.{name}.class_map: file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"data.shifts.{name}.class_map: {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not all(
            isinstance(v, list) and all(isinstance(t, str) for t in v) for v in raw.values()):
        raise DataError(f"data.shifts.{name}.class_map: {path} must map each class dir to a "
                        "list of train class dirs")
    return raw


def _read(source: SplitSource, classnames: list[str] | None) -> LabeledImages:
    if source.format == "parquet":
        return read_parquet_split(source.path, classnames)
    return read_imagefolder(source.path, classnames)


def _into_train_space(data: LabeledImages, train_names: list[str], source: SplitSource,
                      name: str) -> LabeledImages:
    """Relabel an eval split into train's class space; `source.classes` marks a class subset."""
    if data.classnames != train_names:
        unknown = sorted(set(data.classnames) - set(train_names))
        if unknown:
            raise DataError(f"{name} ({source.path}): classes {unknown[:5]} are not train classes")
        remap = [train_names.index(c) for c in data.classnames]
        data.labels = np.asarray(remap, np.int64)[data.labels]
        if data.class_subset is not None:
            data.class_subset = sorted(remap[i] for i in data.class_subset)
        elif len(remap) < len(train_names):
            data.class_subset = sorted(remap)
        data.classnames = list(train_names)
    if source.classes is not None:
        unknown = sorted(set(source.classes) - set(train_names))
        if unknown:
            raise DataError(f"data.shifts.{name}.classes: {unknown[:5]} are not train classes")
        data.class_subset = sorted(train_names.index(c) for c in source.classes)
    return data


def load_splits(cfg: DataCfg, workdir: Path, progress: bool = True) -> DatasetSplits:
    """Read (and for data.world first generate) all splits; held-out is carved from train."""
    classnames = resolve_classnames(cfg.classnames)
    if cfg.is_text:  # sentences (data/text): no templates, the head is not built from text
        from raysoup.data.text.sources import load_text_splits

        return DatasetSplits(*load_text_splits(cfg, workdir, classnames), templates=[])
    if cfg.world is not None:
        paths = world.generate_world(cfg.world, Workdir(workdir).world, progress)
        full_train = read_parquet_split(paths["train"], classnames)
        test = read_parquet_split(paths["test"], classnames)
        shifts = {s: read_parquet_split(paths[s], classnames) for s in world.SHIFTS}
    else:
        full_train = _read(cfg.train, classnames)
        names = full_train.classnames
        dirs = class_dirs_of(cfg.train.path) if cfg.train.format == "imagefolder" else None

        def eval_split(src: SplitSource, name: str) -> LabeledImages:
            if src.class_map is not None:
                return read_mapped_imagefolder(src.path, _class_map(src.class_map, name),
                                               dirs or names, src.class_map)
            # An ImageFolder next to an ImageFolder train set maps its dirs into train's dirs;
            # anything else is matched to train's classes by name.
            if dirs is not None and src.format == "imagefolder":
                data = read_imagefolder(src.path, names, dirs)
            else:  # a foreign ImageFolder is named by its own dirs
                data = _read(src, classnames if src.format == "parquet" else None)
            return _into_train_space(data, names, src, name)

        test = eval_split(cfg.test, "test")
        shifts = {name: eval_split(src, name) for name, src in cfg.shifts.items()}
    train, heldout = split_heldout(full_train, cfg.heldout_fraction)
    if not len(heldout):
        raise DataError(f"data.heldout_fraction={cfg.heldout_fraction} selects no sample of "
                        f"{len(full_train)} train images")
    return DatasetSplits(train, heldout, test, shifts, list(full_train.classnames),
                         resolve_templates(cfg.templates))
