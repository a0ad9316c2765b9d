"""Zero-shot transfer to a task the sweep never trained on (the paper's last claim: soups
improve zero-shot performance on new downstream tasks).

In the generated world the new task is another labelling of the same test images: the colour
of the shape instead of the shape. A fine-tuned image tower is read zero-shot through the base
model's text tower: a new head from the colour names × templates, exactly as the zero-shot
classifier is built for the shapes (`models.classifier.zero_shot_head`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysoup.config import ExperimentCfg, ModelCfg, WorldCfg
from raysoup.data import world
from raysoup.data.render import COLORS


def transfer_unavailable(cfg: ExperimentCfg) -> str | None:
    """Why the transfer analysis cannot run on `cfg`'s sweep (None: it can). It needs a task
    the sweep never trained on, with its own labels of images the eval actors hold, and a
    text tower to read its class names: raysoup has such a task for the generated world only
    (the colour of the shapes). A user's ImageFolder or Parquet data carries one labelling;
    a new dataset would have to be decoded into the eval cache, which is not built yet."""
    if cfg.model.family != "open_clip":
        return (f"transfer: model.family {cfg.model.family} has no text tower to read a new "
                "task's class names zero-shot (the CLIP family only)")
    if cfg.data.world is None:
        return ("transfer: needs a task the sweep never trained on, labelled on images raysoup "
                "evaluates; it has one for the generated world (data.world: the shapes' "
                "colours) only. data.train/data.test (ImageFolder, Parquet) carry one "
                "labelling, and a second dataset with its class names and templates is not "
                "supported yet (docs/analysis.md, transfer)")
    return None


@dataclass(frozen=True)
class TransferTask:
    name: str
    classnames: list[str]
    templates: list[str]
    labels: np.ndarray  # int64, one per image of the split, in the split's order


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
    """[K, D] head for `task` from the base model's text tower (the zero-shot head's recipe)."""
    from raysoup.models import base_models, classifier, factory

    clip = factory.load_clip(model_cfg, base)
    vocab = base_models.base_vocab(base) if base and base_models.is_base_checkpoint(base) \
        else None
    tokenizer = factory.get_tokenizer(model_cfg, vocab)
    head = classifier.zero_shot_head(clip, tokenizer, task.classnames, task.templates)
    return head.numpy()
