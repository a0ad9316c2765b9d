"""The report's figures: test vs. mean shift accuracy (the paper's figure) and the anytime soup.

Every method keeps one marker and colour in every run (`method_style`), so figures of
different runs read alike; the best single model and the zero-shot model are marked; each
soup's and the ensemble's error bars are its paired 95 % interval against the best single
model (evaluate/paired.py: exact on test; on the mean over shifts the splits' paired variances
added, `paired.mean_interval`); the WiSE-FT curve joins the zero-shot model (α = 0), the α
scored for it and the fine-tuned model (α = 1), as in the paper's figures.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from raysoup.atomic import write_atomic
from raysoup.evaluate.paired import Comparison, mean_interval
from raysoup.soup.anytime import JOINED, REJECTED, RESTARTED, Offer

# model name → (marker, colour): fixed, so a method looks the same in every run's figure.
METHOD_STYLES: dict[str, tuple[str, str]] = {
    "uniform_soup": ("D", "#c53030"),
    "greedy_soup": ("^", "#2f855a"),
    "ensemble": ("s", "#1a202c"),
    "wiseft_soup": ("P", "#6b46c1"),
    "learned_soup": ("v", "#b7791f"),
    "model_stock_soup": ("X", "#00838f"),
    "task_arithmetic_soup": ("<", "#d53f8c"),
    "ties_soup": (">", "#2c5282"),
    "dare_soup": ("h", "#dd6b20"),
}
# For methods not listed (a new merge method): pairs no listed method uses.
_SPARE = [(m, c) for m, c in itertools.product("p*dH8", ["#718096", "#9c4221", "#276749",
                                                         "#553c9a"])]
ZEROSHOT_STYLE = ("*", "#2b6cb0")
INGREDIENT_COLOUR = "#9aa5b1"
WISEFT_COLOUR = METHOD_STYLES["wiseft_soup"][1]


class RowLike(Protocol):
    model: str
    kind: str
    acc: dict[str, float]

    def mean_shift(self, shifts: list[str]) -> float: ...


def method_style(model: str, others: Sequence[str] = ()) -> tuple[str, str]:
    """The marker and colour of `model`; an unlisted one gets a spare pair by its place among
    the unlisted `others` (sorted), so two unlisted methods never share one."""
    if model in METHOD_STYLES:
        return METHOD_STYLES[model]
    unlisted = sorted({*others, model} - set(METHOD_STYLES))
    return _SPARE[unlisted.index(model) % len(_SPARE)]


def _label(model: str) -> str:
    return model.removesuffix("_soup").replace("_", " ") + (" soup" * model.endswith("_soup"))


def _trial_number(name: str) -> str:
    return name.removeprefix("trial-").lstrip("0") or "0" if name.startswith("trial-") else name


def results_figure(rows: Sequence[RowLike], shifts: list[str], best: str | None,
                   comps: Sequence[Comparison] = (), wiseft: Mapping[str, Any] | None = None):
    """The figure (matplotlib `Figure`): ingredients labelled by trial number, the zero-shot
    and best single models marked, one marker and colour per method with its interval as
    error bars, and the WiSE-FT curve (`wiseft`: the wiseft soup's recipe info: `alpha`,
    `finetuned` and `curve`, the α scored on every split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 5.0), dpi=120)
    point = {r.model: (100 * r.acc.get("test", math.nan), 100 * r.mean_shift(shifts))
             for r in rows}
    ing = [r for r in rows if r.kind == "ingredient"]
    ax.scatter([point[r.model][0] for r in ing], [point[r.model][1] for r in ing],
               c=INGREDIENT_COLOUR, s=28, label="fine-tuned ingredients (trial number)", zorder=2)
    for r in ing:
        ax.annotate(_trial_number(r.model), point[r.model], xytext=(3, 3),
                    textcoords="offset points", fontsize=6, color="#4a5568")
    if best in point:
        ax.scatter(*point[best], s=300, facecolors="none", edgecolors="black", linewidths=1.2,
                   label=f"best single ({best})", zorder=6)
    _wiseft_curve(ax, rows, shifts, point, wiseft)
    for r in rows:
        if r.kind == "zeroshot":
            marker, colour = ZEROSHOT_STYLE
            ax.scatter(*point[r.model], marker=marker, s=160, c=colour, edgecolors="black",
                       linewidths=0.6, label="zero-shot", zorder=3)
    _methods(ax, rows, shifts, point, comps)
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel(f"mean accuracy over {len(shifts)} shifts (%)")
    ax.set_title("Model soups: in-distribution vs. distribution shift")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.text(0.01, 0.01, "error bars: paired 95 % interval of the difference to the best "
             "single model", fontsize=6, color="#4a5568")
    fig.tight_layout()
    return fig


def _methods(ax, rows, shifts, point, comps) -> None:
    """Each soup and the ensemble: its marker, its error bars; a method on the same spot as an
    earlier one is drawn smaller on top, so the earlier shows as a ring."""
    found = {(c.model, c.split): c.interval for c in comps}
    methods = [r for r in rows if r.kind in ("soup", "ensemble")]
    names = [r.model for r in methods]
    drawn: list[tuple[float, float]] = []
    for r in methods:
        marker, colour = method_style(r.model, names)
        x, y = point[r.model]
        same = sum(abs(x - a) < 0.05 and abs(y - b) < 0.05 for a, b in drawn)
        drawn.append((x, y))
        xerr = yerr = None
        if (test := found.get((r.model, "test"))) is not None:
            xerr = [[100 * (test.diff - test.lo)], [100 * (test.hi - test.diff)]]
        on_shifts = [found[(r.model, s)] for s in shifts if (r.model, s) in found]
        if len(on_shifts) == len(shifts) and shifts:
            d, lo, hi = mean_interval(on_shifts)
            yerr = [[100 * (d - lo)], [100 * (hi - d)]]
        if xerr is not None or yerr is not None:
            ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="none", ecolor=colour, elinewidth=1,
                        capsize=2, alpha=0.8, zorder=3 + same)
        ax.scatter([x], [y], marker=marker, s=100 * 0.4**same, c=colour, edgecolors="black",
                   linewidths=0.6, label=_label(r.model), zorder=4 + same)


def _wiseft_curve(ax, rows, shifts, point, wiseft) -> None:
    if not wiseft:
        return
    zeroshot = next((r.model for r in rows if r.kind == "zeroshot"), None)
    tuned = wiseft.get("finetuned")
    if zeroshot not in point or tuned not in point:
        return
    pts = {0.0: point[zeroshot], 1.0: point[tuned]}
    if "wiseft_soup" in point and wiseft.get("alpha") is not None:
        pts[float(wiseft["alpha"])] = point["wiseft_soup"]
    for c in wiseft.get("curve", ()):
        accs = [c[s] for s in shifts if s in c]
        if "test" in c and len(accs) == len(shifts) and shifts:
            pts[float(c["alpha"])] = (100 * c["test"], 100 * sum(accs) / len(accs))
    alphas = sorted(pts)
    ax.plot([pts[a][0] for a in alphas], [pts[a][1] for a in alphas], ".-", c=WISEFT_COLOUR,
            alpha=0.6, lw=1.2, zorder=1,
            label="WiSE-FT: zero-shot (α=0) → fine-tuned (α=1)")
    for a in alphas[1:-1]:
        ax.annotate(f"α={a:g}", pts[a], xytext=(-4, -9), textcoords="offset points",
                    fontsize=6, color=WISEFT_COLOUR)


def save(fig, path: Path) -> None:
    """Write `fig` atomically (an explicit format: the temp name's suffix is not the figure's)."""
    import matplotlib.pyplot as plt

    write_atomic(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)


def anytime_figure(curves: Mapping[str, Sequence[Offer]],
                   references: Mapping[str, float] | None = None, heldout_n: int | None = None):
    """Held-out accuracy of the anytime soup (solid; joins ●, restarts ▲, rejections ✕ at the
    soup + trial it refused) and of the best finished trial (dashed), one colour per curve;
    `references`: final soups' held-out accuracy (horizontal lines); `heldout_n`: the held-out
    size, for a 95 % band of a single accuracy around the soup (binomial, normal approx.)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    # Not the methods' colours: the final soups are drawn in theirs.
    palette = itertools.cycle(["#2b6cb0", "#4a5568", "#00838f", "#b7791f", "#553c9a"])
    values: list[float] = []
    nan = math.nan
    for label, offers in curves.items():
        colour = next(palette)
        xs = list(range(1, len(offers) + 1))
        soup = [100 * o.soup_heldout if o.soup_heldout is not None else nan for o in offers]
        ax.plot(xs, soup, "-", c=colour, label=f"anytime soup{label}", zorder=3)
        ax.plot(xs, [100 * o.best_single if o.best_single is not None else nan for o in offers],
                "--", c=colour, alpha=0.7, label=f"best single so far{label}")
        if heldout_n:
            half = [1.96 * math.sqrt(max(v * (100 - v), 0.0) / heldout_n) for v in soup]
            ax.fill_between(xs, [v - h for v, h in zip(soup, half, strict=True)],
                            [v + h for v, h in zip(soup, half, strict=True)], color=colour,
                            alpha=0.12, lw=0, label=f"95 % interval of the soup's accuracy{label}")
            values += [v + s * h for v, h in zip(soup, half, strict=True) for s in (-1, 1)]
        for outcome, marker, name in ((JOINED, "o", "joined"), (RESTARTED, "^", "restarted"),
                                      (REJECTED, "x", "rejected")):
            picked = [(x, o) for x, o in zip(xs, offers, strict=True) if o.outcome == outcome]
            ys = [100 * (o.with_soup if outcome == REJECTED else o.soup_heldout)
                  if (o.with_soup if outcome == REJECTED else o.soup_heldout) is not None
                  else nan for _, o in picked]
            if picked:
                ax.scatter([x for x, _ in picked], ys, marker=marker, s=30, c=colour,
                           label=f"{name}{label}", zorder=4)
                values += ys
        values += soup
    styles = itertools.cycle([":", "-."])
    for name, acc in (references or {}).items():
        ax.axhline(100 * acc, ls=next(styles), c=method_style(name)[1], lw=1,
                   label=f"{_label(name)} (final)")
        values.append(100 * acc)
    _sane_range(ax, [v for v in values if not math.isnan(v)])
    ax.set_xlabel("trials finished")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Anytime soup during the sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


# The y-axis spans at least this many points: a one-image step of a 2,000-image split
# (0.05 points) stays a step, not a cliff.
MIN_SPAN = 4.0


def _sane_range(ax, values: list[float]) -> None:
    if not values:
        return
    lo, hi = min(values), max(values)
    pad = max((MIN_SPAN - (hi - lo)) / 2, 0.0) + 0.25
    ax.set_ylim(max(lo - pad, 0.0), min(hi + pad, 100.0))
