"""Does the soup effect hold over several sweeps? Paired differences soup - best single.

`raysoup fidelity CONFIG --seeds 5` runs the config's pipeline once per sweep seed 0..N-1
(`ROOT/seed-<s>`; the generated data and a pre-trained base are shared, not rebuilt), then
prints and writes (`ROOT/fidelity.md`, `.json`, `.png`) per run the zero-shot model, the best
single ingredient (picked on held-out, as `report.best_single`) and every soup; the paired
differences d = soup - best single per split as mean ± sd/sqrt(n) over the runs; and the
criteria of the paper's claims (`CRITERIA`). A fallback to the best single model counts as 0.

    python -m raysoup.fidelity runs/seed0 runs/seed1 runs/seed2   # tables of finished runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
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
    zeroshot: Row | None = None

    def value(self, row: Row, column: str) -> float:
        return row.mean_shift(self.shifts) if column == "mean shift" else row.acc[column]


def summarize_run(workdir: Path) -> RunSummary:
    rows, shifts = summarize(read_results(workdir / "results.parquet"))
    best = best_single(rows)
    if best is None:
        raise ValueError(f"{workdir}: results.parquet is missing or has no ingredient rows "
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
    from raysoup.atomic import write_atomic

    text = report(runs)
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / "fidelity.md", text + "\n")
    payload = {"runs": [r.workdir for r in runs], "criteria": evaluate_criteria(runs)}
    write_atomic(root / "fidelity.json", json.dumps(payload, indent=2))
    write_atomic(root / "fidelity.png", lambda tmp: figure(runs, tmp))
    return text


def share_prepared(src: Path, dst: Path) -> None:
    """Hard-link src's generated data and cached base into dst (where dst has none): raysoup
    replaces files by rename, never in place, so a link is never written through."""
    for shared in ("data", "base"):
        if (src / shared).is_dir() and not (dst / shared).exists():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src / shared, dst / shared, copy_function=os.link)


def run_seeds(cfg, root: Path, seeds: int, address: str | None = None) -> list[Path]:
    """The config's pipeline once per sweep seed 0..seeds-1 under root/seed-<s>; what does
    not depend on the sweep seed (generated data, a pre-trained base) is built in the first
    workdir and hard-linked into the others. A finished seed is skipped, an unfinished one
    resumed (the pipeline's own resume)."""
    from raysoup.orchestration.pipeline import run_pipeline

    workdirs = []
    for seed in range(seeds):
        workdir = root / f"seed-{seed}"
        if workdirs:
            share_prepared(workdirs[0], workdir)
        print(f"raysoup fidelity: sweep seed {seed} of {seeds} → {workdir}", file=sys.stderr)
        run_pipeline(cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"seed": seed})}),
                     workdir, address=address)
        workdirs.append(workdir)
    return workdirs


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
