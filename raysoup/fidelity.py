"""Does the soup effect hold over several sweeps? Paired differences soup - best single.

`raysoup fidelity CONFIG --seeds 5` runs the config's pipeline once per sweep seed 0..N-1
(`orchestration.seeds`), then this module prints and writes (`ROOT/fidelity.md`, `.json`,
`.png`) per run the zero-shot model, the best single ingredient (picked on held-out, as
`report.best_single`) and every soup; the paired differences d = soup - best single per split
as mean ± sd/sqrt(n) over the runs; and the criteria of the paper's claims (`CRITERIA`). A
fallback to the best single model counts as 0. With `--searches random,soup` it also compares
the soup-aware sweep search with the random one, paired by seed (`compare_searches`).

    python -m raysoup.fidelity runs/seed0 runs/seed1 runs/seed2   # tables of finished runs
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from raysoup.atomic import write_atomic
from raysoup.evaluate.results import read_results
from raysoup.report import Row, best_single, summarize
from raysoup.soup.anytime import read_offers
from raysoup.workdir import RESULTS_FILE, Workdir


@dataclass(frozen=True)
class RunSummary:
    workdir: str
    best: Row
    soups: dict[str, Row]
    shifts: list[str]
    zeroshot: Row | None = None

    def value(self, row: Row, column: str) -> float:
        return row.mean_shift(self.shifts) if column == "mean shift" else row.acc[column]


def summarize_run(workdir: Path) -> RunSummary:
    rows, shifts = summarize(read_results(Workdir(workdir).results))
    best = best_single(rows)
    if best is None:
        raise ValueError(f"{workdir}: {RESULTS_FILE} is missing or has no ingredient rows "
                         "(run `raysoup run` or `raysoup evaluate` there first)")
    soups = {r.model: r for r in rows if r.kind in ("soup", "ensemble")}
    zeroshot = next((r for r in rows if r.kind == "zeroshot"), None)
    return RunSummary(str(workdir), best, soups, shifts, zeroshot)


def paired(diffs: list[float]) -> tuple[float, float]:
    """Mean and standard error (sd/sqrt(n)) of paired differences; SE is nan for one run."""
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return mean, se


COLUMNS = ("heldout", "test", "mean shift")


def report(runs: list[RunSummary]) -> str:
    lines = ["| run | model | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for run in runs:
        first = [("zero-shot", run.zeroshot)] if run.zeroshot is not None else []
        for label, row in [*first, (f"best single ({run.best.model})", run.best),
                           *run.soups.items()]:
            vals = " | ".join(f"{100 * run.value(row, c):.2f}" for c in COLUMNS)
            lines.append(f"| {run.workdir} | {label} | {vals} |")
    common = sorted(set.intersection(*(set(r.soups) for r in runs)))
    lines += ["", "d = soup - best single, points: mean ± sd/sqrt(n) [per run]", "",
              "| soup | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for soup in common:
        cells = []
        for c in COLUMNS:
            d = [100 * (r.value(r.soups[soup], c) - r.value(r.best, c)) for r in runs]
            mean, se = paired(d)
            cells.append(f"{mean:+.2f} ± {se:.2f} [{', '.join(f'{x:+.2f}' for x in d)}]")
        lines.append(f"| {soup} | " + " | ".join(cells) + " |")
    lines += ["", *criteria(runs)]
    return "\n".join(lines)


def diffs(runs: list[RunSummary], a: str, b: str, column: str) -> list[float] | None:
    """Per run, points: model a − model b on `column` ("best" = the best single ingredient,
    "zeroshot"); None if a run lacks one of them."""
    def row(run: RunSummary, name: str) -> Row | None:
        return {"best": run.best, "zeroshot": run.zeroshot}.get(name, run.soups.get(name))

    out = []
    for run in runs:
        ra, rb = row(run, a), row(run, b)
        if ra is None or rb is None:
            return None
        out.append(100 * (run.value(ra, column) - run.value(rb, column)))
    return out


# (label, model a, model b, column, test): the paper's claims on the miniature. `test` gets
# the per-run differences; 0.8 of the runs = 4 of 5.
CRITERIA = (
    ("greedy − best single, test: ≥ 0 in ≥ 80 % of runs, mean > 0",
     "greedy_soup", "best", "test",
     lambda d: sum(x >= 0 for x in d) >= 0.8 * len(d) and statistics.fmean(d) > 0),
    ("uniform − best single, mean shift: > 0 in ≥ 80 % of runs",
     "uniform_soup", "best", "mean shift", lambda d: sum(x > 0 for x in d) >= 0.8 * len(d)),
    ("greedy − uniform, test: ≥ 0 in ≥ 80 % of runs",
     "greedy_soup", "uniform_soup", "test", lambda d: sum(x >= 0 for x in d) >= 0.8 * len(d)),
    ("zero-shot → best single, test: ≥ +10 points in every run",
     "best", "zeroshot", "test", lambda d: min(d) >= 10),
)


def evaluate_criteria(runs: list[RunSummary]) -> list[dict]:
    out = []
    for label, a, b, column, test in CRITERIA:
        d = diffs(runs, a, b, column)
        out.append({"criterion": label, "diffs": d, "holds": bool(d) and bool(test(d))})
    return out


def criteria(runs: list[RunSummary]) -> list[str]:
    lines = []
    for c in evaluate_criteria(runs):
        d = c["diffs"]
        shown = "n/a (a run lacks the models)" if d is None else \
            f"[{', '.join(f'{x:+.2f}' for x in d)}] mean {statistics.fmean(d):+.2f}"
        lines.append(f"{'✓' if c['holds'] else '✗'} {c['criterion']}: {shown}")
    return lines


def figure(runs: list[RunSummary], path: Path) -> None:
    """Paired differences soup − best single per run (dots) and their mean ± SE (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    soups = sorted(set.intersection(*(set(r.soups) for r in runs)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, column in zip(axes, ("test", "mean shift"), strict=True):
        for i, soup in enumerate(soups):
            d = diffs(runs, soup, "best", column)
            mean, se = paired(d)
            ax.scatter([i] * len(d), d, s=14, alpha=0.6)
            ax.errorbar([i + 0.15], [mean], yerr=[0 if math.isnan(se) else se], fmt="ks",
                        capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(soups)), [s.removesuffix("_soup") for s in soups], rotation=30)
        ax.set_title(f"{column}: soup − best single (points)")
    fig.suptitle(f"{len(runs)} sweep seeds, paired")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write(runs: list[RunSummary], root: Path) -> str:
    """fidelity.md / .json / .png under root (each written atomically); returns the text."""
    text = report(runs)
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / "fidelity.md", text + "\n")
    payload = {"runs": [r.workdir for r in runs], "criteria": evaluate_criteria(runs)}
    write_atomic(root / "fidelity.json", json.dumps(payload, indent=2))
    write_atomic(root / "fidelity.png", lambda tmp: figure(runs, tmp))
    return text


# ---------------------------------------------------------------- searches side by side


def anytime_offers(workdir: Path) -> list:
    return read_offers(Path(workdir))


def trials_to_reach(offers: list, target: float) -> int | None:
    """Trials finished when the anytime soup's held-out first reaches `target` (None: never)."""
    for n, offer in enumerate(offers, start=1):
        if offer.soup_heldout is not None and offer.soup_heldout >= target - 1e-12:
            return n
    return None


# The soup-aware search earns its place if its greedy soup gains >= 0.5 points (test and mean
# shift), or reaches the random search's final accuracy with <= 60 % of the trials.
TARGET_POINTS, TARGET_BUDGET = 0.5, 0.6


def compare_searches(runs: dict[str, list[RunSummary]], base: str = "random",
                     challenger: str = "soup", soup: str = "greedy_soup") -> tuple[str, dict]:
    """The challenger search against the base one, paired by seed: d = greedy soup (and best
    single) of the challenger − of the base per split, and how many trials the challenger's
    anytime soup needs to reach the base's final greedy-soup held-out accuracy."""
    a, b = runs[challenger], runs[base]
    title = (f"## {challenger} search vs {base} search, paired by sweep seed (equal compute: "
             "the same trials x epochs)")
    lines = [title, "", f"| d = {challenger} − {base} (points) | " + " | ".join(COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    payload: dict = {"base": base, "challenger": challenger}
    for label, pick in ((soup.replace("_", " "), lambda r: r.soups.get(soup)),
                        ("best single", lambda r: r.best)):
        cells = []
        for column in COLUMNS:
            d = [100 * (ra.value(pick(ra), column) - rb.value(pick(rb), column))
                 for ra, rb in zip(a, b, strict=True)]
            mean, se = paired(d)
            payload[f"{label}/{column}"] = d
            cells.append(f"{mean:+.2f} ± {se:.2f} [{', '.join(f'{x:+.2f}' for x in d)}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    fractions = []
    for ra, rb in zip(a, b, strict=True):
        offers = anytime_offers(Path(ra.workdir))
        n = trials_to_reach(offers, rb.soups[soup].acc["heldout"]) if offers else None
        fractions.append(None if n is None else n / len(offers))
    payload["budget_fraction"] = fractions
    name = soup.replace("_", " ")
    shown = ", ".join("never" if f is None else f"{100 * f:.0f}%" for f in fractions)
    reach = (f"Trials the {challenger} search's anytime soup needs to reach the {base} "
             f"search's final {name} held-out accuracy, per seed: {shown}.")
    d_test, d_shift = payload[f"{name}/test"], payload[f"{name}/mean shift"]
    points = (statistics.fmean(d_test) >= TARGET_POINTS
              and statistics.fmean(d_shift) >= TARGET_POINTS)
    reached = [f for f in fractions if f is not None]
    budget = len(reached) == len(fractions) and statistics.median(reached) <= TARGET_BUDGET
    payload["holds"] = {"points": points, "budget": budget}
    on_points = (f"{'✓' if points else '✗'} {name}: ≥ +{TARGET_POINTS} points mean on test "
                 f"({statistics.fmean(d_test):+.2f}) and on mean shift "
                 f"({statistics.fmean(d_shift):+.2f})")
    on_budget = (f"{'✓' if budget else '✗'} or the {base} search's final accuracy reached "
                 f"with ≤ {100 * TARGET_BUDGET:.0f}% of the trials (median over seeds)")
    lines += ["", reach, "", on_points, on_budget]
    return "\n".join(lines), payload


def anytime_figure(runs: dict[str, list[RunSummary]], path: Path) -> None:
    """Mean over seeds of each search's anytime soup (solid) and best single so far (dashed),
    held-out accuracy against the trials finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for (search, summaries), color in zip(runs.items(), ["#2b6cb0", "#c53030", "#2f855a"],
                                          strict=False):
        curves = [anytime_offers(Path(r.workdir)) for r in summaries]
        n = min((len(c) for c in curves), default=0)
        if not n:
            continue
        xs = list(range(1, n + 1))
        for attr, style, label in (("soup_heldout", "-o", "anytime soup"),
                                   ("best_single", "--", "best single so far")):
            ys = [100 * statistics.fmean(getattr(c[i], attr) or math.nan for c in curves)
                  for i in range(n)]
            ax.plot(xs, ys, style, c=color, ms=3, label=f"{label} ({search} search)")
    ax.set_xlabel("trials finished")
    ax.set_ylabel(f"held-out accuracy (%), mean of {len(next(iter(runs.values())))} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_searches(runs: dict[str, list[RunSummary]], root: Path) -> str:
    """Each search's fidelity report under root/<search>/, and the comparison of the soup
    search with the random one (root/searches.md, .json, anytime.png)."""
    parts = []
    for search, summaries in runs.items():
        parts.append(f"# sweep.search: {search}\n\n" + write(summaries, root / search))
    if "random" in runs and "soup" in runs:
        text, payload = compare_searches(runs)
        write_atomic(root / "searches.md", text + "\n")
        write_atomic(root / "searches.json", json.dumps(payload, indent=2))
        write_atomic(root / "anytime.png", lambda tmp: anytime_figure(runs, tmp))
        parts.append(text)
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raysoup.fidelity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdirs", nargs="+", type=Path)
    a = p.parse_args(argv)
    try:
        runs = [summarize_run(w) for w in a.workdirs]
    except ValueError as exc:
        print(f"raysoup.fidelity: {exc}", file=sys.stderr)
        return 2
    print(report(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
