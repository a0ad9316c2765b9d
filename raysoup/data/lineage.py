"""What each split is, for MLflow's dataset inputs: where it was read from, a digest of its
samples (keys and labels: the same split gives the same digest on any machine) and its size."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from raysoup import storage
from raysoup.config import DataCfg
from raysoup.data import fs
from raysoup.data.images import LabeledImages
from raysoup.data.sources import DatasetSplits
from raysoup.workdir import Workdir


def samples_digest(data: LabeledImages) -> str:
    h = hashlib.sha256(np.asarray(data.labels, np.int64).tobytes())
    for key in data.keys:
        h.update(key.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _source(where: str) -> tuple[str, str]:
    """(MLflow source type, URI) of a split's location."""
    scheme = where.split("://", 1)[0] if "://" in where else None
    if scheme:
        return scheme, where
    return "local", Path(where).absolute().as_uri()


def split_sources(cfg: DataCfg, workdir: Path) -> dict[str, str]:
    """Split name → where it is read from (the world's generated Parquet, or the config's)."""
    if cfg.world is not None:
        from raysoup.data import world

        root = Workdir(workdir).world
        # A remote workdir's mirror path is shown (and recorded) as its URI.
        out = {name: storage.display(root / name) for name in ("train", "test", *world.SHIFTS)}
    elif cfg.text_world is not None:
        from raysoup.data.text.sources import generate_text_world

        out = {name: storage.display(Path(p))
               for name, p in generate_text_world(cfg.text_world, workdir).items()}
    else:
        def where(src) -> str:  # a DatasetDict's split is a directory of its own
            return src.path if src.split is None else fs.join(src.path, src.split)

        out = {"train": where(cfg.train), "test": where(cfg.test),
               **{name: where(src) for name, src in cfg.shifts.items()}}
    out["heldout"] = out["train"]  # carved from train by a stable hash of each sample key
    return out


def split_records(splits: DatasetSplits, cfg: DataCfg, workdir: Path, experiment: str
                  ) -> list[dict]:
    """One record per split: name, context (train / heldout / test / shift), source, digest,
    rows; the held-out record says what fraction of train it was carved from."""
    sources = split_sources(cfg, workdir)
    named = [("train", "train", splits.train), ("heldout", "heldout", splits.heldout),
             ("test", "test", splits.test),
             *((name, "shift", data) for name, data in splits.shifts.items())]
    out = []
    for name, context, data in named:
        source_type, uri = _source(sources[name])
        profile = {"num_classes": len(data.classnames)}
        if name == "heldout":
            profile["heldout_fraction"] = cfg.heldout_fraction
        if data.class_subset is not None:
            profile["classes_covered"] = len(data.class_subset)
        out.append({"name": f"{experiment}/{name}", "context": context, "uri": uri,
                    "source_type": source_type, "digest": samples_digest(data),
                    "rows": len(data), "profile": profile})
    return out
