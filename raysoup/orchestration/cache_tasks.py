"""The eval cache's Ray task: one shard decoded and preprocessed (evaluate/cache.py).

Its own module so that a task worker imports what decoding needs, not what evaluating does:
the worker imports the task's module, and orchestration/evaluation.py's model code pulls in
open_clip (~3 CPU-seconds of imports per worker process)."""

from __future__ import annotations

from pathlib import Path

import torch

from raysoup.data.images import LabeledImages
from raysoup.evaluate import cache


def _build_shard(data: LabeledImages, image_size: int, out: str, skip_corrupt: bool) -> dict:
    # The name is what Ray shows as the worker's process title (ray::_build_shard).
    torch.set_num_threads(1)
    return cache.build_shard(data, image_size, Path(out), skip_corrupt)
