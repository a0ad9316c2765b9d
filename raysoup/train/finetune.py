"""Fine-tune an ImageClassifier on LabeledImages: the pure-torch loop one sweep trial runs.

AdamW + linear warm-up/cosine (per step), gradient clipping, RandAugment (timm, per sample) and
crops (train/batches.py: cached or streamed input); the forward pass and the loss (label
smoothing, mixup/cutmix) are the model family's (models/family.py).
Reproducible: batches and their augmentation draws are functions of (hp.seed, epoch, step), and
every epoch reseeds torch and numpy, so a run resumed from its epoch-e state computes the same
epochs e+1.. as an uninterrupted one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raysoup.config import TrainHParams
from raysoup.data.images import LabeledImages
from raysoup.faults import failpoint
from raysoup.models.families import DEFAULT_FAMILY, get_family
from raysoup.models.family import ModelFamily, TrainObjective
from raysoup.train.augment import Normalize, random_shift_flip
from raysoup.train.batches import Augment, LoaderCfg, TrainInput, step_seed
from raysoup.train.schedule import lr_at

log = logging.getLogger(__name__)

OnEpoch = Callable[[int, dict, Callable[[], dict]], None]


class TrainError(ValueError):
    """Training cannot run with these inputs (empty data, odd mixup batch, bad resume state)."""


class Diverged(TrainError):
    """The loss became NaN/Inf: training is deterministic, so a retry diverges again."""


def _seed_epoch(seed: int, epoch: int) -> torch.Generator:
    # torchvision transforms draw from torch's global RNG, timm RandAugment from `random`,
    # timm Mixup from numpy's: seed all three so an epoch depends only on (seed, epoch).
    s = (seed * 1_000_003 + epoch) % (2**31)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s)
    return torch.Generator().manual_seed(s)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No decay on gains, biases, embeddings' 1-d params and the class token (as open_clip does).
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@dataclass
class _Loop:
    """What every epoch of one fine-tuning run shares (built once by `finetune`)."""

    model: nn.Module  # unwrapped: the state dict a trial saves
    net: nn.Module  # what runs the forward pass (DDP-wrapped with world > 1)
    optimizer: torch.optim.Optimizer
    objective: TrainObjective
    batches: TrainInput
    normalize: Normalize | None  # None: inputs go to the model as they come (token ids)
    hp: TrainHParams
    device: torch.device
    crop: str
    shift: int  # largest random translation (shift_flip crop), in pixels: 1/8 of the image
    steps_per_epoch: int
    world: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.hp.epochs


def finetune(
    model: nn.Module,
    train: LabeledImages,
    hp: TrainHParams,
    *,
    image_size: int | None = None,
    mean=None,
    std=None,
    tokens: dict | None = None,
    cache_root: str | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    resume: dict | None = None,
    on_epoch: OnEpoch | None = None,
    loader: LoaderCfg | None = None,
    shard: tuple[int, int] = (0, 1),
    family: ModelFamily | None = None,
) -> dict:
    """Train `model` in place for hp.epochs; returns the last epoch's metrics.

    on_epoch(epoch, metrics, state_fn) runs after each (1-based) epoch; state_fn() returns
    {"model", "optimizer", "epoch"} (live state dicts: save them before training continues),
    which `resume` accepts to continue at epoch+1.

    `shard=(rank, world)` with world > 1: one of `world` data-parallel workers in an
    initialised torch.distributed group (DDP). Each takes its slice of every global batch of
    hp.batch_size (the same samples per step as one worker); gradients are averaged, and the
    metrics are the whole batch's, on every rank.

    `family` (default open_clip) gives the forward pass and the loss; `image_size`, `mean`
    and `std` are its preprocessing record's (`family.input_args(manifest["preprocess"])`);
    a text family's record comes as `tokens`, and its token cache lives under `cache_root`
    (train/text_batches.py).
    """
    device = _set_up_device(device, threads)
    loader = loader or LoaderCfg()
    if tokens is not None:
        batches, steps_per_epoch = _text_input(train, hp, tokens, cache_root, loader, shard)
        normalize, image_size = None, 8
    else:
        batches, steps_per_epoch = _training_input(train, hp, image_size, mean, loader, shard)
        normalize = Normalize(mean, std, device)
    net, optimizer, start_epoch = _optimizer_and_resume(model, hp, device, shard[1], resume)
    objective = (family or get_family(DEFAULT_FAMILY)).train_objective(
        hp, len(train.classnames))
    loop = _Loop(model, net, optimizer, objective, batches, normalize, hp, device, loader.crop,
                 max(1, image_size // 8), steps_per_epoch, shard[1])

    metrics: dict = {"epoch": start_epoch - 1}
    lr = None
    for epoch in range(start_epoch, hp.epochs + 1):
        _seed_epoch(hp.seed, epoch)
        t0 = time.perf_counter()
        loss_sum, correct, seen, lr = _train_epoch(loop, epoch, lr)
        metrics = _epoch_metrics(loop, epoch, loss_sum, correct, seen, lr,
                                 time.perf_counter() - t0)
        if on_epoch is not None:
            on_epoch(epoch, dict(metrics), _state_fn(loop, epoch))
    model.eval()
    return metrics


def _set_up_device(device: str | torch.device | None, threads: int | None) -> torch.device:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal floats take a slow path on CPUs
    return device


def _training_input(train: LabeledImages, hp: TrainHParams, image_size: int, mean,
                    loader: LoaderCfg, shard: tuple[int, int]) -> tuple[TrainInput, int]:
    """The epoch batches and their number of steps, after checking that training can run."""
    if len(train) == 0:
        raise TrainError("finetune: the training split is empty")
    use_mix = hp.mixup > 0 or hp.cutmix > 0
    world = shard[1]
    if use_mix and (hp.batch_size // world) % 2:
        raise TrainError(f"finetune: mixup/cutmix need an even batch per worker, got "
                         f"{hp.batch_size} over {world} worker(s)")
    aug = Augment(image_size, loader.crop, hp.randaug_n, hp.randaug_m, tuple(mean))
    # Every sample once per epoch: the last batch may be smaller (and odd: the objective
    # pairs an odd batch's middle sample with itself).
    batches = TrainInput(train, aug, loader, hp.seed, hp.batch_size, shard=shard)
    return batches, batches.steps_per_epoch()


def _text_input(train, hp: TrainHParams, record: dict, cache_root: str | None,
                loader: LoaderCfg, shard: tuple[int, int]):
    from raysoup.train.text_batches import TextTrainInput, train_tokens

    if len(train) == 0:
        raise TrainError("finetune: the training split is empty")
    if cache_root is None:
        raise TrainError("finetune: token batches need a cache_root (the workdir's cache)")
    batches = TextTrainInput(train_tokens(train, record, cache_root), train.labels, hp.seed,
                             hp.batch_size, loader.window, shard)
    return batches, batches.steps_per_epoch()


def _optimizer_and_resume(model: nn.Module, hp: TrainHParams, device: torch.device, world: int,
                          resume: dict | None
                          ) -> tuple[nn.Module, torch.optim.Optimizer, int]:
    """(the module to run, its AdamW, the first epoch to train): restored from `resume`."""
    model.to(device).train()
    net: nn.Module = model
    if world > 1:
        # DDP averages gradients over the workers in backward; `model` (unwrapped) keeps the
        # state-dict keys of a single-process trial.
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(_param_groups(model, hp.weight_decay), lr=hp.lr)
    start_epoch = 1
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            start_epoch = int(resume["epoch"]) + 1
        except (KeyError, RuntimeError, ValueError) as exc:
            raise TrainError(f"finetune: unusable resume state ({exc})") from None
    return net, optimizer, start_epoch


def _train_epoch(loop: _Loop, epoch: int, lr: float | None
                 ) -> tuple[float, float, int, float | None]:
    """One epoch of steps: (summed loss, correct predictions, images seen, last step's lr),
    the whole global batch's with world > 1."""
    hp, device = loop.hp, loop.device
    # Sums stay on the device: a per-step .item() would make the CPU wait for every step
    # and keep it from preparing the next batch while the GPU computes.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    autocast = device.type == "cuda"
    whole = loop.batches.batch_sizes(epoch) if loop.world > 1 else None
    for i, (x, y) in enumerate(loop.batches.epoch(epoch)):
        # uint8 crosses to the device (4x fewer bytes than float32); shift/flip/normalise
        # run there. The draws come from a CPU generator, so the pixels are the same.
        weight = 1.0
        if loop.world > 1:
            weight = _rank_weight(loop, len(y), whole[i])
            if weight is None:  # the whole batch was corrupt: every rank skips it together
                continue
        elif not len(y):  # every image of the batch was corrupt (skip_corrupt)
            continue
        failpoint("train.step")  # drills: a worker killed mid-epoch
        real = len(y)
        if not real:
            # An empty slice: two stand-in images (BatchNorm trains on no fewer), weighted 0,
            # make this rank's forward, backward and mixup draw the other ranks' (DDP's
            # collectives stay in step); its BatchNorm statistics are put back after.
            x, y = x.new_zeros((2, *x.shape[1:])), y.new_zeros(2)
            buffers = [b.clone() for b in loop.model.buffers()]
        x = x.to(device, non_blocking=True)
        if loop.normalize is not None:  # images (token ids go in as they are)
            if loop.crop == "shift_flip":
                gen = torch.Generator().manual_seed(step_seed(hp.seed, epoch, i) ^ 0x5F3759DF)
                x = random_shift_flip(x, gen, loop.shift)
            x = loop.normalize(x.float())
        y = y.to(device)
        step = (epoch - 1) * loop.steps_per_epoch + i
        lr = lr_at(step, hp.lr, hp.warmup_steps, loop.total_steps)
        for group in loop.optimizer.param_groups:
            group["lr"] = lr
        x, target = loop.objective.mix(x, y)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits, loss = loop.objective.forward_loss(loop.net, x, target)
        loop.optimizer.zero_grad(set_to_none=True)
        (loss * weight if loop.world > 1 else loss).backward()
        nn.utils.clip_grad_norm_(loop.model.parameters(), hp.grad_clip)
        loop.optimizer.step()
        if not real:  # after backward, which may still read them
            with torch.no_grad():
                for b, saved in zip(loop.model.buffers(), buffers, strict=True):
                    b.copy_(saved)
        if real:
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.argmax(-1) == y).sum()
            seen += len(y)
    if loop.world > 1:  # the whole batch's metrics, identical on every rank
        totals = torch.stack([loss_sum, correct.double(),
                              torch.tensor(float(seen), dtype=torch.float64, device=device)])
        torch.distributed.all_reduce(totals)
        loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
    return loss_sum.item(), correct.item(), seen, lr  # .item() waits for the last step


def _rank_weight(loop: _Loop, mine: int, planned: int) -> float | None:
    """This rank's loss weight, `mine * world / whole batch`: DDP averages the ranks'
    gradients, so weighted slices give the whole batch's mean gradient however unequal
    (or empty) they are. Every rank makes the same forward and backward each step, so
    DDP's collectives stay in step. None: the whole batch is empty (skip_corrupt). With
    skip_corrupt the whole batch's count is one small all-reduce per step (ranks know only
    what they kept themselves)."""
    whole = planned
    if loop.batches.cfg.skip_corrupt:  # what the other ranks kept is known only to them
        count = torch.tensor([float(mine)], dtype=torch.float64, device=loop.device)
        torch.distributed.all_reduce(count)
        whole = int(count.item())
    return mine * loop.world / whole if whole else None


def _epoch_metrics(loop: _Loop, epoch: int, loss_sum: float, correct: float, seen: int,
                   lr: float | None, seconds: float) -> dict:
    """The epoch's outcome, after refusing a diverged loss."""
    skipped = loop.batches.skipped
    if skipped:
        log.warning("finetune: %d corrupt image(s) left out (data.skip_corrupt)", len(skipped))
    if not np.isfinite(loss_sum):
        raise Diverged(f"finetune: loss became {loss_sum} in epoch {epoch} (lr {loop.hp.lr})")
    return {
        "epoch": epoch,
        "train_loss": loss_sum / seen,
        "train_acc": correct / seen,
        "lr": lr,
        "images_per_s": seen / seconds,
        "train_images": seen,  # every sample once an epoch (all workers; less skipped ones)
        "skipped_images": len(skipped),  # corrupt, left out (data.skip_corrupt)
    }


def _state_fn(loop: _Loop, epoch: int) -> Callable[[], dict]:
    return lambda: {"model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
                    "epoch": epoch}
