"""Short contrastive (CLIP) pre-training of a tiny open_clip model on image-caption pairs: the
loop `ensure_base_clip` (train/base_clip.py) runs with the family's `pretrain_objective()`.

This produces the shared initialisation of the embedded default experiment: the world has
no hub weights, so we train the image and text towers together for a few hundred steps.
Images are decoded once into a uint8 tensor and augmented per batch with tensor ops (random
translation + horizontal flip), which is far cheaper than per-sample PIL transforms on CPU.
"""

from __future__ import annotations

import math
import sys
import time

import torch
from torch import nn

from raysoup.config import PretrainCfg
from raysoup.data.images import LabeledImages
from raysoup.models.family import PretrainObjective
from raysoup.models.open_clip_objectives import ContrastiveObjective
from raysoup.train.augment import Normalize, random_shift_flip, uint8_images
from raysoup.train.schedule import lr_at

_SHIFT = 4  # max random translation in pixels (at 32x32: 12%)


class PretrainError(ValueError):
    """Pre-training inputs are unusable (no captions, empty data, NaN loss)."""


def pretrain_clip(
    clip: nn.Module,
    data: LabeledImages,
    tokenizer,
    cfg: PretrainCfg,
    *,
    image_size: int,
    mean,
    std,
    device: str | torch.device | None = None,
    progress: bool = True,
    objective: PretrainObjective | None = None,
) -> dict:
    """Train `clip` in place with `objective` (default: CLIP's symmetric InfoNCE loss, the
    open_clip family's `pretrain_objective()`); returns summary metrics."""
    if data.captions is None:
        raise PretrainError("pretrain_clip: the training data has no captions")
    if len(data) < cfg.batch_size:
        raise PretrainError(f"pretrain_clip: {len(data)} images < batch_size {cfg.batch_size}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    pixels = uint8_images(data, image_size)  # decoded once, augmented per batch
    texts = tokenizer(list(data.captions))  # tokenise once: [N, context_length]
    normalize = Normalize(mean, std, device)
    clip.to(device).train()
    optimizer = _optimizer(clip, cfg)
    objective = objective or ContrastiveObjective()
    autocast = device.type == "cuda"

    batches = _Batches(len(data), cfg.batch_size, gen)
    t0 = t_log = time.perf_counter()
    loss_avg, seen = None, 0
    for step in range(cfg.steps):
        idx = batches.next()
        images = normalize(random_shift_flip(pixels[idx], gen, _SHIFT).to(device))
        tokens = texts[idx].to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        value = _step(clip, objective, optimizer, images, tokens, autocast)
        if not math.isfinite(value):
            raise PretrainError(f"pretrain_clip: loss became {value} at step {step} (lr {cfg.lr})")
        loss_avg = value if loss_avg is None else 0.95 * loss_avg + 0.05 * value
        seen += len(idx)
        if progress and ((step + 1) % 100 == 0 or step + 1 == cfg.steps):
            t_log = _print_progress(step, cfg, loss_avg, t_log)
    clip.eval()
    seconds = time.perf_counter() - t0
    return {"steps": cfg.steps, "loss": loss_avg, "seconds": seconds,
            "images_per_s": seen / seconds, **objective.summary(clip)}


def _optimizer(clip: nn.Module, cfg: PretrainCfg) -> torch.optim.AdamW:
    decay = [p for p in clip.parameters() if p.ndim >= 2]
    no_decay = [p for p in clip.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
    )


class _Batches:
    """Sample indices a batch at a time: a fresh permutation per epoch, no partial batches.
    The permutations draw from the same generator as the augmentation, in step order."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator):
        self.n, self.batch_size, self.gen = n, batch_size, gen
        self.order, self.pos = torch.randperm(n, generator=gen), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:  # new epoch
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


def _step(clip: nn.Module, objective: PretrainObjective, optimizer: torch.optim.Optimizer,
          images: torch.Tensor, tokens: torch.Tensor, autocast: bool) -> float:
    """One optimizer step on a batch; its loss."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = objective.loss(clip, images, tokens)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    objective.after_step(clip)
    return loss.item()


def _print_progress(step: int, cfg: PretrainCfg, loss_avg: float, t_log: float) -> float:
    """One progress line on stderr; the time it was printed (the next rate's start)."""
    now = time.perf_counter()
    rate = 100 * cfg.batch_size / max(now - t_log, 1e-9) if (step + 1) % 100 == 0 else 0
    print(f"pretrain: step {step + 1}/{cfg.steps} loss {loss_avg:.3f} "
          f"img/s {rate:.0f}", file=sys.stderr, flush=True)
    return now
