"""The ensemble reuses the logits the evaluate stage kept (evaluate/logits_cache.py): the same
bits as its N forward passes, without them. Real open_clip ingredients (tiny ModifiedResNet),
a real eval cache shard, the eval actor's class in this process (no Ray needed)."""

import shutil

import numpy as np
import torch
from safetensors.torch import load_file

from raysoup.checkpoints import write_ingredient
from raysoup.evaluate import logits_cache
from raysoup.evaluate.cache import CachedImages, shard_name
from raysoup.evaluate.evaluator import EvalSplit, load_weights_
from raysoup.models.classifier import classifier_skeleton
from raysoup.orchestration.evaluation import EvalWorker

MODEL, CLASSES, N = "raysoup-tiny-rn", 3, 40
SPLIT_DIR = "heldout-0123456789abcdef"  # an eval cache directory: the split's name and digest


def _members(root):
    torch.manual_seed(0)
    base = classifier_skeleton(MODEL, CLASSES).state_dict()
    out = []
    for i in range(3):
        state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                 for k, v in base.items()}
        out.append(root / "ingredients" / f"trial-{i:03d}")
        write_ingredient(out[-1], state, {"kind": "ingredient", "model_name": MODEL,
                                          "num_classes": CLASSES})
    return out


def _splits(root):
    rng = np.random.default_rng(0)
    directory = root / "cache" / "eval" / SPLIT_DIR
    directory.mkdir(parents=True)
    np.save(directory / shard_name(0), rng.integers(0, 256, (N, 3, 32, 32), dtype=np.uint8))
    images = CachedImages(str(directory), [N], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return {"heldout": EvalSplit(images=images, labels=rng.integers(0, CLASSES, N))}


def test_ensemble_from_kept_logits_is_bit_identical(tmp_path):
    members = _members(tmp_path)
    # batch 16 of 40 images: the last batch is partial, as on real splits
    worker = EvalWorker(MODEL, CLASSES, _splits(tmp_path), 16)
    kept_root = tmp_path / "cache" / "logits"
    paths = [str(m) for m in members]

    direct = worker.evaluate_ensemble(paths, ["heldout"])  # N forward passes
    for m in members:  # the evaluate stage: scores each model and keeps its logits
        scored = worker.evaluate_path(str(m), ["heldout"], str(kept_root))
        assert scored == worker.evaluate_path(str(m), ["heldout"])  # keeping changes nothing
    files = sorted(kept_root.rglob("*.npy"))
    assert len(files) == 3 and {f.name for f in files} == {f"{SPLIT_DIR}.npy"}

    # A kept file is exactly the model's logits (float32 [N, C]).
    load_weights_(worker.evaluator.model, load_file(str(members[0] / "model.safetensors")))
    first = logits_cache.read(logits_cache.logits_path(
        kept_root, worker._logits_key(members[0]), SPLIT_DIR), (N, CLASSES))
    assert first is not None and torch.equal(first, worker.evaluator.logits("heldout"))

    # Without their weights the members can come only from the kept logits: the ensemble's
    # counts and per-image bits are those of its forward passes.
    for m in members:
        (m / "model.safetensors").rename(m / "moved.safetensors")
    assert worker.evaluate_ensemble(paths, ["heldout"], str(kept_root)) == direct
    # A member without kept logits is run as before (its weights back, its file gone).
    (members[2] / "moved.safetensors").rename(members[2] / "model.safetensors")
    shutil.rmtree(kept_root / worker._logits_key(members[2]))
    assert worker.evaluate_ensemble(paths, ["heldout"], str(kept_root)) == direct


def test_budget_bounds_what_is_kept():
    # The miniature: 7 models x 9,000 images x 10 classes x 4 B = 2.5 MB, kept under 1 GiB;
    # ImageNet: 72 models x ~250,000 images x 1,000 classes x 4 B = 72 GB, not kept.
    assert logits_cache.fits(7, 9_000, 10, 1024)
    assert not logits_cache.fits(72, 250_000, 1_000, 1024)
    assert not logits_cache.fits(1, 1, 1, 0)
