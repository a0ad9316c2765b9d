"""The report's figures (raysoup/figures.py), checked through matplotlib's artists: one marker
and colour per method with a legend entry, error bars from the paired intervals, the best
single and zero-shot models marked, trials labelled, the WiSE-FT curve; the anytime figure's
joins and rejections, reference lines, band and y-range."""

import math

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer

from raysoup.evaluate import results as res
from raysoup.evaluate.paired import comparisons, mean_interval
from raysoup.figures import METHOD_STYLES, MIN_SPAN, anytime_figure, method_style, results_figure
from raysoup.report import summarize
from raysoup.soup.anytime import JOINED, REJECTED, RESTARTED, Offer

METHODS = ["uniform_soup", "greedy_soup", "wiseft_soup", "dare_soup", "ties_soup",
           "new_method_soup", "other_method_soup"]


def _bits(k_right, n=100):
    return np.packbits(np.arange(n) < k_right).tobytes()


def _table():
    def scores(test, shift, heldout=8):
        return {"heldout": (heldout, 10), "test": (test, 100, _bits(test)),
                "blur": (shift, 100, _bits(shift)), "sketch": (shift - 5, 100, _bits(shift - 5))}

    t = res.merge(res.empty(), [res.rows("zeroshot", "zeroshot", scores(60, 50, 5)),
                                res.rows("trial-000", "ingredient", scores(80, 55)),
                                res.rows("trial-001", "ingredient", scores(84, 52, 9))])
    for i, name in enumerate(METHODS):
        t = res.merge(t, [res.rows(name, "soup", scores(78 + i, 54 + i))])
    return res.merge(t, [res.rows("ensemble", "ensemble", scores(86, 57))])


def _markers(ax):
    """label → (marker path vertices, face colour) of every scatter with a label."""
    out = {}
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and not coll.get_label().startswith("_"):
            path = coll.get_paths()[0]
            out[coll.get_label()] = (tuple(map(tuple, np.round(path.vertices, 3))),
                                     tuple(np.round(coll.get_facecolor()[0], 3)) if
                                     len(coll.get_facecolor()) else None)
    return out


def test_results_figure_one_style_per_method_error_bars_and_marks():
    import matplotlib.pyplot as plt

    table = _table()
    rows, shifts = summarize(table)
    comps = comparisons(table)
    wiseft = {"alpha": 0.75, "finetuned": "trial-001",
              "curve": [{"alpha": 0.5, "heldout": 0.8, "test": 0.7, "blur": 0.6, "sketch": 0.5}]}
    fig = results_figure(rows, shifts, "trial-001", comps, wiseft)
    ax = fig.axes[0]
    drawn = _markers(ax)
    methods = [*METHODS, "ensemble"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    styles = {}
    for name in methods:
        label = next(lb for lb in labels if lb.replace(" ", "_").startswith(
            name.removesuffix("_soup")))
        styles[name] = drawn[label]
    assert len(set(styles.values())) == len(methods)  # distinct marker or colour each
    assert len({method_style(m, methods) for m in methods}) == len(methods)
    assert "best single (trial-001)" in labels and "zero-shot" in labels
    # An error bar per compared model, as wide as its test interval (x) and the mean shift's.
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(methods)
    found = {(c.model, c.split): c.interval for c in comps}
    greedy = found[("greedy_soup", "test")]
    widths = sorted(round(float(np.ptp(seg[:, 0])), 6) for bar in bars
                    for seg in bar.lines[2][0].get_segments())
    assert round(100 * (greedy.hi - greedy.lo), 6) in widths
    # Trials labelled by number; the WiSE-FT curve from zero-shot (α=0) through α=0.5 and the
    # chosen α=0.75 to the fine-tuned model.
    texts = {t.get_text() for t in ax.texts}
    assert {"0", "1", "α=0.5", "α=0.75"} <= texts
    [curve] = [ln for ln in ax.lines if ln.get_label().startswith("WiSE-FT")]
    xs, _ = curve.get_data()
    assert list(xs) == pytest.approx([60, 70, 80, 84])  # zero-shot, α=0.5, wiseft soup, best
    plt.close(fig)


def test_mean_interval_adds_the_splits_variances():
    comps = comparisons(_table())
    pair = [c.interval for c in comps if c.model == "ensemble" and c.split != "test"]
    d, lo, hi = mean_interval(pair)
    assert d - lo == pytest.approx(hi - d)
    assert d == pytest.approx(sum(i.diff for i in pair) / 2)
    # One-sided differences (the soup right on a superset): var = (m/n − d²)/n per split.
    var = sum((i.b + i.c) / i.n - i.diff**2 for i in pair) / 100 / 4
    assert hi - d == pytest.approx(1.959963984540054 * math.sqrt(var))
    same = [c.interval for c in comps if c.model == "ensemble"][:1]
    assert mean_interval([type(same[0])(0.0, 0.0, 0.0, 0, 0, 100)]) == (0.0, 0.0, 0.0)


def test_anytime_figure_marks_decisions_references_band_and_range():
    import matplotlib.pyplot as plt

    offers = [Offer(0, "trial-000", JOINED, {}, 0.900, 0.900, None, 0.900, ("trial-000",), 0.900),
              Offer(1, "trial-001", REJECTED, {}, 0.880, 0.899, -0.001, 0.900, ("trial-000",),
                    0.900),
              Offer(2, "trial-002", JOINED, {}, 0.905, 0.9005, 0.0005, 0.9005,
                    ("trial-000", "trial-002"), 0.905),
              Offer(3, "trial-003", RESTARTED, {}, 0.92, 0.91, 0.0095, 0.92, ("trial-003",),
                    0.92)]
    fig = anytime_figure({"": offers}, {"greedy_soup": 0.915, "uniform_soup": 0.897}, 2000)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"joined", "rejected", "restarted", "greedy soup (final)",
            "uniform soup (final)"} <= set(labels)
    [rejected] = [c for c in ax.collections if c.get_label() == "rejected"]
    assert rejected.get_offsets().tolist() == [[2.0, pytest.approx(89.9)]]  # at soup + trial
    assert any("95 % interval" in lb for lb in labels)  # the band
    lo, hi = ax.get_ylim()
    assert hi - lo >= MIN_SPAN and lo < 89.0 and hi > 92.5
    assert {ln.get_label() for ln in ax.lines} >= {"greedy soup (final)"}
    assert set(METHOD_STYLES) >= {"uniform_soup", "greedy_soup", "ensemble", "wiseft_soup"}
    plt.close(fig)
