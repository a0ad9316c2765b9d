"""A soup (or an ingredient) as a checkpoint plain open_clip loads: open_clip's `local-dir:`
layout, so architectures open_clip does not ship (raysoup's tiny configs) load too.

    DIR/open_clip_config.json        {"model_cfg", "preprocess_cfg", "classnames", "raysoup"}
    DIR/open_clip_model.safetensors  a full CLIP: the soup's image tower + the base text tower
    DIR/head.safetensors             the classification head: weight [C, D], bias [C]
    DIR/README.md                    the model card: recipe, ingredients, accuracy table

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:DIR")
    model.eval()
    features = model.encode_image(preprocess(img.convert("RGB"))[None], normalize=True)
    logits = torch.nn.functional.linear(features, head["weight"], head["bias"])

The weights are read and written as safetensors; nothing is unpickled. These are the open_clip
family's export formats (`OpenClipImageFamily.export_formats`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from raysoup import storage
from raysoup.atomic import OLD_PREFIX, atomic_dir, move_aside
from raysoup.checkpoints import MANIFEST_FILE, load_state_dict
from raysoup.reduce.writer import INDEX_FILE, read_sharded
from raysoup.workdir import IngredientManifest

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
HEAD_FILE = "head.safetensors"
CARD_FILE = "README.md"
FLAT_FILE = "model.safetensors"
EXPORT_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, HEAD_FILE, CARD_FILE, FLAT_FILE})
VISUAL = "visual."


class ExportError(ValueError):
    """A soup or base model that cannot be exported; the message names the file or tensor."""


@dataclass
class ModelInfo:
    """What a model needs to leave raysoup, beyond its weights (from the zero-shot manifest)."""

    model_name: str
    model_cfg: dict
    classnames: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    base_model: str | None = None
    extra: dict = field(default_factory=dict)  # recipe, ingredients, accuracies (card, config)

    @property
    def preprocess_cfg(self) -> dict:
        """open_clip's eval transform, the one raysoup evaluates with to the pixel
        (data/transforms.py): shorter side to size (bicubic), centre crop, normalise."""
        return {"size": self.image_size, "mean": self.mean, "std": self.std,
                "interpolation": "bicubic", "resize_mode": "shortest"}

    def config(self) -> dict:
        return {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg,
                "classnames": self.classnames,
                "raysoup": {"model_name": self.model_name, "base_model": self.base_model,
                            **self.extra}}


def model_info(zeroshot_dir: Path, **extra) -> ModelInfo:
    """ModelInfo of a workdir from its zero-shot ingredient's manifest."""
    from raysoup.models.families import family_of

    manifest = IngredientManifest.read(zeroshot_dir)
    pp = manifest.preprocess
    architecture = family_of(manifest.meta).architecture(manifest.model_name)
    return ModelInfo(manifest.model_name, architecture,
                     list(manifest.meta["classnames"]), int(pp["image_size"]), list(pp["mean"]),
                     list(pp["std"]), manifest.meta.get("base_model"), extra)


def base_clip_state(model_cfg, info: ModelInfo) -> dict[str, torch.Tensor]:
    """The base CLIP the ingredients were fine-tuned from (`model_cfg`: the experiment's
    `model` section; a pre-trained base is the file the zero-shot manifest names)."""
    from raysoup.models.families import family_of

    base = info.base_model if model_cfg.pretrain is not None else None
    pretrained = family_of(model_cfg).load_pretrained(model_cfg, Path(base) if base else None)
    return pretrained.state_dict()


def model_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of a soup directory (sharded, sha256-checked) or an ingredient, any family."""
    model_dir = Path(model_dir)
    if storage.is_file(model_dir / INDEX_FILE):
        return read_sharded(model_dir)
    if storage.is_file(model_dir / MANIFEST_FILE):
        return load_state_dict(model_dir, verify=True)
    raise ExportError(f"{storage.display(model_dir)}: neither a soup ({INDEX_FILE}) nor an "
                      f"ingredient ({MANIFEST_FILE}); an ensemble has no single set of weights")


def classifier_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """visual.* + head.* of a soup directory (sharded, sha256-checked) or an ingredient."""
    model_dir = Path(model_dir)
    state = model_state(model_dir)
    for name in ("head.weight", "head.bias"):
        if name not in state:
            raise ExportError(f"{storage.display(model_dir)}: tensor {name} missing (not an "
                              "image classifier)")
    return state


def _is_export(path: Path) -> bool:
    """True when `path` holds only files an export writes, with raysoup's config among them:
    an earlier export, which a new one may replace."""
    names = {p.name for p in path.iterdir()}
    if not names <= EXPORT_FILES or any((path / n).is_dir() for n in names):
        return False
    try:
        return "raysoup" in json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return False


def claim_out_dir(out_dir: Path, overwrite: bool = False) -> Path | None:
    """Make `out_dir` free for an export, never deleting what raysoup did not write: absent,
    empty or an earlier export is fine; anything else is refused, or with `overwrite` moved
    aside (returned, and said on stderr) for its owner to keep or delete."""
    out_dir = Path(out_dir)
    if not out_dir.exists() and not out_dir.is_symlink():
        return None
    if out_dir.is_dir() and not out_dir.is_symlink() and (
            not any(out_dir.iterdir()) or _is_export(out_dir)):
        return None
    what = "a directory raysoup did not write" if out_dir.is_dir() else "not a directory"
    if not overwrite:
        raise ExportError(f"--out {out_dir}: exists and is {what}; nothing was written. Choose "
                          "another directory, or pass --overwrite to move it aside (kept as "
                          f"{out_dir.parent}/{OLD_PREFIX}{out_dir.name}-<id>)")
    old = move_aside(out_dir)
    print(f"raysoup: --overwrite: moved the existing {out_dir} aside to {old} (nothing deleted)",
          file=sys.stderr)
    return old


def _write_dir(out_dir: Path, files: dict[str, object], overwrite: bool = False) -> Path:
    """Write every file of an export at once: a partial export never looks complete."""
    claim_out_dir(Path(out_dir), overwrite)
    with atomic_dir(Path(out_dir)) as tmp:
        for name, content in files.items():
            if isinstance(content, str):
                (tmp / name).write_text(content)
            else:
                tensors, metadata = content
                save_file(tensors, str(tmp / name), metadata=metadata)
            (tmp / name).chmod(0o644)  # files to hand on, as any written with write_text
    return Path(out_dir)


def export_safetensors(model_dir: Path, info: ModelInfo, out_dir: Path,
                       overwrite: bool = False) -> Path:
    """The classifier (visual.* and head.*) as one `model.safetensors` + the config."""
    state = classifier_state(model_dir)
    return _write_dir(out_dir, {
        FLAT_FILE: ({k: v.contiguous() for k, v in state.items()}, {"format": "pt"}),
        CONFIG_FILE: json.dumps(info.config(), indent=2),
        CARD_FILE: model_card(info, "safetensors"),
    }, overwrite)


def export_open_clip(model_dir: Path, info: ModelInfo, base_state: dict[str, torch.Tensor],
                     out_dir: Path, overwrite: bool = False) -> Path:
    """A full CLIP in open_clip's local-dir layout: the image tower of `model_dir` with every
    other tensor (text tower, projections, logit scale) from `base_state`, the base CLIP the
    soup's ingredients were fine-tuned from, plus the head and the model card."""
    state = classifier_state(model_dir)
    visual = {k: v for k, v in state.items() if k.startswith(VISUAL)}
    base_visual = {k for k in base_state if k.startswith(VISUAL)}
    if set(visual) != base_visual:
        diff = sorted(set(visual) ^ base_visual)
        raise ExportError(f"{storage.display(model_dir)}: image-tower tensors differ from the "
                          f"base model's ({len(diff)}, e.g. {diff[:3]}): not fine-tuned from it")
    for name, tensor in visual.items():
        if tuple(tensor.shape) != tuple(base_state[name].shape):
            raise ExportError(f"{storage.display(model_dir)}: tensor {name} has shape "
                              f"{tuple(tensor.shape)}, the base model's "
                              f"{tuple(base_state[name].shape)}")
    clip = {k: v.contiguous() for k, v in base_state.items() if not k.startswith(VISUAL)}
    clip.update({k: v.contiguous() for k, v in visual.items()})
    head = {"weight": state["head.weight"].contiguous(), "bias": state["head.bias"].contiguous()}
    return _write_dir(out_dir, {
        WEIGHTS_FILE: (clip, {"format": "pt"}),
        HEAD_FILE: (head, {"format": "pt"}),
        CONFIG_FILE: json.dumps(info.config(), indent=2),
        CARD_FILE: model_card(info, "open_clip"),
    }, overwrite)


def model_card(info: ModelInfo, fmt: str) -> str:
    """README.md of an export: what the model is, how it was made, how well it does."""
    extra = info.extra
    title = extra.get("model", "model")
    lines = [f"# {title}", "",
             (f"A `{info.model_name}` image classifier ({len(info.classnames)} classes) made by "
              f"raysoup from the base model `{info.base_model}`.")]
    if extra.get("recipe"):
        names = extra.get("ingredients", [])
        lines += ["", (f"Recipe: **{extra['recipe']}** over {len(names)} ingredient(s): "
                       f"{', '.join(names)}.")]
        if extra.get("weights"):
            weights = ", ".join(f"{w:.3g}" for w in extra["weights"])
            lines += ["", f"Mixing weights: {weights}."]
    if extra.get("accuracy"):
        acc = dict(extra["accuracy"])
        shifts = {k: v for k, v in acc.items() if k not in ("heldout", "test")}
        if shifts:
            acc["mean shift"] = sum(shifts.values()) / len(shifts)
        order = ["heldout", "test", *sorted(shifts), "mean shift"]
        lines += ["", "| split | accuracy (%) |", "|---|---|"]
        lines += [f"| {k} | {100 * acc[k]:.2f} |" for k in order if k in acc]
    if fmt == "open_clip":
        lines += ["", "## Load", "", "```python",
                  "import open_clip, torch",
                  "from safetensors.torch import load_file",
                  'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:DIR")',
                  "model.eval()  # BatchNorm towers (ResNets) need eval mode",
                  'head = load_file("DIR/head.safetensors")',
                  "with torch.no_grad():",
                  "    f = model.encode_image(preprocess(image)[None], normalize=True)",
                  '    logits = torch.nn.functional.linear(f, head["weight"], head["bias"])',
                  "```", "",
                  ("`preprocess` is the transform raysoup evaluated with, to the pixel (its "
                   "resize and crop are raysoup's eval resize): batch the same images and the "
                   "logits are the report's. Convert images to RGB first (`.convert(\"RGB\")`), "
                   "as raysoup decodes them."), "",
                  ("Class names are in `open_clip_config.json` (`classnames`). The text tower is "
                   "the base model's (the soup changes only the image tower).")]
    else:
        lines += ["", ("`model.safetensors` holds the classifier's state dict: `visual.*` (the "
                       "open_clip image tower) and `head.weight`, `head.bias`.")]
    lines += ["", f"Preprocessing: {json.dumps(info.preprocess_cfg)}.", ""]
    return "\n".join(lines)
