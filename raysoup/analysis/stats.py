"""Correlations with a seeded bootstrap interval (over the pairs they are measured on)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEED = 0
DRAWS = 2000


@dataclass(frozen=True)
class Correlation:
    r: float  # Pearson's r (NaN with fewer than 3 points or no spread)
    lo: float  # its 95 % bootstrap interval (percentile, resampling the points)
    hi: float
    n: int

    def text(self) -> str:
        if np.isnan(self.r):
            return f"r undefined (n = {self.n})"
        return f"r = {self.r:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}] (n = {self.n})"


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def correlation(x, y, seed: int = SEED, draws: int = DRAWS) -> Correlation:
    """Pearson's r of (x, y) with a 95 % percentile bootstrap interval. Pairs of models share
    models, so the points are not independent: the interval is a guide, narrower than an
    honest one when few models make many pairs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    r = pearson(x, y)
    if np.isnan(r):
        return Correlation(r, float("nan"), float("nan"), len(x))
    rng = np.random.default_rng(seed)
    rs = [pearson(x[i], y[i]) for i in rng.integers(0, len(x), (draws, len(x)))]
    rs = np.asarray([v for v in rs if not np.isnan(v)])
    lo, hi = np.percentile(rs, [2.5, 97.5]) if len(rs) else (float("nan"),) * 2
    return Correlation(r, float(lo), float(hi), len(x))
