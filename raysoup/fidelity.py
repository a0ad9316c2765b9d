"""Does the soup effect hold over several sweeps? Paired differences soup - best single.

Reads the `results.parquet` of several finished runs (one per sweep seed, same config
otherwise) and prints, per run, the best single ingredient (picked on held-out, as
`report.best_single`) and every soup, then the paired differences d = soup - best single per
split as mean ± sd/sqrt(n) over the runs, and the issue's two criteria:
greedy >= best single on test, and uniform or greedy >= best single on mean shift, in every run.

    python -m raysoup.fidelity runs/seed0 runs/seed1 runs/seed2
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from raysoup.evaluate.results import read_results
from raysoup.report import Row, best_single, summarize


@dataclass(frozen=True)
class RunSummary:
    workdir: str
    best: Row
    soups: dict[str, Row]
    shifts: list[str]

    def value(self, row: Row, column: str) -> float:
        return row.mean_shift(self.shifts) if column == "mean shift" else row.acc[column]


def summarize_run(workdir: Path) -> RunSummary:
    rows, shifts = summarize(read_results(workdir / "results.parquet"))
    best = best_single(rows)
    if best is None:
        raise ValueError(f"{workdir}: results.parquet is missing or has no ingredient rows "
                         "(run `raysoup run` or `raysoup evaluate` there first)")
    soups = {r.model: r for r in rows if r.kind in ("soup", "ensemble")}
    return RunSummary(str(workdir), best, soups, shifts)


def paired(diffs: list[float]) -> tuple[float, float]:
    """Mean and standard error (sd/sqrt(n)) of paired differences; SE is nan for one run."""
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return mean, se


COLUMNS = ("heldout", "test", "mean shift")


def report(runs: list[RunSummary]) -> str:
    lines = ["| run | model | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for run in runs:
        for label, row in [(f"best single ({run.best.model})", run.best), *run.soups.items()]:
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


def criteria(runs: list[RunSummary]) -> list[str]:
    def holds(soup: str, column: str) -> list[bool]:
        return [soup in r.soups and r.value(r.soups[soup], column) >= r.value(r.best, column)
                for r in runs]

    greedy_test = holds("greedy_soup", "test")
    shift = [u or g for u, g in zip(holds("uniform_soup", "mean shift"),
                                    holds("greedy_soup", "mean shift"), strict=True)]
    return [f"greedy >= best single on test: {sum(greedy_test)}/{len(runs)} runs",
            f"uniform or greedy >= best single on mean shift: {sum(shift)}/{len(runs)} runs"]


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
