"""Where the fine-tuned models lie relative to the zero-shot model: the Gram matrix of their
updates τ_i = θ_i − θ_0, streamed tensor by tensor (never N models in memory), the angles
between updates, and positions on the plane through θ_0 and two models."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from raysoup.checkpoints.ingredient import weights_path
from raysoup.checkpoints.tensorfile import open_tensors

# BatchNorm's running statistics are buffers, not learned parameters: the angle is taken over
# what fine-tuning optimises (as the paper's, over the network's weights).
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def update_names(tensors: dict[str, dict]) -> list[str]:
    """The tensors an update is measured on: floating-point, not a BatchNorm buffer
    (`tensors`: a manifest's {name: {"shape", "dtype"}})."""
    return [n for n, t in tensors.items()
            if t["dtype"].startswith(("float", "bfloat")) and not n.endswith(BUFFER_SUFFIXES)]


def update_gram(base: Path, paths: list[Path], names: list[str]) -> np.ndarray:
    """G[i, j] = Σ over `names` of ⟨θ_i − θ_0, θ_j − θ_0⟩ (float64), θ_0 at `base`.

    One tensor name at a time: memory is N + 1 copies of one tensor, whatever N; summing the
    Grams of disjoint name sets gives the whole model's."""
    n = len(paths)
    gram = np.zeros((n, n))
    with ExitStack() as stack:
        zero = stack.enter_context(open_tensors(weights_path(base)))
        handles = [stack.enter_context(open_tensors(weights_path(p))) for p in paths]
        for name in names:
            theta0 = zero.get_tensor(name).double().reshape(-1)
            taus = torch.stack([h.get_tensor(name).double().reshape(-1) - theta0
                                for h in handles])
            gram += (taus @ taus.T).numpy()
    return gram


def angles_degrees(gram: np.ndarray) -> np.ndarray:
    """The angle between every two updates, in degrees (NaN where an update is zero)."""
    norms = np.sqrt(np.diag(gram))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = gram / np.outer(norms, norms)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def plane_positions(gram2: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Euclidean coordinates on the plane through θ_0, θ_1, θ_2 of the points
    θ_0 + a·u + b·v (u = θ_1 − θ_0, v = θ_2 − θ_0; `coeffs` rows (a, b)), in an orthonormal
    basis whose first axis is u: distances and angles in the figure are the weights' own."""
    uu, uv, vv = gram2[0, 0], gram2[0, 1], gram2[1, 1]
    if uu <= 0:
        raise ValueError("the first model's update is zero: no plane to draw")
    nu = np.sqrt(uu)
    height = np.sqrt(max(vv - uv**2 / uu, 0.0))
    a, b = np.asarray(coeffs, float).T
    return np.stack([a * nu + b * uv / nu, b * height], axis=1)
