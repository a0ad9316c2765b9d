"""Training input: which samples form each step's batch, and how they become uint8 tensors.

The *epoch plan* is a pure function of (seed, epoch, the split's units, batch size, window):
units (Parquet row groups, or single files) are shuffled, their samples shuffled within
windows of `window` samples and cut into batches, the last one smaller: every sample once per
epoch. The loader's lanes (DataLoader workers) only share out the making of the batches, and
data-parallel workers take slices of each batch, so neither the CPU count nor the worker count
changes which samples form which step's batch. Augmentation draws come from a generator seeded
per step. So a resumed trial sees the same batches, and so do the two ways pixels arrive:

- **cached**: the split's decoded images fit `memory_budget_mb`, and are decoded once per
  trial into memory (the 32-px world);
- **streamed**: one DataLoader worker per lane reads the row groups of its runs of steps,
  decodes and augments their batches; the trainer puts the batches back in step order.
  Memory is bounded by the window, the lanes, the prefetch depth and the batch size (at most
  about `lanes` runs of batches wait to be used), never by the number of images.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from raysoup.config import default_memory_budget_mb
from raysoup.data.images import DataError, LabeledImages, decode_pixels, image_size_of
from raysoup.data.transforms import resize_center_crop

CROPS = ("shift_flip", "random_resized_crop")
# open_clip's training preprocess: RandomResizedCrop(scale=(0.9, 1.0)), ratio as torchvision.
RRC_SCALE = (0.9, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class LoaderCfg:
    """How a trial's training batches are produced (from DataCfg and the trial's resources)."""

    lanes: int = 1  # streamed: DataLoader workers; they make the batches, never choose them
    window: int = 1024  # samples shuffled together within a lane
    # Decoded split above this: streamed. Unset: the config's default for this machine.
    memory_budget_mb: float = field(
        default_factory=lambda: default_memory_budget_mb(node_memory_bytes()))
    crop: str = "shift_flip"  # "shift_flip" (batched, after decode) or "random_resized_crop"
    prefetch: int = 2  # batches in flight per worker
    skip_corrupt: bool = False  # drop an undecodable image from its batch (else: an error)


@dataclass(frozen=True)
class Augment:
    image_size: int
    crop: str
    randaug_n: int = 0
    randaug_m: int = 9
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)


def node_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def loader_for(data, trial_cpus: float) -> LoaderCfg:
    """LoaderCfg from a DataCfg and the CPUs a trial holds (the defaults the config documents)."""
    budget = data.train_budget_mb(node_memory_bytes())
    crop = data.train_crop
    if crop == "auto":
        crop = "shift_flip" if data.world is not None else "random_resized_crop"
    lanes = data.loader_workers or max(1, int(trial_cpus) - 1)
    return LoaderCfg(lanes=lanes, window=data.shuffle_window, memory_budget_mb=budget, crop=crop,
                     skip_corrupt=data.skip_corrupt)


def decode_batch(data: LabeledImages, idx, skip_corrupt: bool) -> tuple[list, np.ndarray]:
    """(decoded uint8 HWC images, the positions of `idx` they are); corrupt ones raise, or are
    left out."""
    if not skip_corrupt:
        return data.pixels_many(idx), np.asarray(idx)
    images, kept = [], []
    for i, encoded in zip(idx, data.images.read(idx), strict=True):
        try:
            images.append(decode_pixels(encoded, data.where(i)))
            kept.append(i)
        except DataError:
            continue
    return images, np.asarray(kept, dtype=np.int64)


def step_seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step) % (2**31)


def plan_epoch(units: np.ndarray, seed: int, epoch: int, batch_size: int, lanes: int,
               window: int) -> list[tuple[int, np.ndarray]]:
    """[(lane, sample indices)] in step order: every sample exactly once, in batches of
    `batch_size` (the last one smaller when the split does not divide; one larger when a
    single sample would be left).

    The batches and their order depend on (units, seed, epoch, batch_size, window) only:
    units are shuffled, their samples shuffled within windows of `window` and cut into
    batches. `lanes` (the DataLoader workers, from the CPU count) only says which worker
    makes each batch, so the CPU count never changes what a trial computes. A lane makes runs
    of ⌈window/batch_size⌉ consecutive steps, lanes taking runs in turn: a run covers about
    one window, so each row group is read by about one lane per epoch."""
    if not len(units):
        return []
    rng = np.random.default_rng([seed, epoch])
    uniq, inverse = np.unique(units, return_inverse=True)
    by_unit = np.argsort(inverse, kind="stable")
    members = np.split(by_unit, np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1])
    samples = np.concatenate([members[u] for u in rng.permutation(len(uniq))])
    # Seeded as lane 0 of the earlier per-lane plan: a one-lane trial keeps its batches.
    window_rng = np.random.default_rng([seed, epoch, 1])
    for lo in range(0, len(samples), window):
        samples[lo:lo + window] = window_rng.permutation(samples[lo:lo + window])
    starts = list(range(0, len(samples), batch_size))
    if len(starts) > 1 and len(samples) - starts[-1] == 1:
        starts.pop()  # a lone last sample joins the batch before: BatchNorm cannot train on one
    run = run_length(batch_size, window)
    return [((i // run) % lanes, samples[lo:hi])
            for i, (lo, hi) in enumerate(zip(starts, starts[1:] + [len(samples)]))]


def rank_slice(idx: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Data-parallel worker `rank`'s contiguous part of a batch: equal parts of a batch the
    workers divide, else parts of ⌈n/world⌉ (at least 2) from the first worker on, a lone
    last sample joining the part before; later workers may get none."""
    n = len(idx)
    if n % world == 0 and n // world != 1:
        return idx[rank * n // world:(rank + 1) * n // world]
    part = max(2, -(-n // world))
    bounds = [min(n, k * part) for k in range(world + 1)]
    for k in range(1, world + 1):
        if bounds[k] - bounds[k - 1] == 1 and k > 1:
            bounds[k - 1] = bounds[k]  # the lone sample joins worker k-2's part
    return idx[bounds[rank]:bounds[rank + 1]]


def run_length(batch_size: int, window: int) -> int:
    """Consecutive steps one lane makes (`plan_epoch`): about one window of samples."""
    return max(1, -(-window // batch_size))


def random_resized_crop_box(w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawing from `rng`: (left, top, right, bottom)."""
    area = w * h
    log_ratio = np.log(RRC_RATIO)
    for _ in range(10):
        target = area * rng.uniform(*RRC_SCALE)
        aspect = float(np.exp(rng.uniform(*log_ratio)))
        cw, ch = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return left, top, left + cw, top + ch
    in_ratio = w / h  # fallback: centre crop at the nearest allowed ratio
    cw, ch = ((w, round(w / RRC_RATIO[0])) if in_ratio < RRC_RATIO[0] else
              (round(h * RRC_RATIO[1]), h) if in_ratio > RRC_RATIO[1] else (w, h))
    cw, ch = min(cw, w), min(ch, h)
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def random_resized_crop(hwc: np.ndarray, size: int, rng: np.random.Generator) -> torch.Tensor:
    """open_clip's RandomResizedCrop (bicubic, on the source image) of a uint8 [H, W, 3]
    image, as uint8 [3, S, S]. torch's uint8 antialiased bicubic is PIL's kernel within
    rounding (tests/test_batches.py) and faster than PIL's resize on the training path."""
    left, top, right, bottom = random_resized_crop_box(hwc.shape[1], hwc.shape[0], rng)
    chw = torch.from_numpy(hwc if hwc.flags.writeable else hwc.copy()).permute(2, 0, 1)
    out = torch.nn.functional.interpolate(chw[None, :, top:bottom, left:right],
                                          size=(size, size), mode="bicubic", antialias=True)
    return out[0]


_randaug_cache: dict = {}


def _randaugment(aug: Augment):
    key = (aug.randaug_n, aug.randaug_m, aug.image_size, aug.mean)
    if key not in _randaug_cache:
        from timm.data.auto_augment import rand_augment_transform

        _randaug_cache[key] = rand_augment_transform(f"rand-m{aug.randaug_m}-n{aug.randaug_n}", {
            "translate_const": int(aug.image_size * 0.45),
            "img_mean": tuple(round(255 * v) for v in aug.mean)})
    return _randaug_cache[key]


def make_batch(images: Sequence, aug: Augment, seed: int) -> torch.Tensor:
    """Decoded images (PIL or uint8 HWC arrays, any size) → uint8 [B, 3, S, S].

    shift_flip: brought to S (shorter side + centre crop); the shift and flip are drawn
    later, on the whole batch (`augment.random_shift_flip`). random_resized_crop: open_clip's
    crop of the source image. RandAugment (timm) draws from Python's `random`, reseeded here.
    """
    # timm's RandAugment draws from `random` and numpy's global RNG: seed both for this batch
    # and restore them after, so the caller's draws (mixup) do not depend on where the batch
    # was made (this process or a DataLoader worker).
    saved = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        return _make_batch(images, aug, np.random.default_rng(seed))
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def _make_batch(images: Sequence, aug: Augment, rng: np.random.Generator) -> torch.Tensor:
    size = aug.image_size
    ra = _randaugment(aug) if aug.randaug_n > 0 else None
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    planes = out.numpy()  # numpy writes take read-only sources (PIL's arrays) without a copy
    for i, img in enumerate(images):
        is_array = isinstance(img, np.ndarray)
        if ra is None and is_array and aug.crop == "shift_flip" and img.shape[:2] == (size, size):
            planes[i] = img.transpose(2, 0, 1)
            continue
        if aug.crop == "random_resized_crop":
            crop = random_resized_crop(np.asarray(img) if is_array else np.array(img), size, rng)
            if ra is None:
                out[i] = crop
                continue
            pil = Image.fromarray(crop.permute(1, 2, 0).numpy())
        else:
            pil = Image.fromarray(img) if is_array else img
            if pil.size != (size, size):
                pil = resize_center_crop(pil, size)
        if ra is not None:
            pil = ra(pil)
        planes[i] = np.asarray(pil).transpose(2, 0, 1)
    return out


def estimated_decoded_bytes(data: LabeledImages, probe: int = 32) -> float:
    """Decoded size of the whole split from the first images' headers (no pixels decoded)."""
    if not len(data):
        return 0.0
    idx = list(range(min(probe, len(data))))
    sizes = []
    for b in data.images.read(idx):
        try:
            sizes.append(image_size_of(b))
        except (OSError, SyntaxError, ValueError):
            continue  # a corrupt image: named (or skipped) when it is decoded
    if not sizes:
        return float("inf")  # nothing to go by: stream
    return float(np.mean([w * h * 3 for w, h in sizes])) * len(data)


class TrainInput:
    """The batches of one trial's epochs: (uint8 [B,3,S,S], int64 labels [B]) in plan order."""

    def __init__(self, data: LabeledImages, aug: Augment, cfg: LoaderCfg, seed: int,
                 batch_size: int, shard: tuple[int, int] = (0, 1)):
        """`shard=(rank, world)`: this data-parallel worker's part of every global batch."""
        self.data, self.aug, self.cfg = data, aug, cfg
        self.seed, self.batch_size = seed, batch_size
        self.rank, self.world = shard
        self.skipped: set[int] = set()  # corrupt images left out (skip_corrupt)
        self.labels = torch.from_numpy(np.asarray(data.labels, np.int64))
        self.units = data.images.units()
        self.cached = estimated_decoded_bytes(data) <= cfg.memory_budget_mb * 2**20
        self._pixels = None

    def steps(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        plan = plan_epoch(self.units, self.seed, epoch, self.batch_size, self.cfg.lanes,
                          self.cfg.window)
        if self.world == 1:
            return plan
        # Every worker plans the same global batches (same seed) and takes its contiguous
        # slice of each: together they see exactly the single-worker trial's samples per step.
        # A slice may be empty (a last batch smaller than the workers): the worker still
        # steps with the others (train/finetune.py).
        return [(lane, rank_slice(idx, self.rank, self.world)) for lane, idx in plan]

    def batch_sizes(self, epoch: int) -> list[int]:
        """The whole (all workers') batch of every step, as planned (before skip_corrupt)."""
        return [len(idx) for _, idx in plan_epoch(self.units, self.seed, epoch, self.batch_size,
                                                  self.cfg.lanes, self.cfg.window)]

    def steps_per_epoch(self) -> int:
        return len(self.steps(1))  # the same for every epoch: only the order changes

    def pixels(self):
        """The cached split: uint8 [N,H,W,3] when all images share a size, else a list (None
        for a corrupt image under skip_corrupt)."""
        if self._pixels is None:
            try:
                if self.cfg.skip_corrupt:
                    raise ValueError  # decoded one by one below
                self._pixels = self.data.decode_all()
            except ValueError:  # images of different sizes, or some may be corrupt
                self._pixels = [None] * len(self.data)
                for lo in range(0, len(self.data), 256):
                    idx = list(range(lo, min(len(self.data), lo + 256)))
                    images, kept = decode_batch(self.data, idx, self.cfg.skip_corrupt)
                    for i, img in zip(kept, images, strict=True):
                        self._pixels[i] = np.asarray(img)
        return self._pixels

    def _kept(self, planned: np.ndarray, kept: np.ndarray) -> np.ndarray:
        if len(kept) < len(planned):
            self.skipped |= set(planned.tolist()) - set(kept.tolist())
        return kept

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self.steps(epoch)
        if self.cached:
            pixels = self.pixels()
            for step, (_, idx) in enumerate(plan):
                if (isinstance(pixels, np.ndarray) and self.aug.randaug_n == 0
                        and self.aug.crop == "shift_flip"
                        and pixels.shape[1:3] == (self.aug.image_size,) * 2):
                    x = torch.from_numpy(pixels[idx]).permute(0, 3, 1, 2).contiguous()
                else:
                    kept = self._kept(idx, np.asarray([i for i in idx if pixels[i] is not None],
                                                      np.int64))
                    x = make_batch([pixels[i] for i in kept], self.aug,
                                   step_seed(self.seed, epoch, step))
                    idx = kept
                yield x, self.labels[idx]
            return
        yield from self._streamed(epoch, plan)

    def _streamed(self, epoch: int, plan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torchvision.io  # noqa: F401  (decode_pixels's decoder, imported once, before fork)
        from torch.utils.data import DataLoader

        lanes = LaneBatches(self.data, plan, self.aug, self.seed, epoch,
                            run_length(self.batch_size, self.cfg.window) * self.batch_size,
                            self.cfg.skip_corrupt)
        loader = DataLoader(lanes, batch_size=None, num_workers=self.cfg.lanes,
                            prefetch_factor=self.cfg.prefetch,
                            multiprocessing_context=_worker_context(self.data),
                            pin_memory=torch.cuda.is_available())
        # Workers deliver round robin, one batch each in turn, while a lane makes runs of
        # consecutive steps: the reorder buffer holds up to about `lanes` runs of batches.
        pending: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
        want = 0
        for step, x, idx in loader:
            pending[int(step)] = (x, idx)
            while want in pending:
                x, idx = pending.pop(want)
                kept = self._kept(plan[want][1], np.asarray(idx))
                yield x[:len(kept)], self.labels[kept]
                want += 1
        if want != len(plan):
            raise RuntimeError(f"training input: {want} of {len(plan)} batches arrived")


def _release_free_memory() -> None:
    """Hand freed heap back to the OS after each batch: decoded images of varied sizes leave
    glibc's and pyarrow's allocators holding freed memory that grows with the batches made."""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def _worker_context(data: LabeledImages):
    """How DataLoader workers start. Forked from the trainer for local data (cheapest: they
    share its imported modules). Object-store clients (pyarrow's S3/GCS) do not survive a
    fork, so for remote data they start from a fork server that imported this module once."""
    if not data.images.is_remote():
        return None
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["raysoup.train.loader_server"])
    return context


class LaneBatches(torch.utils.data.IterableDataset):
    """DataLoader worker w decodes and augments the batches of lane w, in step order."""

    def __init__(self, data: LabeledImages, plan, aug: Augment, seed: int, epoch: int,
                 run_samples: int, skip_corrupt: bool = False):
        self.data, self.plan, self.aug = data, plan, aug
        self.seed, self.epoch, self.skip_corrupt = seed, epoch, skip_corrupt
        # Enough row groups stay cached for one run of steps (plus its neighbours at the
        # edges): a lane reads each of its row groups once.
        if hasattr(data.images, "cache_groups"):
            sizes = np.bincount(np.unique(data.images.units(), return_inverse=True)[1])
            data.images.cache_groups = int(np.ceil(run_samples / max(1, sizes.min()))) + 2

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        lane = info.id if info is not None else 0
        for step, (owner, idx) in enumerate(self.plan):
            if owner != lane:
                continue
            images, kept = decode_batch(self.data, idx, self.skip_corrupt)
            x = make_batch(images, self.aug, step_seed(self.seed, self.epoch, step))
            del images
            _release_free_memory()
            yield step, x, kept
