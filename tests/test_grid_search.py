"""raysoup.soup.grid_search: the bracket search over WiSE-FT's α and the task-vector λ grids
finds what scoring every point finds, with fewer held-out evaluations, on one-peak curves."""

from __future__ import annotations

import math

import pytest

from raysoup.soup.grid_search import search_grid
from raysoup.soup.task_vectors import pick_scale


def _counted(f):
    calls: list[list[float]] = []

    def score(xs):
        calls.append(list(xs))
        return [f(x) for x in xs]
    return score, calls


@pytest.mark.parametrize("n", [1, 2, 3, 8, 11, 20])
def test_bracket_finds_every_peak_of_a_unimodal_curve_with_fewer_evaluations(n):
    grid = [round(0.05 * (i + 1), 2) for i in range(n)]
    for peak in grid:
        score, calls = _counted(lambda x, p=peak: 0.9 - abs(x - p))
        scored = search_grid(grid, score)
        assert pick_scale(scored) == peak
        assert sum(map(len, calls)) == len(scored)  # no point scored twice
        if n >= 11:
            assert len(scored) <= 10 < n  # 11 α: at most 8 (3 + 2 per halving)
        full = search_grid(grid, _counted(lambda x, p=peak: 0.9 - abs(x - p))[0], "grid")
        assert list(full) == grid


def test_plateaus_keep_the_whole_tie_and_the_smaller_value():
    # Accuracy in whole images: the ends and the middle tie at 0.8, the peak hides between.
    grid = [0.1 * i for i in range(11)]
    curve = dict(zip(grid, [0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.85, 0.85, 0.8, 0.8],
                     strict=True))
    scored = search_grid(grid, lambda xs: [curve[x] for x in xs])
    assert pick_scale(scored) == grid[7]
    # A rising staircase (TIES on a model that classifies all once λ is large enough).
    stairs = dict(zip(grid, [0.0] * 4 + [0.5] * 3 + [1.0] * 4, strict=True))
    assert pick_scale(search_grid(grid, lambda xs: [stairs[x] for x in xs])) == grid[7]


def test_nan_scores_and_bad_searches():
    # One λ and nothing measured (raysoup.soup_checkpoints' local kitchen): that λ.
    assert list(search_grid([1.0], lambda xs: [math.nan] * len(xs))) == [1.0]
    with pytest.raises(ValueError, match="search must be one of"):
        search_grid([0.5], lambda xs: xs, "golden")
    with pytest.raises(ValueError, match="empty grid"):
        search_grid([], lambda xs: xs)
