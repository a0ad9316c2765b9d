"""The error landscape's grid (the paper's Fig. 2): points θ = (1 − a − b)·θ_0 + a·θ_1 + b·θ_2
on the plane through the zero-shot model θ_0 and two fine-tuned models.

Each point is a weighting of the three models' files, so a vertex weights one model by exactly
1 and the others by 0: its weights, and its evaluation, are that model's own."""

from __future__ import annotations

import numpy as np

# The three models and their 2-soup, (a, b): always evaluated, whatever the grid.
MARKED = {"zero-shot": (0.0, 0.0), "first": (1.0, 0.0), "second": (0.0, 1.0),
          "2-soup": (0.5, 0.5)}


def grid(points: int = 5, lo: float = -0.5, hi: float = 1.5) -> list[tuple[float, float]]:
    """`points` × `points` coefficients (a, b) over [lo, hi]², plus the marked points; sorted.
    The default's step of 0.5 puts every marked point on the grid."""
    if points < 2:
        raise ValueError(f"a landscape grid needs at least 2 points per axis, got {points}")
    if not lo < hi:
        raise ValueError(f"landscape range: lo ({lo}) must be below hi ({hi})")
    axis = [float(v) for v in np.linspace(lo, hi, points)]
    cells = {(a, b) for a in axis for b in axis} | set(MARKED.values())
    return sorted(cells)


def weights(a: float, b: float) -> list[float]:
    """The weights of (θ_0, θ_1, θ_2) at (a, b)."""
    return [1.0 - a - b, a, b]
