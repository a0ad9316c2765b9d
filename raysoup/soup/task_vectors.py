"""The task-vector family's shared part (task arithmetic, TIES, DARE): pick the scale λ of
θ_0 + λ·m(τ_1..τ_N) on held-out, where τ_i = θ_i − θ_0 and m is the method's element-wise
merge (`raysoup.reduce.merge.TensorMerge`, run inside the shard tasks).

The base θ_0 is the zero-shot ingredient, as in Ilharco et al. 2023 (task arithmetic) and
Yadav et al. 2023 (TIES). m(τ) is computed once per soup stage; each λ then costs one cheap
θ_0 + λ·m pass and one held-out evaluation. Ties go to the SMALLER λ (closer to θ_0), as in
WiSE-FT.
"""

from __future__ import annotations

import torch

from raysoup.reduce.merge import Stream, TensorMerge
from raysoup.soup.base import Candidate, Kitchen, RecipeResult, anchored


def pick_scale(scores: dict[float, float]) -> float:
    """The λ with the best held-out accuracy; ties → the smaller λ."""
    if not scores:
        raise ValueError("no scale λ was scored")
    return min(scores, key=lambda s: (-scores[s], s))


def cook_task_vectors(method: str, kitchen: Kitchen | None, candidates: list[Candidate],
                      merge: TensorMerge, lambdas: list[float], info: dict,
                      linear: bool = False) -> RecipeResult:
    """Score θ_0 + λ·merge(τ) for every λ on held-out and return the best as the soup.
    `linear`: merge(τ) = Σ τ_i, so the soup is also Σ w_i·θ_i with w = [1 − Nλ, λ, ..., λ],
    recorded as its weights (other merges have no such weights: recorded empty)."""
    anchor, tuned = anchored(kitchen, candidates, method)
    lambdas = sorted({float(s) for s in lambdas})
    accs = kitchen.score_merge(anchor.path, [c.path for c in tuned], merge, lambdas)
    scores = dict(zip(lambdas, accs, strict=True))
    lam = pick_scale(scores)
    n = len(tuned)
    return RecipeResult(
        ingredients=[anchor.name, *(c.name for c in tuned)],
        weights=[1.0 - n * lam] + [lam] * n if linear else [],
        merge=merge, scale=lam,
        trace=[{"lambda": s, "heldout": a, "chosen": s == lam} for s, a in scores.items()],
        info={"lambda": lam, "lambdas": lambdas, "base": anchor.name, **info},
    )


def delta(theta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """τ = θ − θ_0 as a fresh float32 tensor (θ may be a read-only view in any float dtype)."""
    return torch.sub(theta, base, out=torch.empty_like(base))


def sum_of(stream: Stream, base: torch.Tensor, transform=None) -> torch.Tensor:
    """Σ_i transform(i, τ_i), one τ in memory at a time."""
    acc = torch.zeros_like(base)
    for i, theta in enumerate(stream()):
        tau = delta(theta, base)
        acc.add_(transform(i, tau) if transform else tau)
        del tau
    return acc


def elect_and_average(stream: Stream, base: torch.Tensor, sparsify) -> torch.Tensor:
    """TIES' sign election and disjoint mean over sparsified task vectors τ̂_i = sparsify(i, τ_i):
    γ = sign(Σ τ̂_i); the result is, per entry, the mean of the τ̂_i whose sign is γ (0 where
    none). Two passes over the stream (`sparsify` must give the same τ̂_i both times), holding
    the base, the election sum, the running sum, the count and one τ."""
    elected = torch.sign(sum_of(stream, base, sparsify))
    total, count = torch.zeros_like(base), torch.zeros_like(base)
    for i, theta in enumerate(stream()):
        tau = sparsify(i, delta(theta, base))
        agree = (torch.sign(tau) == elected) & (elected != 0)
        total.add_(tau.mul_(agree))
        count.add_(agree)
        del tau, agree
    return total.div_(count.clamp_(min=1))
