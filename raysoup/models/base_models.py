"""The project's own base model: a tiny CLIP pre-trained on the world's captioned images.

DIR/clip.safetensors holds the CLIP weights; DIR/manifest.json records what produced them
(model name, pretrain config, the tokenizer vocabulary, metrics, sha256, and for `raysoup
pretrain` the recipe). The manifest is written last, so its presence marks a complete entry.

A base is either cached in a workdir (`model.pretrain`: pre-trained on first use, by
`raysoup.train.base_clip`) or shipped in this package under `bases/<name>/` and named
`model.pretrained: raysoup:<name>` — the miniature's CLIP, which `experiments/tiny.yaml` starts
from as the paper starts from OpenAI's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from raysoup.config import ModelCfg
from raysoup.data.world import normalize_words

FORMAT = "raysoup.base_clip/1"
SHIPPED = Path(__file__).parent / "bases"
SHIPPED_PREFIX = "raysoup:"


class BaseModelError(ValueError):
    """The base-model cache is unusable or the config cannot produce a base model."""


def head_words(classnames, templates) -> set[str]:
    """Words of the class names and templates: what the zero-shot head tokenises."""
    words: set[str] = set()
    for text in classnames:
        words.update(normalize_words(text))
    for template in templates:
        text = template.replace("{}", " ") if isinstance(template, str) else template("")
        words.update(normalize_words(text))
    return words


def splits_vocabulary(splits, corpus=None) -> list[str]:
    """Sorted words of the pre-training captions (`corpus`, default the train split), class
    names and (string) templates."""
    words = head_words(splits.classnames, splits.templates)
    for text in (corpus if corpus is not None else splits.train).captions or []:
        words.update(normalize_words(text))
    return sorted(words)


def read_base_manifest(path: Path) -> dict:
    """Manifest of a base checkpoint (path: clip.safetensors or its directory)."""
    path = Path(path)
    manifest = (path if path.is_dir() else path.parent) / "manifest.json"
    try:
        return json.loads(manifest.read_text())
    except FileNotFoundError:
        raise BaseModelError(f"base model manifest not found: {manifest}") from None
    except json.JSONDecodeError as exc:
        raise BaseModelError(f"{manifest}: not valid JSON ({exc})") from None


def shipped_bases() -> list[str]:
    return sorted(p.name for p in SHIPPED.iterdir() if (p / "manifest.json").is_file()) \
        if SHIPPED.is_dir() else []


def shipped_base(spec: str) -> Path:
    """clip.safetensors of the base a `raysoup:<name>` spec names."""
    name = spec.removeprefix(SHIPPED_PREFIX)
    weights = SHIPPED / name / "clip.safetensors"
    if not (weights.is_file() and (weights.parent / "manifest.json").is_file()):
        raise BaseModelError(f"model.pretrained {spec!r}: no such base shipped with raysoup; "
                             f"shipped: {[SHIPPED_PREFIX + n for n in shipped_bases()]}")
    return weights


def is_base_checkpoint(path: Path) -> bool:
    """A weights file with a raysoup base manifest beside it (it carries its vocabulary)."""
    manifest = Path(path).parent / "manifest.json"
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def weights_sha256(path: Path) -> str:
    """sha256 of a base's weights file, as its manifest records it."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_sha256(weights: Path, manifest: dict) -> None:
    if manifest.get("sha256") != weights_sha256(weights):
        raise BaseModelError(f"{weights}: sha256 does not match its manifest "
                             f"({weights.parent / 'manifest.json'}): the file is corrupt or "
                             "replaced")


def verify_base(path: Path, model_cfg: ModelCfg, words: set[str]) -> Path:
    """Check a base checkpoint before use: its sha256, the architecture it was trained for,
    and that its vocabulary has every word of the class names and templates (`words`)."""
    path = Path(path)
    m = read_base_manifest(path)
    if m.get("model_name") != model_cfg.name:
        raise BaseModelError(f"{path}: pre-trained for model {m.get('model_name')!r}, but "
                             f"model.name is {model_cfg.name!r}")
    check_sha256(path, m)
    unknown = sorted(set(words) - set(m.get("vocab", [])))
    if unknown:
        raise BaseModelError(f"{path}: its vocabulary lacks {unknown[:10]} (class names or "
                             "templates of this config): pre-train a base on this data with "
                             "`raysoup pretrain`")
    return path


def base_vocab(path: Path) -> list[str]:
    """The tokenizer vocabulary the base model was pre-trained with (token ids depend on it)."""
    return list(read_base_manifest(path)["vocab"])
