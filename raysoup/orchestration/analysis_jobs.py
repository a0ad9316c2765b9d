"""What one eval actor computes for `raysoup analyze` (`EvalWorker.apply(fn, ...)`): every
job is a whole evaluation on one actor, over the same batch grid, so its result does not
depend on which actor or how many ran it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raysoup import storage
from raysoup.analysis.geometry import update_gram
from raysoup.checkpoints import load_state_dict, read_manifest
from raysoup.evaluate.evaluator import correct_mask, load_weights_, packed
from raysoup.reduce import INDEX_FILE, Blend, read_sharded


def model_weights(path: Path) -> dict:
    """An ingredient directory's or a weight soup directory's (sharded) tensors."""
    return read_sharded(path) if storage.is_file(path / INDEX_FILE) else load_state_dict(path)


def blended(paths: list[str], weights: list[float]) -> dict[str, np.ndarray]:
    """Σ w_i·θ_i over the ingredient directories, whole-model (the soup stage's shard
    arithmetic, `reduce.Blend`); integer buffers from the most weighted model."""
    files = [Path(p) for p in paths]
    names = list(read_manifest(files[0])["tensors"])
    heaviest = int(np.argmax(weights))
    return Blend(tuple(float(w) for w in weights), integers_from=heaviest).shard(files, names)


def blend_scores(worker, paths: list[str], weights: list[float], splits: list[str]) -> dict:
    """{split: (correct, n, summed cross-entropy)} of the weighting (`split_scores`)."""
    load_weights_(worker.evaluator.model, blended(paths, weights))
    return {split: split_scores(worker.evaluator, split) for split in splits}


def split_scores(evaluator, split: str) -> tuple[int, int, float]:
    """(correct, n, summed cross-entropy in float64; NaN on a split over some classes only)
    of the loaded model. The sum is a float, not the evaluator's fixed-point units: a point
    far outside the models (a landscape's corner) can lose hundreds of nats an image."""
    data = evaluator.splits[split]
    logits = evaluator.logits(split)
    labels = torch.from_numpy(np.array(data.labels, np.int64))  # a copy: torch wants it writable
    mask = correct_mask(logits, labels, data.class_subset, data.class_groups)
    whole = data.class_subset is None and data.class_groups is None
    loss = float(torch.nn.functional.cross_entropy(logits.double(), labels, reduction="sum")) \
        if whole else float("nan")
    return int(mask.sum()), len(data), loss


def logits_of(worker, path: str, split: str) -> np.ndarray:
    """[N, C] float32 logits of a model directory on one split."""
    load_weights_(worker.evaluator.model, model_weights(Path(path)))
    return worker.evaluator.logits(split).numpy()


def gram_of(worker, base: str, paths: list[str], names: list[str]) -> np.ndarray:
    """The updates' Gram matrix over one shard of tensor names (`geometry.update_gram`)."""
    return update_gram(Path(base), [Path(p) for p in paths], names)


@torch.no_grad()
def transfer_scores(worker, path: str, head: np.ndarray, labels: np.ndarray | None,
                    split: str) -> tuple[int, int, bytes]:
    """(correct, n, packed per-image correctness) of a model's image tower read through
    `head` ([K, D], from the text tower) against `labels` on `split` (None: the split's own,
    on its class subset if it covers some classes only)."""
    evaluator = worker.evaluator
    load_weights_(evaluator.model, model_weights(Path(path)))
    model = evaluator.model
    if not hasattr(model, "features"):
        raise ValueError("transfer: the model family has no image features to read zero-shot")
    # a copy: Ray hands arrays over read-only, and torch wants a writable buffer
    w = torch.from_numpy(np.array(head, np.float32)).to(evaluator.device)
    data = evaluator.splits[split]
    subset = None
    if labels is None:
        labels, subset = data.labels, data.class_subset
    if len(labels) != len(data):
        raise ValueError(f"transfer: {len(labels)} labels for the {len(data)} images of {split}")
    out = []
    for batch in data.images.batches(0, len(data), evaluator.batch_size):
        x = torch.tensor(batch, device=evaluator.device)
        out.append((model.features(x).float() @ w.T).cpu())
    mask = correct_mask(torch.cat(out), torch.from_numpy(np.array(labels, np.int64)), subset)
    return int(mask.sum()), len(labels), packed(mask)
