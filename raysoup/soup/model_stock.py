"""Model Stock (Jang, Yun & Han, ECCV 2024, "Model Stock: All we need is just a few fine-tuned
models"): per tensor, move from the pre-trained anchor θ_0 towards the average of k fine-tuned
models by a ratio set by how aligned their updates are,

    cos = mean over pairs i<j of cos(θ_i − θ_0, θ_j − θ_0)
    t   = k·cos / (1 + (k − 1)·cos)
    θ   = t·mean_i(θ_i) + (1 − t)·θ_0,

i.e. reduction weights [1 − t, t/k, ..., t/k] over [θ_0, θ_1..θ_k], one set per tensor.

The paper writes one angle θ for all pairs (its geometry assumes equal angles); with k > 2 we
use the mean pairwise cosine, as mergekit's implementation does. Edge cases, decided here:
- k < 2: no pair, no angle: an error (the method needs at least two fine-tuned models);
- a zero delta (θ_i == θ_0 for that tensor): its cosines count as 0 (mergekit's convention);
- cos < 0 is clamped to 0 (t = 0: keep θ_0). Unclamped, t < 0 extrapolates away from the
  fine-tuned models and diverges at cos = −1/(k − 1); the paper only considers cos > 0;
- non-floating tensors (integer buffers) are not averaged: the reduction requires them equal.

Memory: `interpolation_ratios` streams one tensor name at a time over every file (no mmap),
holding θ_0, one delta and a running sum of unit deltas — never whole models. The mean pairwise
cosine needs no pairs: with unit deltas u_i and m of them non-zero,
Σ_{i<j} ⟨u_i, u_j⟩ = (‖Σ u_i‖² − m) / 2.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import torch

from raysoup.checkpoints.ingredient import weights_path
from raysoup.checkpoints.tensorfile import open_tensors
from raysoup.soup.base import Candidate, Kitchen, RecipeResult, anchored
from raysoup.soup_settings import Settings


def stock_ratio(cos: float, k: int) -> float:
    """t = k·cos / (1 + (k−1)·cos), with cos clamped to [0, 1]."""
    if k < 2:
        raise ValueError(f"model_stock needs at least 2 fine-tuned models, got {k}")
    c = min(max(cos, 0.0), 1.0)
    return k * c / (1.0 + (k - 1) * c)


def interpolation_ratios(paths: list[Path], names: list[str]) -> dict[str, dict[str, float]]:
    """{tensor: {"cos": mean pairwise cosine of the deltas, "t": ratio}} for the floating
    tensors in `names`; paths[0] is the anchor θ_0, paths[1:] the k fine-tuned models."""
    k = len(paths) - 1
    if k < 2:
        raise ValueError(f"model_stock needs at least 2 fine-tuned models, got {k}")
    files = [weights_path(p) for p in paths]
    out = {}
    with ExitStack() as stack:
        handles = [stack.enter_context(open_tensors(f)) for f in files]
        for name in names:
            theta0 = handles[0].get_tensor(name)
            if not theta0.is_floating_point():
                continue
            theta0 = theta0.double().reshape(-1)
            unit_sum = torch.zeros_like(theta0)
            nonzero = 0
            for f, h in zip(files[1:], handles[1:]):
                # A copy before the in-place subtraction: safetensors may share memory.
                delta = h.get_tensor(name).to(torch.float64, copy=True).reshape(-1)
                if delta.shape != theta0.shape:
                    raise ValueError(f"tensor {name!r}: shape differs between {files[0]} and {f}")
                delta -= theta0
                norm = torch.linalg.vector_norm(delta)
                if norm > 0:
                    unit_sum.add_(delta / norm)
                    nonzero += 1
                del delta
            pair_sum = (float(unit_sum.dot(unit_sum)) - nonzero) / 2
            cos = pair_sum / (k * (k - 1) / 2)
            out[name] = {"cos": cos, "t": stock_ratio(cos, k)}
    return out


class ModelStock:
    name = "model_stock"
    Settings = Settings

    def cook(self, candidates: list[Candidate], kitchen: Kitchen | None) -> RecipeResult:
        anchor, tuned = anchored(kitchen, candidates, self.name, at_least=2)
        k = len(tuned)
        ratios = kitchen.per_tensor(interpolation_ratios, [anchor.path, *(c.path for c in tuned)])
        tensor_weights = {n: [1.0 - r["t"]] + [r["t"] / k] * k for n, r in ratios.items()}
        # `weights` only reaches tensors without their own (integer buffers, not averaged);
        # the mean ratio is recorded so the soup's MLflow run shows a representative mix.
        t_mean = sum(r["t"] for r in ratios.values()) / max(len(ratios), 1)
        return RecipeResult(
            ingredients=[anchor.name, *(c.name for c in tuned)],
            weights=[1.0 - t_mean] + [t_mean / k] * k,
            tensor_weights=tensor_weights,
            trace=[{"tensor": n, **r} for n, r in ratios.items()],
            info={"k": k, "t_mean": t_mean},
        )
