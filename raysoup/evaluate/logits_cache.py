"""Each ingredient's logits on each eval split, kept for the logit ensemble.

The evaluate stage runs every ingredient on every split; the ensemble (mean logits of its
members) would run them all again in the soup evaluation stage. Instead the evaluate stage
keeps each ingredient's logits, float32 [N, C] exactly as `Evaluator.logits` returned them, at

    WORKDIR/cache/logits/<key>/<split's eval-cache directory name>.npy

and the ensemble sums those files in member order: the same additions of the same numbers, so
the same bits as its N forward passes. The key covers everything that can change a logit's
bits: the weights (the tensor file's sha256, which the evaluate stage audits), the batch size,
the torch threads, the device and torch's version; the file name the split's cache digest
(its images, labels and preprocessing). A member without a file (its key differs, or it was
never kept) is run as before.

Bound: the driver keeps logits only while every ingredient's files fit `eval.logits_cache_mb`
(`fits`: models x images x classes x 4 bytes). The miniature's seven models on 9,000 images x
10 classes take 2.5 MB; ImageNet's 72 models x ~250,000 images (validation and four shifts) x
1,000 classes would take 72 GB, so there nothing is kept and the ensemble runs its forward
passes. Memory is what the ensemble held before: one [N, C] sum per split plus one member's
logits on one split.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch

from raysoup import storage

BYTES_PER_LOGIT = 4  # float32: the logits' own bits (float16 would change the ensemble's)


def fits(models: int, images: int, classes: int, budget_mb: float) -> bool:
    """Whether `models` ingredients' logits on `images` eval images fit the budget."""
    return models * images * classes * BYTES_PER_LOGIT <= budget_mb * 2**20


def key(weights_sha256: str, batch_size: int, threads: int, device: str) -> str:
    """What a model's logits depend on besides the split: its weights and how it ran."""
    spec = {"weights": weights_sha256, "batch_size": batch_size, "threads": threads,
            "device": device, "torch": torch.__version__, "v": 1}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def logits_path(root: Path, model_key: str, split_dir: str) -> Path:
    return Path(root) / model_key / f"{split_dir}.npy"


def write(path: Path, logits: torch.Tensor) -> None:
    """Atomically: a reader sees a whole file or none."""
    array = logits.detach().cpu().numpy().astype(np.float32, copy=False)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a temp name
            np.save(f, array)

    storage.write_file(path, save)


def read(path: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    """The kept logits, or None when there are none of that shape (never unpickles)."""
    if not storage.is_file(path):
        return None
    data = storage.read_bytes(path) if storage.is_remote(path) else None
    array = np.load(io.BytesIO(data) if data is not None else path, allow_pickle=False)
    if array.dtype != np.float32 or tuple(array.shape) != tuple(shape):
        return None
    return torch.from_numpy(np.array(array))  # writable: the ensemble adds into the first
