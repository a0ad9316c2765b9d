"""Does the soup effect hold over several sweeps? Paired differences soup - best single.

`raysoup fidelity CONFIG --seeds 5` runs the config's pipeline once per sweep seed 0..N-1
(`orchestration.seeds`), then this module prints and writes (`ROOT/fidelity.md`, `.json`,
`.png`) per run the zero-shot model, the best single ingredient (picked on held-out, as
`report.best_single`) and every soup; the paired differences d = soup - best single per split
as mean ± sd/sqrt(n) over the runs; and the criteria of the paper's claims (`CRITERIA`) in
interval form: per run the paired 95 % interval over the split's images (evaluate/paired.py),
across runs a 95 % t-interval of the mean over the runs (`judge`). A fallback to the best
single model counts as 0. With `--searches random,soup` it also compares
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

import pyarrow as pa

from raysoup.atomic import write_atomic
from raysoup.evaluate.paired import Interval, mean_interval, unpack
from raysoup.evaluate.paired import paired as paired_images
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
    # (model, split) → (n, packed per-image correctness), where the results kept it.
    bits: dict[tuple[str, str], tuple[int, bytes]] | None = None

    def value(self, row: Row, column: str) -> float:
        return row.mean_shift(self.shifts) if column == "mean shift" else row.acc[column]

    def interval(self, a: Row, b: Row, column: str) -> tuple[float, float, float] | None:
        """(d, lo, hi) in points: a − b on `column` with its paired 95 % interval over the
        images (exact on a split; on the mean shift the splits' variances added:
        `paired.mean_interval`); None where a row kept no per-image correctness."""
        splits = self.shifts if column == "mean shift" else [column]
        found: list[Interval] = []
        for split in splits:
            x, y = (self.bits or {}).get((a.model, split)), (self.bits or {}).get((b.model, split))
            if x is None or y is None or x[0] != y[0]:
                return None
            found.append(paired_images(unpack(x[1], x[0]), unpack(y[1], y[0])))
        if not found:
            return None
        if column == "mean shift":
            d, lo, hi = mean_interval(found)
        else:
            d, lo, hi = found[0].diff, found[0].lo, found[0].hi
        return 100 * d, 100 * lo, 100 * hi


def _bits(table: pa.Table) -> dict[tuple[str, str], tuple[int, bytes]]:
    cols = (table[c].to_pylist() for c in ("model", "split", "n", "correct_bits"))
    return {(m, s): (n, b) for m, s, n, b in zip(*cols, strict=True) if b is not None}


def summarize_run(workdir: Path) -> RunSummary:
    table = read_results(Workdir(workdir).results)
    rows, shifts = summarize(table)
    best = best_single(rows)
    if best is None:
        raise ValueError(f"{workdir}: {RESULTS_FILE} is missing or has no ingredient rows "
                         "(run `raysoup run` or `raysoup evaluate` there first)")
    soups = {r.model: r for r in rows if r.kind in ("soup", "ensemble")}
    zeroshot = next((r for r in rows if r.kind == "zeroshot"), None)
    return RunSummary(str(workdir), best, soups, shifts, zeroshot, _bits(table))


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
    lines += ["", ("d = soup - best single, points: mean ± sd/sqrt(n) [per run; * where the "
              "run's paired 95 % interval excludes 0]; 95 %: the t-interval of the mean over "
              "the runs"), "",
              "| soup | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for soup in common:
        cells = []
        for c in COLUMNS:
            d = [100 * (r.value(r.soups[soup], c) - r.value(r.best, c)) for r in runs]
            ivs = [r.interval(r.soups[soup], r.best, c) for r in runs]
            mean, se = paired(d)
            shown = ", ".join(f"{x:+.2f}" + ("*" if iv and (iv[1] > 0 or iv[2] < 0) else "")
                              for x, iv in zip(d, ivs, strict=True))
            _, lo, hi = across_runs(d, ivs)
            cells.append(f"{mean:+.2f} ± {se:.2f} [{shown}]; 95 % [{lo:+.2f}, {hi:+.2f}]")
        lines.append(f"| {soup} | " + " | ".join(cells) + " |")
    lines += ["", *criteria(runs)]
    return "\n".join(lines)


# The paper's claims on the miniature: (label, model a, model b, column, kind, threshold t).
# "≥": a − b is not below t (greedy matches the best single model); ">": a − b is above t.
CRITERIA = (
    ("greedy − best single, test ≥ 0", "greedy_soup", "best", "test", "≥", 0.0),
    ("uniform − best single, mean shift > 0", "uniform_soup", "best", "mean shift", ">", 0.0),
    ("greedy − uniform, test ≥ 0", "greedy_soup", "uniform_soup", "test", "≥", 0.0),
    ("zero-shot → best single, test ≥ +10 points", "best", "zeroshot", "test", "≥", 10.0),
)

# Student's t 97.5 % quantiles by degrees of freedom (1..30; beyond, 30's: slightly wide).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def across_runs(d: list[float], per_run: list | None = None) -> tuple[float, float, float]:
    """(mean, lo, hi): a 95 % t-interval of the mean of the runs' differences (their spread
    holds both the sweep's and the images' luck); one run: its own paired interval, if any."""
    mean = statistics.fmean(d)
    if len(d) == 1:
        own = (per_run or [None])[0]
        return own if own is not None else (mean, math.nan, math.nan)
    half = T975[min(len(d) - 1, len(T975)) - 1] * statistics.stdev(d) / math.sqrt(len(d))
    return mean, mean - half, mean + half


def judge(kind: str, t: float, per_run: list, overall: tuple[float, float, float]) -> str:
    """"holds", "contradicted" or "not distinguishable" for a claim a − b `kind` t.

    Contradicted: some run's paired interval, or the across-run interval, lies below t. A "≥"
    claim (matching) holds when nothing contradicts it; a ">" claim (beating) holds only when
    the across-run interval lies above t (without per-run intervals, on the points alone)."""
    _, lo, hi = overall
    below = [iv for iv in per_run if iv is not None and iv[2] < t]
    if below or (not math.isnan(hi) and hi < t):
        return "contradicted"
    if kind == "≥" or (not math.isnan(lo) and lo > t):
        return "holds"
    return "not distinguishable"


def diffs(runs: list[RunSummary], a: str, b: str, column: str) -> list[float] | None:
    """Per run, points: model a − model b on `column` ("best" = the best single ingredient,
    "zeroshot"); None if a run lacks one of them."""
    pairs = _pairs(runs, a, b)
    if pairs is None:
        return None
    return [100 * (run.value(ra, column) - run.value(rb, column))
            for run, (ra, rb) in zip(runs, pairs, strict=True)]


def _pairs(runs: list[RunSummary], a: str, b: str) -> list[tuple[Row, Row]] | None:
    def row(run: RunSummary, name: str) -> Row | None:
        return {"best": run.best, "zeroshot": run.zeroshot}.get(name, run.soups.get(name))

    out = [(row(run, a), row(run, b)) for run in runs]
    return None if any(ra is None or rb is None for ra, rb in out) else out


def evaluate_criteria(runs: list[RunSummary]) -> list[dict]:
    out = []
    for label, a, b, column, kind, t in CRITERIA:
        d, pairs = diffs(runs, a, b, column), _pairs(runs, a, b)
        if d is None or pairs is None:
            out.append({"criterion": label, "diffs": None, "intervals": None,
                        "across_runs": None, "verdict": "n/a", "holds": False})
            continue
        per_run = [run.interval(ra, rb, column) for run, (ra, rb) in zip(runs, pairs,
                                                                           strict=True)]
        overall = across_runs(d, per_run)
        verdict = judge(kind, t, per_run, overall)
        out.append({"criterion": label, "diffs": d, "intervals": per_run,
                    "across_runs": list(overall), "verdict": verdict,
                    "holds": verdict == "holds"})
    return out


MARKS = {"holds": "✓", "contradicted": "✗", "not distinguishable": "~", "n/a": "✗"}


def _iv(iv) -> str:
    return "no interval" if iv is None else f"{iv[0]:+.2f} [{iv[1]:+.2f}, {iv[2]:+.2f}]"


def criteria(runs: list[RunSummary]) -> list[str]:
    lines = [("The paper's claims, each per run with its paired 95 % interval over the "
              "images and across runs with a 95 % t-interval of the mean (✓ holds, ~ not "
              "distinguishable, ✗ contradicted: an interval lies on the wrong side):")]
    for c in evaluate_criteria(runs):
        if c["diffs"] is None:
            lines.append(f"{MARKS['n/a']} {c['criterion']}: n/a (a run lacks the models)")
            continue
        runs_text = ", ".join(_iv(iv) if iv is not None else f"{d:+.2f}"
                              for d, iv in zip(c["diffs"], c["intervals"], strict=True))
        lines.append(f"{MARKS[c['verdict']]} {c['criterion']}: {c['verdict']}; across runs "
                     f"{_iv(c['across_runs'])}; per run {runs_text}")
    return lines


def figure_bars(runs: list[RunSummary], soup: str, column: str
                ) -> tuple[list[tuple[float, float, float]], tuple[float, float, float]]:
    """What the figure draws for one soup and column, in points: per run (d, lo, hi) with the
    run's paired 95 % interval (nan where its results kept no per-image correctness), and
    (mean, lo, hi) across the runs (`across_runs`)."""
    d = diffs(runs, soup, "best", column)
    ivs = [run.interval(run.soups[soup], run.best, column) for run in runs]
    per_run = [(x, math.nan, math.nan) if iv is None else (x, iv[1], iv[2])
               for x, iv in zip(d, ivs, strict=True)]
    return per_run, across_runs(d, ivs)


def figure(runs: list[RunSummary], path: Path) -> None:
    """Paired differences soup − best single: per run (dots) with its paired 95 % interval
    over the images, and across runs (squares) the mean with its 95 % t-interval, the
    intervals of the table and the criteria (`RunSummary.interval`, `across_runs`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    soups = sorted(set.intersection(*(set(r.soups) for r in runs)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, column in zip(axes, ("test", "mean shift"), strict=True):
        for i, soup in enumerate(soups):
            per_run, (mean, lo, hi) = figure_bars(runs, soup, column)
            xs = [i - 0.25 + 0.3 * k / max(1, len(runs) - 1) for k in range(len(runs))]
            for x, (value, run_lo, run_hi) in zip(xs, per_run, strict=True):
                # (max: a point and its interval's end may differ in the last bit)
                err = [[0], [0]] if math.isnan(run_lo) else [[max(0.0, value - run_lo)],
                                                             [max(0.0, run_hi - value)]]
                ax.errorbar([x], [value], yerr=err, fmt="o", ms=3.5, color="tab:blue",
                            alpha=0.7, elinewidth=0.8, capsize=1.5)
            err = [[0], [0]] if math.isnan(lo) else [[max(0.0, mean - lo)],
                                                     [max(0.0, hi - mean)]]
            ax.errorbar([i + 0.2], [mean], yerr=err, fmt="ks", capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(soups)), [s.removesuffix("_soup") for s in soups], rotation=30)
        ax.set_title(f"{column}: soup − best single (points)")
    fig.suptitle(f"{len(runs)} sweep seeds: each run with its paired 95 % interval over the "
                 "images; the mean with its 95 % t-interval", fontsize=9)
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
