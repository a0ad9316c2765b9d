"""Greedy soup sums held-out counts over slices (`Evaluator.score(..., part=(i, k))`), and k
varies with the pool size and the candidates per round: a decision may only depend on the
weights, never on how held-out is sliced. So per-sample logits and summed counts must be
bitwise the same for 1..4 slices, on CPU, for the shipped tiny architectures."""

import numpy as np
import pytest
import torch

from raysoup.evaluate.evaluator import EvalSplit, Evaluator
from raysoup.models.classifier import classifier_skeleton

CLASSES, N = 5, 203  # N divisible by none of 2, 3, 4: slices of unequal size


def splits():
    rng = np.random.default_rng(0)
    return {"heldout": EvalSplit(rng.standard_normal((N, 3, 32, 32)).astype(np.float32),
                                 rng.integers(0, CLASSES, N)),
            "shift": EvalSplit(rng.standard_normal((N, 3, 32, 32)).astype(np.float32),
                               rng.integers(0, 2, N), class_subset=(1, 3))}


@pytest.mark.parametrize(("model_name", "batch_size"), [
    ("raysoup-tiny-vit", 64),
    ("raysoup-tiny-vit", 500),
    ("raysoup-tiny-rn", 500),  # every slice fits one batch of >= 16 rows
    ("raysoup-tiny-rn", 64),  # CPU convolutions take another kernel under 16 rows
])
def test_logits_and_counts_do_not_depend_on_slicing(model_name, batch_size):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    evaluator = Evaluator(classifier_skeleton(model_name, CLASSES), splits(), batch_size)
    weights = {k: v.clone() for k, v in evaluator.model.state_dict().items()}
    whole = {name: evaluator.logits(name) for name in ("heldout", "shift")}
    counts = evaluator.score(weights, ["heldout", "shift"])
    for k in (1, 2, 3, 4):
        for name, ref in whole.items():
            sliced = torch.cat([evaluator.logits(name, (i, k)) for i in range(k)])
            assert torch.equal(sliced, ref), f"{name}: logits differ with {k} slices"
        parts = [evaluator.score(weights, ["heldout", "shift"], part=(i, k)) for i in range(k)]
        summed = {name: tuple(map(sum, zip(*(p[name] for p in parts)))) for name in counts}
        assert summed == counts, f"counts differ with {k} slices"
