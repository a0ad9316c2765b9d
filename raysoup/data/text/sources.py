"""Every text split of an experiment (train, held-out, test, shifts) from its DataCfg: the
generated text task (written once as Parquet in the workdir, then read like any source) or
the configured Parquet / JSON-lines / CSV sources."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raysoup import storage
from raysoup.config import DataCfg, SplitSource
from raysoup.data.errors import DataError
from raysoup.data.split import split_heldout
from raysoup.data.text import world
from raysoup.data.text.readers import read_text_split
from raysoup.data.text.texts import LabeledTexts
from raysoup.workdir import Workdir


def text_world_dir(workdir: Path) -> Path:
    return Workdir(workdir).data / "text_world"


def generate_text_world(cfg, workdir: Path) -> dict[str, str]:
    """Split name → Parquet file of the generated task (written once; a changed config is
    refused rather than mixed with the old files)."""
    root = text_world_dir(workdir)
    stamp = root / "config.json"
    names = ["train", "test", *world.SHIFTS]
    paths = {n: str(root / f"{n}.parquet") for n in names}
    want = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    if storage.is_file(stamp):
        if storage.read_text(stamp) != want:
            raise DataError(f"{root} holds a text world of another config; use a new workdir")
        return paths
    for n in names:
        table = pa.table(world.split_rows(cfg, n))
        storage.write_file(Path(paths[n]), lambda tmp, t=table: pq.write_table(t, tmp))
    storage.write_file(stamp, want)  # last: marks the world complete
    return paths


def _into_train_space(data: LabeledTexts, train_names: list[str], name: str) -> LabeledTexts:
    if data.classnames == train_names:
        return data
    unknown = sorted(set(data.classnames) - set(train_names))
    if unknown:
        raise DataError(f"{name} ({data.origin}): classes {unknown[:5]} are not train classes")
    remap = [train_names.index(c) for c in data.classnames]
    data.labels = pa.array(remap).to_numpy()[data.labels]
    if len(remap) < len(train_names):
        data.class_subset = sorted(remap)
    data.classnames = list(train_names)
    return data


def load_text_splits(cfg: DataCfg, workdir: Path, classnames: list[str] | None):
    """(train, held-out, test, shifts, class names) as LabeledTexts; held-out carved from train
    by key hash, as for images."""
    if cfg.text_world is not None:
        paths = generate_text_world(cfg.text_world, workdir)
        classnames = classnames or list(world.CLASSNAMES)
        sources = {n: SplitSource(format="parquet", path=p, text_columns=["sentence"])
                   for n, p in paths.items()}
        train_src, test_src = sources.pop("train"), sources.pop("test")
        shift_srcs = sources
    else:
        train_src, test_src, shift_srcs = cfg.train, cfg.test, dict(cfg.shifts)
    full_train = read_text_split(train_src, classnames)
    names = full_train.classnames
    # Eval splits keep the class names given (or the train split's, for integer labels).
    test = _into_train_space(read_text_split(test_src, classnames or names), names, "test")
    shifts = {n: _into_train_space(read_text_split(s, classnames or names), names, n)
              for n, s in shift_srcs.items()}
    train, heldout = split_heldout(full_train, cfg.heldout_fraction)
    if not len(heldout):
        raise DataError(f"data.heldout_fraction={cfg.heldout_fraction} selects no example of "
                        f"{len(full_train)} train examples")
    return train, heldout, test, shifts, list(names)
