"""Soups against logit ensembles, as the paper's Sec. 4 relates them.

For two models θ_0, θ_1 and α ∈ [0, 1], the soup θ_α = (1 − α)θ_0 + αθ_1 and the ensemble
with logits (1 − α)f(x; θ_0) + αf(x; θ_1) agree at α = 0 and 1. A second-order expansion of
both losses along α gives (cross-entropy, logits at temperature 1)

    L_soup(α) − L_ens(α) ≈ α(1 − α)/2 · ( −L_soup''(α) + E_x Var_{Y∼p(x)} [Δf_Y(x)] )

with Δf = f(x; θ_1) − f(x; θ_0) and p the softmax of the ensemble's logits: the soup does
better than the ensemble where the loss curves upward along the interpolation (flatness, the
first term: a convex path helps the soup) and the ensemble where its predictions are unsure
(confidence, the second term: the variance of the logit change under the predicted classes,
which is small for confident predictions). The curvature is measured from the soup's loss at a
few α other than the point predicted, so the prediction never reads the soup it predicts.

For N models with weights w the same expansion around the soup θ̄ = Σ w_i θ_i gives

    L_soup − L_ens ≈ ½ Σ_i w_i ( −(θ_i − θ̄)ᵀ ∇²L(θ̄) (θ_i − θ̄) + E_x Var_{Y∼p(x)}[f_Y(x; θ_i) − f̄_Y(x)] )

(f̄ the ensemble's logits): `flatness_term` plus half of `confidence_term`. Each curvature is
measured along the line from the soup to one ingredient, again without the soup itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def loss_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of [N, C] logits."""
    z = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(
        np.asarray(logits, np.float64))
    y = torch.from_numpy(np.asarray(labels, np.int64))
    loss = torch.nn.functional.cross_entropy(z, y).item()
    return loss, float((z.argmax(1) == y).double().mean())


def confidence_term(logits: Iterable[np.ndarray], weights: list[float]) -> float:
    """Σ_i w_i E_x Var_{Y∼softmax(z̄)}[z_i,Y − z̄_Y] with z̄ = Σ w_i z_i: the ensemble loss's
    curvature term. For two models with weights (1 − α, α) it is α(1 − α)·E Var[Δf_Y]; the
    approximation above is half of it minus the flatness term. `logits` is iterated twice, one
    model at a time (a lazy iterable keeps two [N, C] arrays in memory, whatever N models)."""
    mean = ensemble_logits(logits, weights)
    p = torch.softmax(mean, dim=1)
    total = 0.0
    for w, z in zip(weights, logits, strict=True):
        d = torch.from_numpy(np.asarray(z, np.float64)) - mean
        var = (p * d**2).sum(1) - (p * d).sum(1) ** 2
        total += w * float(var.mean())
    return total


def ensemble_logits(logits: Iterable[np.ndarray], weights: list[float]) -> torch.Tensor:
    """Σ w_i z_i in float64, one model at a time."""
    mean = None
    for w, z in zip(weights, logits, strict=True):
        term = w * torch.from_numpy(np.asarray(z, np.float64))
        mean = term if mean is None else mean.add_(term)
    if mean is None:
        raise ValueError("an ensemble needs at least one model")
    return mean


def curvature(alphas: list[float], losses: list[float]) -> float:
    """L'' of the least-squares quadratic through (α, loss) points (at least 3)."""
    if len(alphas) < 3:
        raise ValueError("the curvature along the interpolation needs at least 3 α points")
    c2, _, _ = np.polyfit(np.asarray(alphas, float), np.asarray(losses, float), 2)
    return 2.0 * float(c2)


LINE_POINTS = (-0.5, 0.5)  # t on the line from a soup to one ingredient (t = 1: the ingredient)


def line_weights(weights: list[float], i: int, t: float) -> list[float]:
    """The weighting of θ̄ + t(θ_i − θ̄), with θ̄ = Σ w_j θ_j: (1 − t)·w + t·e_i."""
    return [(1 - t) * w + (t if j == i else 0.0) for j, w in enumerate(weights)]


def flatness_term(weights: list[float], line_curvatures: list[float]) -> float:
    """−½ Σ_i w_i (θ_i − θ̄)ᵀ ∇²L(θ̄) (θ_i − θ̄): the flatness term of a soup of N models,
    from the loss's curvature along each line θ̄ + t(θ_i − θ̄) at t = 0 (`line_curvatures`).
    For two models at (1 − α, α) it is −α(1 − α)/2 · L_soup''(α), the pair's term."""
    return -0.5 * sum(w * c for w, c in zip(weights, line_curvatures, strict=True))


def predicted_gap(alpha: float, loss_curvature: float, confidence: float) -> float:
    """The approximation of L_soup(α) − L_ens(α) for a pair: `confidence` is
    `confidence_term` at (1 − α, α), which already carries its α(1 − α)."""
    return 0.5 * (confidence - alpha * (1 - alpha) * loss_curvature)
