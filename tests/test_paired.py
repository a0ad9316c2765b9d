"""The paired interval of evaluate/paired.py against answers computed independently, and the
comparisons it adds to results.parquet."""

import numpy as np
import pytest

from raysoup.evaluate import paired
from raysoup.evaluate import results as res
from raysoup.evaluate.evaluator import packed


def test_identical_models_give_zero_and_not_distinguishable():
    right = np.array([True, False, True, True])
    ivl = paired.paired(right, right.copy())
    assert (ivl.diff, ivl.lo, ivl.hi) == (0.0, 0.0, 0.0)
    assert not ivl.excludes_zero


@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_better_on_k_images_has_the_closed_form_answer(k):
    # b = k, c = 0: Clopper-Pearson for k successes in k trials is [(α/2)^(1/k), 1], so the
    # difference interval is [k(2·0.025^(1/k) − 1)/n, k/n].
    n = 2000
    best = np.zeros(n, bool)
    best[:1800] = True
    model = best.copy()
    model[1800:1800 + k] = True
    ivl = paired.paired(model, best)
    assert ivl.diff == k / n
    assert ivl.lo == pytest.approx(k * (2 * 0.025 ** (1 / k) - 1) / n, abs=1e-12)
    assert ivl.hi == pytest.approx(k / n, abs=1e-15)
    # The exact McNemar test: k wins and no loss are significant (two-sided) from k = 6 on
    # (2·0.5^6 = 0.031 < 0.05, 2·0.5^5 = 0.0625 > 0.05).
    assert ivl.excludes_zero == (k >= 6)
    worse = paired.paired(best, model)  # the mirror image
    assert (worse.lo, worse.hi) == pytest.approx((-ivl.hi, -ivl.lo), abs=1e-12)


def test_clopper_pearson_matches_the_beta_quantiles():
    stats = pytest.importorskip("scipy.stats")
    for x, m in [(3, 10), (17, 40), (250, 480)]:
        lo, hi = paired.clopper_pearson(x, m)
        assert lo == pytest.approx(stats.beta.ppf(0.025, x, m - x + 1), abs=1e-10)
        assert hi == pytest.approx(stats.beta.ppf(0.975, x + 1, m - x), abs=1e-10)


def test_bits_round_trip_through_results(tmp_path):
    best = np.array([True] * 9 + [False] * 4)
    soup = best.copy()
    soup[9:13] = True  # right on 4 more of 13
    bits = {"best": packed(torch_bool(best)), "soup": packed(torch_bool(soup))}
    assert np.array_equal(paired.unpack(bits["soup"], 13), soup)
    t = res.merge(res.empty(), [
        res.rows("trial-000", "ingredient", {"heldout": (9, 13, bits["best"]),
                                             "test": (9, 13, bits["best"])}),
        res.rows("trial-001", "ingredient", {"heldout": (8, 13), "test": (9, 13)}),
        res.rows("greedy_soup", "soup", {"heldout": (13, 13, bits["soup"]),
                                         "test": (13, 13, bits["soup"])}),
    ])
    t = paired.annotate(t)
    res.write_results(tmp_path / "results.parquet", t)
    back = res.read_results(tmp_path / "results.parquet")
    got = {(m, s): (b, d, lo, hi) for m, s, b, d, lo, hi in zip(
        *(back[c].to_pylist() for c in ("model", "split", "best_single", "diff_vs_best",
                                        "diff_lo", "diff_hi")), strict=True)}
    b, d, lo, hi = got[("greedy_soup", "test")]
    assert (b, d) == ("trial-000", 4 / 13)
    assert (lo, hi) == pytest.approx((4 * (2 * 0.025 ** (1 / 4) - 1) / 13, 4 / 13))
    assert got[("trial-000", "test")] == (None, None, None, None)


def test_old_results_without_the_new_columns_read_as_missing(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = pa.table({"model": ["a"], "kind": ["soup"], "split": ["test"], "accuracy": [0.5],
                    "correct": [1], "n": [2]})
    pq.write_table(old, tmp_path / "results.parquet")
    t = res.read_results(tmp_path / "results.parquet")
    assert t["correct_bits"].to_pylist() == [None]
    assert paired.comparisons(t) == []


def torch_bool(a):
    import torch

    return torch.from_numpy(a)
