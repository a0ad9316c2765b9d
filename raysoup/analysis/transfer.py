"""Zero-shot transfer to a task the sweep never trained on (the paper's last claim: soups
improve zero-shot performance on new downstream tasks).

The new task is the user's own second dataset (`analysis.transfer`: an ImageFolder or Parquet
shards, its class names and templates), or, without one, in the generated world another
labelling of the same test images: the colour of the shape instead of the shape. A fine-tuned
image tower is read zero-shot through the base model's text tower: a new head from the task's
class names × templates, exactly as the zero-shot classifier is built for the sweep's classes
(`models.classifier.zero_shot_head`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysoup import storage
from raysoup.config import ConfigError, ExperimentCfg, ModelCfg, TransferCfg, WorldCfg
from raysoup.data import world
from raysoup.data.imagefolder import class_dirs_of, read_imagefolder
from raysoup.data.images import DataError, LabeledImages
from raysoup.data.parquet import metadata_classnames, read_parquet_split
from raysoup.data.render import COLORS
from raysoup.data.sources import resolve_templates

# The eval split the actors hold a user's transfer dataset under (beside heldout, test and
# the shifts; a shift of this name is refused where the pool is built).
TRANSFER_SPLIT = "analysis-transfer"


def transfer_unavailable(cfg: ExperimentCfg) -> str | None:
    """Why the transfer analysis cannot run on `cfg`'s sweep (None: it can). It needs a task
    the sweep never trained on and a text tower to read its class names: the dataset of
    `analysis.transfer`, or in the generated world the colour of the shapes. A user's own
    data.train/data.test carry one labelling, the one the sweep trained on."""
    if cfg.model.family != "open_clip":
        return (f"transfer: model.family {cfg.model.family} has no text tower to read a new "
                "task's class names zero-shot (the CLIP family only)")
    if cfg.data.world is None and cfg.analysis.transfer is None:
        return ("transfer: needs a task the sweep never trained on: set analysis.transfer to "
                "a second dataset (an ImageFolder or Parquet shards, with its class names and "
                "templates; docs/analysis.md, transfer). data.train/data.test carry the one "
                "labelling the sweep trained on; only the generated world (data.world) has a "
                "second one built in (the shapes' colours)")
    return None


@dataclass(frozen=True)
class TransferTask:
    name: str
    classnames: list[str]
    templates: list[str]
    labels: np.ndarray  # int64, one per image of the split, in the split's order


@dataclass(frozen=True)
class OwnTransfer:
    """A user's transfer dataset (`analysis.transfer`), read (not decoded): its images go to
    the eval cache as split `TRANSFER_SPLIT`, scored against their own labels."""

    task: TransferTask
    data: LabeledImages


def read_own_transfer(cfg: ExperimentCfg) -> OwnTransfer:
    """`analysis.transfer`'s dataset and prompts, checked before anything starts: a missing
    local path, class names that do not match the dataset's classes, no images (each a
    ConfigError or DataError naming the field)."""
    spec: TransferCfg = cfg.analysis.transfer
    path = spec.test.path
    if not storage.is_uri(path) and not Path(path).expanduser().exists():
        raise ConfigError(f"analysis.transfer.test.path: {path} does not exist")
    data = (_imagefolder(path, spec.classnames) if spec.test.format == "imagefolder"
            else _parquet(path, spec.classnames))
    if not len(data):
        raise DataError(f"analysis.transfer.test: {path} holds no images")
    templates = resolve_templates(cfg.data.templates if spec.templates is None
                                  else spec.templates)
    return OwnTransfer(TransferTask(spec.task_name, list(data.classnames), templates,
                                    data.labels), data)


def _imagefolder(path: str, classnames: list[str] | None) -> LabeledImages:
    dirs = class_dirs_of(path)
    if classnames is not None and len(classnames) != len(dirs):
        raise DataError(f"analysis.transfer.classnames: {len(classnames)} names for the "
                        f"{len(dirs)} class directories of {path} ({dirs[:5]}...)")
    return read_imagefolder(path, classnames)


def _parquet(path: str, classnames: list[str] | None) -> LabeledImages:
    own = metadata_classnames(path)
    if classnames is None and own is None:
        raise DataError(f"analysis.transfer.classnames: {path} names no classes in its "
                        "Parquet metadata; list them, in label order")
    if classnames is not None and own is not None and len(own) != len(classnames):
        raise DataError(f"analysis.transfer.classnames: {len(classnames)} names for the "
                        f"{len(own)} classes of {path} (its metadata: {own[:5]}...)")
    try:
        return read_parquet_split(path, classnames)
    except DataError as err:  # e.g. a label beyond the names given
        raise DataError(f"analysis.transfer: {err}") from None


def colour_task(cfg: WorldCfg, split: str, keys: list[str]) -> TransferTask:
    """The shape's colour as the class, for the world split whose samples are `keys`
    ("<split>/<index>"); prompts name the colour with every shape, as the captions the base
    was pre-trained on do ("a picture of a red circle.")."""
    names = list(COLORS)
    labels = np.asarray([names.index(world.scene_words(cfg, split, _index(k, split))["color"])
                         for k in keys], np.int64)
    shapes = world.CLASSNAMES[: cfg.num_classes]
    templates = [form.replace("SHAPE", s) for s in shapes
                 for form in ("a picture of a {} SHAPE.", "a drawing of a {} SHAPE.")]
    return TransferTask("colour", names, templates, labels)


def _index(key: str, split: str) -> int:
    prefix, _, index = key.partition("/")
    if prefix != split or not index.isdigit():
        raise ValueError(f"sample key {key!r} is not one of the generated world's {split} "
                         "samples: the transfer task labels the generated world only")
    return int(index)


def transfer_head(model_cfg: ModelCfg, base: Path | None, task: TransferTask) -> np.ndarray:
    """[K, D] head for `task` from the base model's text tower (the zero-shot head's recipe).
    `base`: the zero-shot model's recorded base checkpoint (None where that file is gone);
    the vocabulary is read beside the weights the text tower is loaded from, so a shipped
    base (`raysoup:`) still tokenizes after the install that recorded its path moved."""
    from raysoup.models import base_models, classifier, factory

    clip = factory.load_clip(model_cfg, base)
    weights = factory.resolve_weights(model_cfg, base).path
    vocab = base_models.base_vocab(weights) \
        if weights and base_models.is_base_checkpoint(weights) else None
    tokenizer = factory.get_tokenizer(model_cfg, vocab)
    head = classifier.zero_shot_head(clip, tokenizer, task.classnames, task.templates)
    return head.numpy()
