"""How big the data sources are, from listings and Parquet footers: no image is opened."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

from raysoup.config import ExperimentCfg, SplitSource
from raysoup.data.images import DataError


@dataclass
class Sizes:
    train: int | None  # the whole train source (held-out included)
    classes: int | None
    evals: dict[str, int | None]  # heldout, test, shifts


def _is_image(name: str) -> bool:
    from raysoup.data.imagefolder import IMAGE_SUFFIXES

    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def count_parquet(path: str) -> tuple[int, list[str] | None]:
    """(rows, class names from the metadata) from the Parquet footers: no image bytes read."""
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


def count_data(cfg: ExperimentCfg, warnings: list[str]) -> Sizes:
    """Images per split and the class count; a source that cannot be read is None (warned)."""
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
