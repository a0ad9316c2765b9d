"""The project's own base model, pre-trained once per recipe and cached: DIR/clip.safetensors
and DIR/manifest.json, the layout `raysoup.models.base_models` reads (and verifies) everywhere else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from raysoup.atomic import write_atomic
from raysoup.config import ModelCfg
from raysoup.models.base_models import (
    FORMAT,
    BaseModelError,
    check_sha256,
    read_base_manifest,
    splits_vocabulary,
    weights_sha256,
)
from raysoup.models.factory import build_clip, get_tokenizer, image_stats
from raysoup.models.family import PretrainObjective
from raysoup.train.pretrain import pretrain_clip


def _cached(cache_dir: Path, model_cfg: ModelCfg, vocab: list[str]) -> Path | None:
    weights = cache_dir / "clip.safetensors"
    if not (weights.is_file() and (cache_dir / "manifest.json").is_file()):
        return None
    m = read_base_manifest(cache_dir)
    same = (
        m.get("format") == FORMAT
        and m.get("model_name") == model_cfg.name
        and m.get("pretrain") == model_cfg.pretrain.model_dump(mode="json")
        and m.get("vocab") == vocab
    )
    if not same:
        return None
    check_sha256(weights, m)
    return weights


def ensure_base_clip(
    model_cfg: ModelCfg,
    splits,
    cache_dir: Path,
    progress: bool = True,
    *,
    vocab: list[str] | None = None,
    recipe: dict | None = None,
    corpus=None,
    objective: PretrainObjective | None = None,
) -> Path:
    """Path of the cached base CLIP for model_cfg, pre-training it on `corpus` (LabeledImages
    with captions; default splits.train) if needed.

    `vocab` is the word tokenizer's vocabulary (default: the words of the corpus's captions and
    of splits' class names and templates). Later tokenizers must use the same list: `base_vocab(path)`.
    `recipe` (what produced it: command, config) is recorded in the manifest. `objective`:
    the loss, the model family's `pretrain_objective()` (default: CLIP's contrastive loss).
    """
    if model_cfg.pretrain is None:
        raise BaseModelError(f"model {model_cfg.name!r} has no model.pretrain section")
    if model_cfg.tokenizer != "world":
        raise BaseModelError("model.pretrain needs model.tokenizer: world (captions' vocabulary)")
    cache_dir = Path(cache_dir)
    corpus = corpus if corpus is not None else splits.train
    vocab = sorted(vocab) if vocab is not None else splits_vocabulary(splits, corpus)
    hit = _cached(cache_dir, model_cfg, vocab)
    if hit is not None:
        return hit

    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "manifest.json").unlink(missing_ok=True)  # invalidate before rewriting weights
    torch.manual_seed(model_cfg.pretrain.seed)  # the random init is part of what the seed fixes
    clip = build_clip(model_cfg.name)
    tokenizer = get_tokenizer(model_cfg, vocab)
    size, mean, std = image_stats(clip)
    if progress:
        print(f"base model: pre-training {model_cfg.name} for {model_cfg.pretrain.steps} steps "
              f"on {len(corpus)} image-caption pairs", file=sys.stderr)
    metrics = pretrain_clip(clip, corpus, tokenizer, model_cfg.pretrain, image_size=size,
                            mean=mean, std=std, progress=progress, objective=objective)
    weights = cache_dir / "clip.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}
    write_atomic(weights, lambda p: save_file(state, str(p)))
    manifest = {
        "format": FORMAT,
        "model_name": model_cfg.name,
        "pretrain": model_cfg.pretrain.model_dump(mode="json"),
        "vocab": vocab,
        "metrics": metrics,
        "sha256": weights_sha256(weights),
        **({"recipe": recipe} if recipe else {}),
    }
    write_atomic(cache_dir / "manifest.json",
                  lambda p: p.write_text(json.dumps(manifest, indent=2)))
    return weights
