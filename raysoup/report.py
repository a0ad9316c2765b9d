"""Report: the paper's figure (test vs. mean shift accuracy) and a results table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from raysoup.atomic import write_atomic
from raysoup.evaluate.paired import COMPARED, Comparison, Interval, comparisons
from raysoup.figures import anytime_figure, results_figure, save
from raysoup.soup.anytime import Offer

FIXED_SPLITS = ("heldout", "test")


@dataclass(frozen=True)
class Row:
    model: str
    kind: str
    acc: dict[str, float]

    def mean_shift(self, shifts: list[str]) -> float:
        vals = [self.acc[s] for s in shifts if s in self.acc]
        return sum(vals) / len(vals) if vals else float("nan")


def summarize(table: pa.Table) -> tuple[list[Row], list[str]]:
    """Per-model rows (zero-shot, ingredients by name, soups) and the shift split names."""
    acc: dict[tuple[str, str], dict[str, float]] = {}
    for m, k, s, a in zip(*(table[c].to_pylist() for c in ("model", "kind", "split", "accuracy")),
                          strict=True):
        acc.setdefault((m, k), {})[s] = a
    shifts = sorted({s for v in acc.values() for s in v} - set(FIXED_SPLITS))
    order = {"zeroshot": 0, "ingredient": 1, "soup": 2, "ensemble": 3}
    rows = [Row(m, k, a) for (m, k), a in sorted(acc.items(), key=lambda x: (order.get(x[0][1], 9), x[0][0]))]
    return rows, shifts


def best_single(rows: list[Row]) -> Row | None:
    """The ingredient a practitioner would pick: best held-out accuracy, ties to the smaller
    name — the same order as `soup.base.by_heldout`, so greedy soup starts from this model."""
    ingredients = [r for r in rows if r.kind == "ingredient"]
    return min(ingredients, key=lambda r: (-r.acc.get("heldout", 0.0), r.model), default=None)


def summary_rows(rows: list[Row], inference_costs: Mapping[str, int] | None = None,
                 ) -> list[tuple[str, Row]]:
    """The headline comparison of the paper: zero-shot, best single, every soup."""
    out = [("zero-shot", r) for r in rows if r.kind == "zeroshot"]
    if (best := best_single(rows)) is not None:
        out.append((f"best single ({best.model})", best))
    out += [(r.model, r) for r in rows if r.kind == "soup"]
    # An ensemble runs every member: its label carries the inference cost it pays for accuracy.
    costs = inference_costs or {}
    out += [(f"{r.model} ({costs[r.model]}× inference)" if r.model in costs else r.model, r)
            for r in rows if r.kind == "ensemble"]
    return out


def _value(v: Any) -> str:
    """1e4, 0.001, 3: short and exact enough to find the trial's draw."""
    if isinstance(v, float):
        text = f"{v:.3g}"
        if "e" in text:
            mant, exp = text.split("e")
            text = f"{mant}e{int(exp)}"
        return text
    return str(v)


def diverged_line(diverged: Mapping[str, Mapping[str, Any]] | None) -> str:
    """`diverged (excluded from soups): trial-001 (lr 1e4)`; "" when none diverged.
    `diverged` maps a trial to the hyper-parameters worth showing (its sampled ones)."""
    if not diverged:
        return ""
    items = [f"{name} ({', '.join(f'{k} {_value(v)}' for k, v in hp.items())})" if hp else name
             for name, hp in sorted(diverged.items())]
    return "diverged (excluded from soups): " + ", ".join(items)


def markdown_table(labelled: list[tuple[str, Row]], shifts: list[str]) -> str:
    cols = ["heldout", "test", *shifts]
    head = "| model | " + " | ".join(cols) + " | mean shift |"
    sep = "|---" * (len(cols) + 2) + "|"
    lines = [head, sep]
    for label, r in labelled:
        cells = [f"{100 * r.acc[c]:.2f}" if c in r.acc else "–" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * r.mean_shift(shifts):.2f} |")
    return "\n".join(lines)


def _points(v: float) -> str:
    return f"{100 * v + 0.0:+.2f}"  # + 0.0: no "-0.00" for an exact zero


def interval_text(ivl: Interval) -> str:
    """`-0.55 [-1.10, +0.00]`: the difference and its interval, in points."""
    return f"{_points(ivl.diff)} [{_points(ivl.lo)}, {_points(ivl.hi)}]"


def verdict(ivl: Interval, model: str) -> str:
    if ivl.lo > 0:
        return f"{model} better"
    if ivl.hi < 0:
        return "best single better"
    return "not distinguishable"


def comparison_table(labelled: list[tuple[str, Row]], comps: list[Comparison],
                     shifts: list[str]) -> str:
    """Each soup's and the ensemble's difference to the best single model on test and each
    shift, with its paired 95 % interval; `*` where the interval excludes 0."""
    found = {(c.model, c.split): c.interval for c in comps}
    cols = ["test", *shifts]  # not held-out: it chose the soups' ingredients
    lines = ["| model − best single | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, r in labelled:
        if r.kind not in COMPARED:
            continue
        cells = [interval_text(ivl) + ("*" if ivl.excludes_zero else "")
                 if (ivl := found.get((r.model, c))) is not None else "–" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _named(splits: list[str]) -> str:
    """`2 (background, inverted)`, or `0`."""
    return f"{len(splits)} ({', '.join(splits)})" if splits else "0"


def what_the_numbers_say(labelled: list[tuple[str, Row]], comps: list[Comparison],
                         shifts: list[str]) -> list[str]:
    """One sentence per compared model, generated from this run's intervals: test, then how
    many shifts it is better, worse or not distinguishable on."""
    found = {(c.model, c.split): c.interval for c in comps}
    out = []
    for _, r in labelled:
        test = found.get((r.model, "test"))
        if r.kind not in COMPARED or test is None:
            continue
        on = {v: [s for s in shifts if (ivl := found.get((r.model, s))) is not None
                  and verdict(ivl, r.model) == v]
              for v in (f"{r.model} better", "best single better", "not distinguishable")}
        better, worse, same = on.values()
        scored = len(better) + len(worse) + len(same)
        shift_part = (f"; on the {scored} shift{'s' * (scored != 1)}: better on {_named(better)}, "
                      f"worse on {_named(worse)}, not distinguishable on {len(same)}"
                      if scored else "")
        out.append(f"{r.model} − best single on test: {interval_text(test)}, "
                   f"{verdict(test, r.model)}{shift_part}.")
    return out


INTERVALS_NOTE = ("Model − best single, in points, with a paired 95 % interval over the "
                  "split's images (exact, from the images the two disagree on; "
                  "docs/reading-results.md); * = the interval excludes 0. Held-out is left out: "
                  "it chose the soups' ingredients.")


def comparison_section(table: pa.Table, labelled: list[tuple[str, Row]],
                       shifts: list[str]) -> str:
    """The intervals' table and sentences; "" when no row kept its per-image correctness
    (results written before it was kept)."""
    comps = comparisons(table)
    if not comps:
        return ""
    best = comps[0].best
    sentences = what_the_numbers_say(labelled, comps, shifts)
    return "\n\n".join([
        f"Versus the best single model ({best}). {INTERVALS_NOTE}",
        comparison_table(labelled, comps, shifts),
        *(["What the numbers say:\n" + "\n".join(f"- {s}" for s in sentences)]
          if sentences else []),
    ])


def plot(rows: list[Row], shifts: list[str], path: Path, table: pa.Table | None = None,
         wiseft: Mapping[str, Any] | None = None) -> None:
    """The test vs. mean shift figure (`raysoup.figures.results_figure`); `table`: the
    results, for the error bars (the paired intervals); `wiseft`: the WiSE-FT soup's recipe
    info, for its curve."""
    best = best_single(rows)
    comps = comparisons(table) if table is not None else []
    save(results_figure(rows, shifts, best.model if best else None, comps, wiseft), path)


def plot_anytime(curves: Mapping[str, Sequence[Offer]], path: Path,
                 references: Mapping[str, float] | None = None,
                 heldout_n: int | None = None) -> None:
    """The anytime soup's curve (`raysoup.figures.anytime_figure`)."""
    save(anytime_figure(curves, references, heldout_n), path)


def heldout_size(table: pa.Table) -> int | None:
    """Images in the held-out split (results rows' `n`), None if none was scored."""
    sizes = [n for s, n in zip(table["split"].to_pylist(), table["n"].to_pylist(), strict=True)
             if s == "heldout"]
    return max(sizes) if sizes else None


def anytime_table(offers: Sequence[Offer]) -> str:
    lines = ["| trial | outcome | held-out | soup + trial | gain | soup size | soup held-out |",
             "|---|---|---|---|---|---|---|"]

    def pct(v: float | None, sign: str = "") -> str:
        return "–" if v is None else f"{100 * v:{sign}.2f}"

    for o in offers:
        outcome = f"{o.outcome} ({o.reason})" if o.reason else o.outcome
        lines.append(f"| {o.trial} | {outcome} | {pct(o.heldout)} | {pct(o.with_soup)} | "
                     f"{pct(o.gain, '+')} | {len(o.soup)} | {pct(o.soup_heldout)} |")
    return "\n".join(lines)


def write_report(table: pa.Table, out_dir: Path, title: str,
                 inference_costs: Mapping[str, int] | None = None,
                 diverged: Mapping[str, Mapping[str, Any]] | None = None,
                 anytime: Sequence[Offer] = (),
                 wiseft: Mapping[str, Any] | None = None,
                 task_labels: Mapping[str, Any] | None = None,
                 greedy_metric: str = "accuracy") -> list[Path]:
    """`diverged`: trials that ended with a non-finite loss (no ingredient), see
    `diverged_line`; listed under the summary. `anytime`: the sweep's anytime-soup offers
    (a curve and a table). `wiseft`: the WiSE-FT soup's recipe info (its curve in the
    figure). `task_labels`: a two-class task's labels per split
    (`task_metrics.two_class_labels`): GLUE's F1 and MCC get a table. `greedy_metric`: the
    held-out criterion the greedy soup used (`soup.greedy.metric`), said when not accuracy."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, shifts = summarize(table)
    figure = out_dir / "figure.png"
    plot(rows, shifts, figure, table, wiseft)
    files = [figure]
    anytime_part = []
    if anytime:
        curve = out_dir / "anytime.png"
        final = {r.model: r.acc["heldout"] for r in rows
                 if r.model in ("greedy_soup", "uniform_soup") and "heldout" in r.acc}
        plot_anytime({"": anytime}, curve, final, heldout_size(table))
        files.append(curve)
        anytime_part = [
            ("## Anytime soup\n\nDuring the sweep each finished trial was offered, in trial "
             "order, to a running soup (kept if the soup's held-out accuracy does not drop; a "
             "trial better alone restarts it). The final soups above are the standard recipes "
             "over all trials. In the figure: ● joined, ▲ restarted the soup, ✕ rejected "
             "(drawn at the soup + trial it refused); the horizontal lines are the final greedy "
             "and uniform soups; the band is the 95 % interval of one accuracy on the held-out "
             "split, about the soup's curve."),
            "![anytime soup](anytime.png)", anytime_table(anytime)]
    line = diverged_line(diverged)
    labelled = summary_rows(rows, inference_costs)
    versus = comparison_section(table, labelled, shifts)
    text = "\n\n".join([
        f"# {title}: results",
        "Accuracy in %. *Best single* is the ingredient with the best held-out accuracy; "
        "*mean shift* averages the distribution-shift splits: " + ", ".join(shifts) + ".",
        "## Summary\n\n" + markdown_table(labelled, shifts),
        *([greedy_line(greedy_metric)] if greedy_metric != "accuracy" else []),
        *([versus] if versus else []),
        *([(f"{line[0].upper()}{line[1:]} — a non-finite training loss; counted in "
            "`sweep.num_samples`, no ingredient.")] if line else []),
        "![test vs. shift accuracy](figure.png)",
        "## Every model\n\n" + markdown_table([(r.model, r) for r in rows], shifts),
        *anytime_part,
        *([_glue_section(table, task_labels)] if task_labels else []),
    ]) + "\n"
    readme = write_atomic(out_dir / "README.md", text)
    return [*files, readme]


GREEDY_METRIC_NAMES = {"f1": "F1 of class 1", "mcc": "Matthews correlation"}


def greedy_line(metric: str) -> str:
    """What the report says of a greedy soup chosen by another metric than accuracy."""
    return (f"The greedy soup ranked and chose its ingredients by held-out "
            f"{GREEDY_METRIC_NAMES.get(metric, metric)} (`soup.greedy.metric: {metric}`), "
            "not accuracy.")


def _glue_section(table: pa.Table, labels: Mapping[str, Any]) -> str:
    from raysoup.evaluate.task_metrics import metric_table

    return ("## F1 and Matthews correlation\n\nTwo classes: F1 of class 1 and Matthews "
            "correlation, in %, as GLUE defines them (MRPC, CoLA).\n\n"
            + metric_table(table, labels))
