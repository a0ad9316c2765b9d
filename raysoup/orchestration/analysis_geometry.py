"""The analyses of where the fine-tuned models lie (`raysoup analyze landscape|angles`): the
error landscape on the plane through the zero-shot model and two ingredients (the paper's
Fig. 2), and the angle between every two updates against their 2-soup's gain (Fig. 3)."""

from __future__ import annotations

import numpy as np

from raysoup.analysis import figures, geometry, landscape, stats
from raysoup.analysis.pairs import difference_label
from raysoup.orchestration.analysis import (
    AnalysisContext,
    Model,
    Outcome,
    blend,
    gram,
    pair_list,
    scores,
)

# ---------------------------------------------------------------- landscape


def run_landscape(ctx: AnalysisContext, points: int = 5, names: list[str] | None = None,
                  shift: str | None = None) -> Outcome:
    """Held-out loss, test error and one shift's error on the plane through the zero-shot
    model and two fine-tuned ones (default: the best two by held-out accuracy)."""
    first, second = pick_two(ctx, names)
    shift = shift or default_shift(ctx)
    splits = ["heldout", "test", shift]
    trio = [ctx.zeroshot, first, second]
    cells = landscape.grid(points)
    results = ctx.run([blend(ctx, trio, landscape.weights(a, b), splits) for a, b in cells],
                      "analysis: landscape")
    xy = geometry.plane_positions(gram(ctx, [first, second]), np.asarray(cells))
    rows = [{"a": a, "b": b, "x": float(p[0]), "y": float(p[1]), "split": s,
             "accuracy": scores(r, s)[0], "error": 1 - scores(r, s)[0], "loss": scores(r, s)[1],
             "n": r[s][1], "zeroshot": trio[0].name, "first": first.name, "second": second.name}
            for (a, b), p, r in zip(cells, xy, results, strict=True) for s in splits]
    table = ctx.write_table("landscape", rows)
    at = {cell: i for i, cell in enumerate(cells)}
    labels = {"zero-shot": "zero-shot", "first": first.name, "second": second.name,
              "2-soup": "2-soup"}
    marks = {labels[k]: tuple(xy[at[c]]) for k, c in landscape.MARKED.items()}

    def values(split: str, what: int) -> np.ndarray:
        return np.asarray([scores(r, split)[what] for r in results])

    with np.errstate(divide="ignore"):  # a zero loss is drawn as undefined, not warned about
        log_loss = np.log10(values("heldout", 1))

    figure = figures.plot_landscape(
        [("held-out loss (log10)", log_loss),
         ("test error (%)", 100 * (1 - values("test", 0))),
         (f"{shift} error (%)", 100 * (1 - values(shift, 0)))],
        xy, marks, ctx.figure_path("landscape"), defined=np.isfinite(values("heldout", 1)))
    soup, best = results[at[(0.5, 0.5)]], results[at[(1.0, 0.0)]]
    finding = (f"landscape ({first.name}, {second.name}): 2-soup test error "
               f"{100 * (1 - scores(soup, 'test')[0]):.2f} % vs {first.name} "
               f"{100 * (1 - scores(best, 'test')[0]):.2f} %; lowest test error on the grid at "
               f"(a, b) = {cells[int(np.argmax(values('test', 0)))]}")
    return Outcome([table, figure], [finding], {
        "analysis_landscape_soup_test_error": 1 - scores(soup, "test")[0],
        "analysis_landscape_first_test_error": 1 - scores(best, "test")[0]})


def pick_two(ctx: AnalysisContext, names: list[str] | None) -> tuple[Model, Model]:
    tuned = ctx.fine_tuned()
    if names:
        by_name = {m.name: m for m in tuned}
        unknown = [n for n in names if n not in by_name]
        if len(names) != 2 or unknown:
            raise ValueError(f"landscape: name two fine-tuned ingredients (got {names}); "
                             f"choose from {sorted(by_name)}")
        return by_name[names[0]], by_name[names[1]]
    if len(tuned) < 2:
        raise RuntimeError("landscape: needs two fine-tuned ingredients; the sweep has "
                           f"{len(tuned)}")
    return tuned[0], tuned[1]


def default_shift(ctx: AnalysisContext) -> str:
    """The first shift set over every class (a loss needs every class)."""
    for name, split in ctx.data.shifts.items():
        if split.class_subset is None and getattr(split, "class_groups", None) is None:
            return name
    raise RuntimeError("landscape: no shift set covers every class; pass --shift")


# ---------------------------------------------------------------- angles


def run_angles(ctx: AnalysisContext) -> Outcome:
    """The angle between every two updates and their 2-soup's held-out gain over their mean."""
    tuned, pairs = pair_list(ctx)
    angle = geometry.angles_degrees(gram(ctx, tuned))
    soups = ctx.run([blend(ctx, [tuned[i], tuned[j]], [0.5, 0.5], ["heldout"])
                     for i, j in pairs], "analysis: pair soups")
    space = ctx.cfg.sweep.space
    rows = []
    for (i, j), soup in zip(pairs, soups, strict=True):
        mean = (tuned[i].heldout + tuned[j].heldout) / 2
        acc = scores(soup, "heldout")[0]
        rows.append({"first": tuned[i].name, "second": tuned[j].name,
                     "angle_deg": float(angle[i, j]), "soup_heldout": acc,
                     "mean_heldout": mean, "gain": acc - mean,
                     "differs": difference_label(tuned[i].hparams, tuned[j].hparams, space)})
    corr = stats.correlation([r["angle_deg"] for r in rows], [r["gain"] for r in rows])
    table = ctx.write_table("angles", rows)
    title = f"angle vs 2-soup gain on held-out: {corr.text()}"
    figure = figures.plot_angles(np.asarray([r["angle_deg"] for r in rows]),
                                 np.asarray([r["gain"] for r in rows]),
                                 [r["differs"] for r in rows], title, ctx.figure_path("angles"))
    return Outcome([table, figure], [(f"angles: {title}; angles "
                                     f"{min(r['angle_deg'] for r in rows):.1f}°–"
                                     f"{max(r['angle_deg'] for r in rows):.1f}°")],
                   {"analysis_angles_gain_r": corr.r})
