"""The held-out split: carved from train by a hash of each sample's key.

Hashing keys (not shuffling indices) makes membership independent of order, of the other
samples, and of the machine, so every worker computes the same split without coordination.
"""

from __future__ import annotations

import hashlib

import numpy as np

from raysoup.data.images import LabeledImages


def heldout_mask(keys: list[str], fraction: float) -> np.ndarray:
    """True where sha256(key)[:8] as a big-endian integer / 2**64 < fraction."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"heldout fraction must lie in [0, 1], got {fraction}")
    threshold = fraction * 2.0**64
    return np.fromiter(
        (int.from_bytes(hashlib.sha256(k.encode("utf-8")).digest()[:8], "big") < threshold
         for k in keys),
        dtype=bool, count=len(keys))


def split_heldout(train: LabeledImages, fraction: float) -> tuple[LabeledImages, LabeledImages]:
    """(train without held-out samples, held-out samples)."""
    mask = heldout_mask(train.keys, fraction)
    return train.select(~mask), train.select(mask)
