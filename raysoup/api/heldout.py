"""`raysoup.HeldOut`: the held-out data and model description that let `soup_checkpoints` cook
the methods that score candidate soups (greedy, learned, WiSE-FT, a λ grid) in this process.

The scoring is the soup stage's: the split is decoded once into an eval cache (`evaluate.cache`,
the same shards the stage's Ray tasks write), and candidates are scored by the stage's
`Evaluator` on the model family's skeleton, one model in memory at a time (`local_kitchen`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class HeldOutError(ValueError):
    """The held-out data or model description is unusable; the message names the problem."""


@dataclass(frozen=True)
class HeldOut:
    """Held-out data to score candidate soups on.

    `data`: the split, in a form raysoup's data plane reads (docs/data.md): an ImageFolder
    directory (`root/<class dir>/<image>`, the label being the class dir's index in sorted
    order) or Parquet shards (a `.parquet` file or a directory of them). Labels must index the
    classes of the checkpoints' heads. `model`: the open_clip model name of the checkpoints
    (e.g. "ViT-B-32-quickgelu"); it may be left out when the checkpoints (or `base`) are raysoup
    ingredient directories, whose manifest names it. `batch_size`: evaluation batch (the soup
    stage's `eval.batch_size`: the same batches give the same logits). `cache`: a directory
    for the decoded split (default: a temporary one, removed after).
    """

    data: str | Path
    model: str | None = None
    format: Literal["auto", "imagefolder", "parquet"] = "auto"
    batch_size: int = 500
    shard_images: int = 1000
    skip_corrupt: bool = False
    cache: str | Path | None = None


@dataclass(frozen=True)
class ModelSpec:
    """What builds and feeds the classifier: the manifest's `model_name`, `num_classes`,
    `preprocess` and family."""

    model_name: str
    num_classes: int
    preprocess: dict
    family: str


def model_spec(heldout: HeldOut, files: list[Path]) -> ModelSpec:
    """The classifier of the checkpoints at `files` (safetensors; an ingredient's own file
    carries a manifest): named by `heldout.model`, or by the first manifest found."""
    from safetensors import safe_open

    from raysoup.checkpoints.importer import preprocess_of
    from raysoup.checkpoints.ingredient import MANIFEST_FILE, WEIGHTS_FILE
    from raysoup.models.factory import ModelLoadError
    from raysoup.models.families import family_of
    from raysoup.workdir.manifest import IngredientManifest

    manifests = [f.parent for f in files
                 if f.name == WEIGHTS_FILE and (f.parent / MANIFEST_FILE).is_file()]
    meta = IngredientManifest.read(manifests[0]).meta if manifests else {}
    name = heldout.model or meta.get("model_name")
    if not name:
        raise HeldOutError("heldout.model: name the open_clip model of the checkpoints (e.g. "
                           "HeldOut(data, model='ViT-B-32-quickgelu')); only a raysoup "
                           "ingredient directory's manifest names it")
    if meta and heldout.model and heldout.model != meta.get("model_name"):
        raise HeldOutError(f"heldout.model={heldout.model!r}, but {manifests[0]} is a "
                           f"{meta.get('model_name')!r}")
    with safe_open(str(files[0]), "pt") as f:
        if "head.weight" not in f.keys():  # noqa: SIM118 - a tensor file, not a dict
            raise HeldOutError(f"{files[0]}: no head.weight: the checkpoints have no "
                               "classification head to score with")
        num_classes = int(f.get_slice("head.weight").get_shape()[0])
    try:
        preprocess = meta.get("preprocess") or preprocess_of(name)
    except ModelLoadError as err:
        raise HeldOutError(f"heldout.model: {err}") from None
    return ModelSpec(name, num_classes, preprocess, family_of(meta).name)


def read_split(heldout: HeldOut):
    """The split at `heldout.data` as LabeledImages (an index: no pixels are read)."""
    from raysoup.data.imagefolder import read_imagefolder
    from raysoup.data.images import DataError
    from raysoup.data.parquet import read_parquet_split

    path = Path(heldout.data)
    if not path.exists():
        raise HeldOutError(f"heldout.data: {path} does not exist")
    fmt = heldout.format
    if fmt == "auto":
        parquet = path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet")))
        fmt = "parquet" if parquet else "imagefolder"
    try:
        data = read_parquet_split(path) if fmt == "parquet" else read_imagefolder(path)
    except DataError as err:
        raise HeldOutError(f"heldout.data: {err}") from None
    if len(data) == 0:
        raise HeldOutError(f"heldout.data: {path} holds no images")
    return data


@contextmanager
def evaluator_for(heldout: HeldOut, spec: ModelSpec) -> Iterator:
    """An `Evaluator` holding the model skeleton and the split's eval cache as "heldout"."""
    import numpy as np

    from raysoup.evaluate import cache
    from raysoup.evaluate.evaluator import EvalSplit, Evaluator
    from raysoup.models.families import get_family

    data = read_split(heldout)
    if int(data.labels.max()) >= spec.num_classes:
        raise HeldOutError(f"heldout.data: label {int(data.labels.max())} is outside the "
                           f"checkpoints' {spec.num_classes} classes")
    pp = spec.preprocess
    with tempfile.TemporaryDirectory(prefix="raysoup-heldout-") as tmp:
        root = Path(heldout.cache) if heldout.cache is not None else Path(tmp)
        directory = cache.cache_dir(root, "heldout", data, pp, heldout.shard_images,
                                    heldout.skip_corrupt)
        infos, skipped = [], []
        for i, (lo, hi) in enumerate(cache.shard_ranges(len(data), heldout.shard_images)):
            out = directory / cache.shard_name(i)
            info = cache.built_shard(out) or cache.build_shard(
                data.select(np.arange(lo, hi)), pp["image_size"], out, heldout.skip_corrupt)
            infos.append(info)
            skipped += [lo + j for j in info["skipped"]]
        images = cache.CachedImages(str(directory), [info["n"] for info in infos],
                                    tuple(pp["mean"]), tuple(pp["std"]))
        keep = np.setdiff1d(np.arange(len(data)), skipped)
        subset = tuple(data.class_subset) if data.class_subset is not None else None
        split = EvalSplit(images=images, labels=data.labels[keep], class_subset=subset)
        family = get_family(spec.family)
        # As an eval actor (orchestration.evaluation.EvalWorker): the GPU if there is one.
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        yield Evaluator(family.skeleton(spec.model_name, spec.num_classes),
                        {"heldout": split}, batch_size=heldout.batch_size, device=device,
                        family=family)
