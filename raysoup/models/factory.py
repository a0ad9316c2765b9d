"""Resolve -> build -> load for open_clip models (built-in names or our JSON configs).

A weight source is one of: an open_clip pretrained tag (downloaded from the hub by open_clip
itself), a local weights file (safetensors, or a torch pickle read with weights_only=True), or
the project's own base checkpoint written by the tiny pre-training (models/base_models.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import open_clip
import torch
from safetensors.torch import load_file

from raysoup.config import ModelCfg
from raysoup.models.base_models import SHIPPED_PREFIX, BaseModelError, shipped_base, shipped_bases
from raysoup.models.tokenizer import WordTokenizer

CONFIG_DIR = Path(__file__).parent / "configs"

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A model name, weight source or weights file is unusable; the message says what was tried."""


@dataclass(frozen=True)
class WeightSource:
    kind: Literal["open_clip_tag", "file", "base"]
    tag: str | None = None
    path: Path | None = None


def register_configs() -> None:
    """Make raysoup/models/configs/*.json known to open_clip (idempotent)."""
    # open_clip keeps a module-level list of config paths; add ours once.
    if CONFIG_DIR not in open_clip.factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(CONFIG_DIR)


def model_config(name: str) -> dict:
    """The open_clip config dict (embed_dim, vision_cfg, text_cfg) of a model name."""
    register_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ModelLoadError(
            f"unknown open_clip model {name!r}; known: {', '.join(open_clip.list_models())}"
        )
    return cfg


def resolve_weights(cfg: ModelCfg, base_checkpoint: Path | None = None) -> WeightSource:
    """Decide where cfg's weights come from, without loading anything."""
    model_config(cfg.name)  # unknown name -> error listing the known ones
    if cfg.pretrained is None:
        if base_checkpoint is None:
            raise ModelLoadError(
                f"model {cfg.name!r} uses model.pretrain but no base checkpoint path was given "
                "(build it with raysoup.train.base_clip.ensure_base_clip)"
            )
        path = Path(base_checkpoint)
        if not path.is_file():
            raise ModelLoadError(f"base checkpoint not found: {path}")
        return WeightSource(kind="base", path=path)
    if cfg.pretrained.startswith(SHIPPED_PREFIX):  # a base shipped in this package
        try:
            return WeightSource(kind="file", path=shipped_base(cfg.pretrained))
        except BaseModelError as exc:
            raise ModelLoadError(str(exc)) from None
    tags = open_clip.list_pretrained_tags_by_model(cfg.name)
    if cfg.pretrained in tags:
        return WeightSource(kind="open_clip_tag", tag=cfg.pretrained)
    path = Path(cfg.pretrained).expanduser()
    if path.is_file():
        return WeightSource(kind="file", path=path.absolute())
    shipped = [SHIPPED_PREFIX + n for n in shipped_bases()]
    raise ModelLoadError(
        f"model.pretrained {cfg.pretrained!r} for {cfg.name!r}: tried (1) open_clip pretrained "
        f"tags of {cfg.name!r}: {tags or 'none'}; (2) a local file {path.absolute()}: not found; "
        f"(3) a base shipped with raysoup: {', '.join(shipped) or 'none'}"
    )


def build_clip(name: str) -> open_clip.CLIP:
    """A randomly initialised open_clip model of the named architecture, in eval mode."""
    model_config(name)
    # A random skeleton is intended here (weights are loaded next): drop open_clip's warning.
    root = logging.getLogger()
    quiet = _DropMessage("No pretrained weights loaded")
    root.addFilter(quiet)
    try:
        clip = open_clip.create_model(name, pretrained=None)
    finally:
        root.removeFilter(quiet)
    return clip.eval()


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """State dict from safetensors or a torch file, never unpickling arbitrary objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure: the file is not a plain state dict
        raise ModelLoadError(
            f"{path}: cannot read with torch.load(weights_only=True) ({exc}); convert it to a "
            "plain state dict or safetensors"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # open_clip training checkpoints wrap the weights
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path}: expected a dict of tensors (a state dict)")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `model` after checking names and shapes (errors name the source)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelLoadError(
            f"{source}: state dict does not match the model: missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            # open_clip stores logit_scale as a scalar or a 1-element vector depending on version
            if name == "logit_scale" and tensor.numel() == own[name].numel():
                state[name] = tensor.reshape(own[name].shape)
                continue
            raise ModelLoadError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(own[name].shape)}"
            )
    model.load_state_dict(state, strict=True)


def load_clip(cfg: ModelCfg, base_checkpoint: Path | None = None) -> open_clip.CLIP:
    """Build cfg.name and load its weights from the resolved source; eval mode."""
    source = resolve_weights(cfg, base_checkpoint)
    if source.kind == "open_clip_tag":
        try:
            clip = open_clip.create_model(cfg.name, pretrained=source.tag)
        except Exception as exc:  # noqa: BLE001 - hub/network failures vary by backend
            raise ModelLoadError(
                f"open_clip could not load {cfg.name!r} pretrained={source.tag!r} (it downloads "
                f"from the hub; offline?): {exc}"
            ) from None
        return clip.eval()
    clip = build_clip(cfg.name)
    load_state_checked(clip, read_weights_file(source.path), str(source.path))
    return clip.eval()


def image_stats(clip: torch.nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image_size, mean, std) the model's image tower expects, from its preprocess config."""
    pp = open_clip.get_model_preprocess_cfg(clip)
    size = pp["size"]
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ModelLoadError(f"non-square image size {tuple(size)} is not supported")
        size = size[0]
    return int(size), tuple(float(m) for m in pp["mean"]), tuple(float(s) for s in pp["std"])


def get_tokenizer(cfg: ModelCfg, vocab: list[str] | None = None):
    """open_clip's tokenizer for the model, or the world's word tokenizer sized to text_cfg."""
    if cfg.tokenizer == "open_clip":
        register_configs()
        return open_clip.get_tokenizer(cfg.name)
    if vocab is None:
        raise ModelLoadError("model.tokenizer 'world' needs the world vocabulary (vocab=None)")
    text_cfg = model_config(cfg.name)["text_cfg"]
    return WordTokenizer(vocab, text_cfg["context_length"], text_cfg["vocab_size"])
