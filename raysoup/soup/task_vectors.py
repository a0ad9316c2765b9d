"""The task-vector family's shared part (task arithmetic, TIES, DARE): pick the scale λ of
θ_0 + λ·m(τ_1..τ_N) on held-out, where τ_i = θ_i − θ_0 and m is the method's element-wise
merge (`raysoup.reduce.merge.TensorMerge`, run inside the shard tasks).

The base θ_0 is the zero-shot ingredient, as in Ilharco et al. 2023 (task arithmetic) and
Yadav et al. 2023 (TIES). m(τ) is computed once per soup stage; each λ then costs one cheap
θ_0 + λ·m pass and one held-out evaluation, for the λ that `raysoup.soup.grid_search` picks
to score. Ties go to the SMALLER λ (closer to θ_0), as in
WiSE-FT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from raysoup.reduce.merge import Stream, TensorMerge
from raysoup.soup.base import Candidate, Kitchen, RecipeResult, anchored
from raysoup.soup.grid_search import search_grid


def pick_scale(scores: dict[float, float]) -> float:
    """The λ with the best held-out accuracy; ties → the smaller λ."""
    if not scores:
        raise ValueError("no scale λ was scored")
    return min(scores, key=lambda s: (-scores[s], s))


def cook_task_vectors(method: str, kitchen: Kitchen | None, candidates: list[Candidate],
                      merge: TensorMerge, lambdas: list[float], info: dict,
                      linear: bool = False, search: str = "bracket") -> RecipeResult:
    """Score θ_0 + λ·merge(τ) on held-out for the λ `search` picks from `lambdas` (every λ
    with "grid") and return the best as the soup.
    `linear`: merge(τ) = Σ τ_i, so the soup is also Σ w_i·θ_i with w = [1 − Nλ, λ, ..., λ],
    recorded as its weights (other merges have no such weights: recorded empty)."""
    anchor, tuned = anchored(kitchen, candidates, method)
    lambdas = sorted({float(s) for s in lambdas})
    paths = [c.path for c in tuned]
    # One τ merge per call of score_merge: every round pays it again, which is cheap next to
    # the evaluations a round saves (the merge is one shard-parallel pass over the τ_i).
    scores = search_grid(lambdas, lambda some: kitchen.score_merge(anchor.path, paths, merge,
                                                                   some), search)
    lam = pick_scale(scores)
    n = len(tuned)
    return RecipeResult(
        ingredients=[anchor.name, *(c.name for c in tuned)],
        weights=[1.0 - n * lam] + [lam] * n if linear else [],
        merge=merge, scale=lam,
        trace=[{"lambda": s, "heldout": a, "chosen": s == lam} for s, a in scores.items()],
        info={"lambda": lam, "lambdas": lambdas, "search": search, "base": anchor.name,
              **info},
    )


# Element-wise work runs over chunks of this many entries: temporaries stay in the CPU cache
# and the per-call overhead stays small (a whole ViT-B/32 embedding is 25M entries, 101 MB).
CHUNK = 1 << 18

# Per ingredient i: (θ_i flat, θ_0 flat) → a function that sparsifies each chunk of τ_i in
# place, called on consecutive chunks in order (so a seeded generator may be drawn from).
Sparsifier = Callable[[int, torch.Tensor, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _chunks(n: int) -> range:
    return range(0, n, CHUNK)


def sum_of(stream: Stream, base: torch.Tensor, sparsifier: Sparsifier | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_i sparsify_i(τ_i), streamed: the base, the sum (in `out` if given) and one chunk of τ
    in memory."""
    b = base.reshape(-1)
    n = b.numel()
    acc = torch.zeros_like(b) if out is None else out.reshape(-1).zero_()
    tmp = torch.empty(min(CHUNK, n))
    for i, theta in enumerate(stream()):
        t = theta.reshape(-1)
        sparsify = sparsifier(i, t, b) if sparsifier else None
        for s in _chunks(n):
            e = min(s + CHUNK, n)
            tau = torch.sub(t[s:e], b[s:e], out=tmp[: e - s])
            acc[s:e].add_(sparsify(tau) if sparsify else tau)
    return acc.reshape(base.shape)


def elect_and_average(stream: Stream, base: torch.Tensor, sparsifier: Sparsifier
                      ) -> torch.Tensor:
    """TIES' sign election and disjoint mean over sparsified task vectors τ̂_i: γ = sign(Σ τ̂_i);
    per entry, the mean of the τ̂_i whose sign is γ (0 where γ = 0). Two passes over the stream
    (the sparsifier must give the same τ̂_i both times), holding the base, γ, the running sum,
    the count and one chunk of τ."""
    ingredients = 0

    def counted() -> Iterator[torch.Tensor]:
        nonlocal ingredients
        for theta in stream():
            ingredients += 1
            yield theta

    elected = sum_of(counted, base, sparsifier).sign_().reshape(-1)
    b = base.reshape(-1)
    n = b.numel()
    # The count of agreeing ingredients per entry fits a byte for < 256 ingredients: 3 bytes
    # an entry less to hold (the division converts it exactly, so the result is the same).
    total = torch.zeros_like(b)
    count = torch.zeros(n, dtype=torch.uint8 if ingredients < 256 else torch.int32)
    tmp, agree = torch.empty(min(CHUNK, n)), torch.empty(min(CHUNK, n), dtype=torch.bool)
    for i, theta in enumerate(stream()):
        t = theta.reshape(-1)
        sparsify = sparsifier(i, t, b)
        for s in _chunks(n):
            e = min(s + CHUNK, n)
            tau = sparsify(torch.sub(t[s:e], b[s:e], out=tmp[: e - s]))
            # γ ∈ {−1, 0, 1}: τ̂·γ > 0 exactly where τ̂ is non-zero with the elected sign.
            a = torch.gt(tau * elected[s:e], 0, out=agree[: e - s])
            total[s:e].add_(tau.mul_(a))
            count[s:e].add_(a)
    for s in _chunks(n):  # by chunks: the byte counts' float copy stays one chunk
        total[s:s + CHUNK].div_(count[s:s + CHUNK].clamp_(min=1))
    return total.reshape(base.shape)
