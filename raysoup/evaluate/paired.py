"""Every soup (and the ensemble) against the best single model, per split, with a paired 95 %
interval over the split's images.

The interval is exact and conditional on the discordant images (McNemar's setting), not a
bootstrap. Both models are scored on the same images, so only the images they disagree on say
anything about which is better: `b` images the soup gets right and the best single model
wrong, `c` the other way round. The accuracy difference is exactly (b − c) / n. Given the
m = b + c discordant images, b is Binomial(m, p), and p = ½ means "no difference"; the
Clopper-Pearson 95 % interval [p_lo, p_hi] for p maps to the difference interval
[m(2 p_lo − 1) / n, m(2 p_hi − 1) / n].

Why exact rather than a paired bootstrap:
- it needs no random draws and no seed, so the same per-image results give the same interval
  on any machine, and a test can check it against a closed form;
- it stays valid with few discordant images (soups and their ingredients often disagree on
  a handful), where a bootstrap's percentile interval degenerates;
- it says the same as the exact McNemar test: the interval excludes 0 exactly when the
  equal-tailed exact binomial test of b against Binomial(m, ½) rejects at 5 %.
Its caveat: it treats the number of discordant images as given (it is the interval of the
difference *on these m disagreements*), so it is slightly narrower than an unconditional
interval when b and c are very unequal; its end never passes ±m/n. Identical predictions
(m = 0) give [0, 0]: not distinguishable.

Accuracies and differences are fractions here (as results.parquet's `accuracy`); the report
shows points (× 100).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa

ALPHA = 0.05  # a 95 % interval
COMPARED = ("soup", "ensemble")  # the kinds compared with the best single model


@dataclass(frozen=True)
class Interval:
    """Model − best single on one split: `diff` = (b − c) / n, [lo, hi] its 95 % interval."""

    diff: float
    lo: float
    hi: float
    b: int  # images only the model gets right
    c: int  # images only the best single model gets right
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0


@dataclass(frozen=True)
class Comparison:
    model: str
    kind: str
    split: str
    best: str  # the best single model it is compared with
    interval: Interval


def unpack(bits: bytes, n: int) -> np.ndarray:
    """Per-image correctness (bool [n]) from `evaluator.packed` bytes."""
    return np.unpackbits(np.frombuffer(bits, np.uint8), count=n).astype(bool)


def _log_pmf(m: int, p: float) -> np.ndarray:
    k = np.arange(m + 1)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log(m - k[1:] + 1) - np.log(k[1:]))])
    return log_comb + k * np.log(p) + (m - k) * np.log1p(-p)


def _tail(x: int, m: int, p: float, upper: bool) -> float:
    """P(X ≥ x) (upper) or P(X ≤ x) for X ~ Binomial(m, p), 0 < p < 1."""
    logs = _log_pmf(m, p)
    logs = logs[x:] if upper else logs[:x + 1]
    top = logs.max()
    return float(np.exp(top) * np.exp(logs - top).sum())


def _solve(f, target: float) -> float:
    """p in (0, 1) with f(p) = target, f increasing (bisection to float precision)."""
    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(x: int, m: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 1 − alpha interval for a binomial p, x successes in m."""
    if not 0 <= x <= m or m == 0:
        raise ValueError(f"clopper_pearson: need 0 <= x <= m and m > 0, got x={x}, m={m}")
    lo = 0.0 if x == 0 else _solve(lambda p: _tail(x, m, p, upper=True), alpha / 2)
    hi = 1.0 if x == m else _solve(lambda p: -_tail(x, m, p, upper=False), -alpha / 2)
    return lo, hi


@lru_cache(maxsize=4096)  # the evaluate stage recomputes every comparison after each model
def interval(b: int, c: int, n: int, alpha: float = ALPHA) -> Interval:
    """The paired interval from the discordant counts (see the module's docstring)."""
    m = b + c
    if m == 0:
        return Interval(0.0, 0.0, 0.0, 0, 0, n)
    p_lo, p_hi = clopper_pearson(b, m, alpha)
    return Interval((b - c) / n, m * (2 * p_lo - 1) / n, m * (2 * p_hi - 1) / n, b, c, n)


def paired(model: np.ndarray, best: np.ndarray, alpha: float = ALPHA) -> Interval:
    """`model` − `best` from their per-image correctness on the same images."""
    if model.shape != best.shape:
        raise ValueError(f"paired: {model.shape} vs {best.shape} images")
    b = int(np.count_nonzero(model & ~best))
    c = int(np.count_nonzero(best & ~model))
    return interval(b, c, len(model), alpha)


def best_single(table: pa.Table) -> str | None:
    """The ingredient a practitioner would pick: best held-out accuracy, ties to the smaller
    name (the report's and greedy soup's order)."""
    heldout: dict[str, float] = {}
    for m, k, s, a in _columns(table, "model", "kind", "split", "accuracy"):
        if k == "ingredient":
            heldout[m] = a if s == "heldout" else heldout.get(m, 0.0)
    return min(heldout, key=lambda m: (-heldout[m], m), default=None)


def _columns(table: pa.Table, *names: str) -> Iterable[tuple]:
    return zip(*(table[c].to_pylist() for c in names), strict=True)


def comparisons(table: pa.Table, alpha: float = ALPHA) -> list[Comparison]:
    """Each soup's and ensemble's row against the best single model's row on the same split,
    where both kept their per-image correctness (rows from before it was kept have none)."""
    best = best_single(table)
    if best is None:
        return []
    rows = list(_columns(table, "model", "kind", "split", "n", "correct_bits"))
    ref = {s: (n, bits) for m, _, s, n, bits in rows if m == best and bits is not None}
    out = []
    for model, kind, split, n, bits in rows:
        if kind in COMPARED and bits is not None and split in ref and ref[split][0] == n:
            ivl = paired(unpack(bits, n), unpack(ref[split][1], n), alpha)
            out.append(Comparison(model, kind, split, best, ivl))
    return out


def annotate(table: pa.Table) -> pa.Table:
    """`table` with its comparison columns (`best_single`, `diff_vs_best`, `diff_lo`,
    `diff_hi`) recomputed: null where a row is not compared."""
    found = {(c.model, c.split): c for c in comparisons(table)}
    keys = list(zip(table["model"].to_pylist(), table["split"].to_pylist(), strict=True))
    hits = [found.get(k) for k in keys]
    columns = {
        "best_single": pa.array([c.best if c else None for c in hits], pa.string()),
        "diff_vs_best": pa.array([c.interval.diff if c else None for c in hits], pa.float64()),
        "diff_lo": pa.array([c.interval.lo if c else None for c in hits], pa.float64()),
        "diff_hi": pa.array([c.interval.hi if c else None for c in hits], pa.float64()),
    }
    for name, values in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return table


Z95 = 1.959963984540054  # the normal distribution's 97.5 % quantile


def mean_interval(intervals: list[Interval]) -> tuple[float, float, float]:
    """(diff, lo, hi) of the mean of per-split differences (the report's mean shift), an
    approximate 95 % interval: the splits are independent image sets, so the variances of
    their paired mean differences add (per split, var of the per-image difference
    D ∈ {−1, 0, 1}: ((b + c)/n − diff²) / n), normal approximation. Unlike the per-split
    interval it is not exact; identical predictions on every split still give [0, 0]."""
    if not intervals:
        raise ValueError("mean_interval: no split to average")
    k = len(intervals)
    diff = sum(i.diff for i in intervals) / k
    var = sum(((i.b + i.c) / i.n - i.diff**2) / i.n for i in intervals) / k**2
    half = Z95 * var**0.5
    return diff, diff - half, diff + half
