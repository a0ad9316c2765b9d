"""How often would `raysoup fidelity`'s criteria hold? Synthetic sweeps resampled from finished
trials (docs/fidelity.md, F11).

    .venv/bin/python experiments/sweep_bootstrap.py OUT.json ROOT [ROOT ...] \
        [--lr LO HI] [--trials 6] [--sweeps 40] [--seed 0]

Each ROOT holds `raysoup fidelity` workdirs (`seed-*`) of one world and one base; their sweeps
may differ in the search space. All their trials form a pool. A trial is one draw of the
fine-tuning given its hyper-parameters, so a set of them drawn from the pool stands for a sweep
of that space: a synthetic sweep draws `--trials` trials without replacement among those with
lr in [LO, HI], weighted so that the lr draws are log-uniform over the range (the inverse of the
pool's density in 5 log-spaced bins); the other hyper-parameters come as the pool has them.

Per synthetic sweep, scored in this process (`greedy_rules.OfflineScores`): the best single
model (highest held-out accuracy, ties to the smaller name), greedy soup (raysoup's own
`GreedySoup.select`, `--rule`), the uniform soup and the zero-shot model. Then `raysoup
fidelity`'s own criteria (`raysoup.fidelity.CRITERIA`) are checked on `--groups` random groups
of 5 synthetic sweeps: the fraction that holds is the chance that a 5-seed `raysoup fidelity`
run of that space passes each criterion (and all four). Synthetic sweeps share trials, so the
groups are not independent: a rough estimate, for choosing what to run for real, not a result.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from greedy_rules import OfflineScorer, OfflineScores

from raysoup.fidelity import CRITERIA
from raysoup.soup import Candidate
from raysoup.soup.base import by_heldout
from raysoup.soup.greedy import GreedySoup

RULES = {"both": GreedySoup(loss_must_not_rise=True), "acc": GreedySoup()}
# fidelity.CRITERIA's model names -> this script's keys
MODELS = {"greedy_soup": "greedy", "uniform_soup": "uniform", "best": "best",
          "zeroshot": "zeroshot"}


def pool(roots: list[Path]) -> list[tuple[float, Path]]:
    out = []
    for root in roots:
        for workdir in sorted(root.glob("seed-*")):
            for trial in sorted((workdir / "ingredients").glob("trial-*")):
                hparams = json.loads((trial / "manifest.json").read_text())["hparams"]
                out.append((float(hparams["lr"]), trial))
    return out


def draw_weights(lrs: np.ndarray, lo: float, hi: float, bins: int = 5) -> np.ndarray:
    """Per trial, a weight that makes draws log-uniform in lr over [lo, hi]."""
    edges = np.linspace(np.log(lo), np.log(hi), bins + 1)
    which = np.clip(np.digitize(np.log(lrs), edges) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    if (counts == 0).any():
        raise SystemExit(f"the pool has no trial with lr in {bins - int((counts > 0).sum())} of "
                         f"the {bins} log-spaced bins of [{lo}, {hi}]: widen the pool")
    w = 1.0 / counts[which]
    return w / w.sum()


def sweep(scores: OfflineScores, trials: list[Path], zeroshot: Path, greedy: GreedySoup) -> dict:
    names = {t: f"t{i}" for i, t in enumerate(trials)}
    heldout = {t: scores.soup([t])["heldout"][0] for t in trials}
    cands = [Candidate(names[t], heldout[t], t) for t in trials]
    best = by_heldout(cands)[0].path  # as greedy ranks them (report.best_single's order)
    members = greedy.select(cands, OfflineScorer(scores)).ingredients
    by_name = {n: t for t, n in names.items()}
    out = {"best": scores.summary([best]), "zeroshot": scores.summary([zeroshot]),
           "uniform": scores.summary(trials),
           "greedy": scores.summary([by_name[m] for m in members])}
    out["greedy"]["members"] = len(members)
    out["trials"] = [str(t) for t in trials]
    return out


def check(sweeps: list[dict], groups: int, rng: np.random.Generator) -> dict:
    """Per criterion (and all four), the fraction of groups of 5 synthetic sweeps it holds for."""
    column = {"test": "test", "mean shift": "shift"}
    held = {label: 0 for label, *_ in CRITERIA} | {"all": 0}
    for _ in range(groups):
        group = [sweeps[i] for i in rng.choice(len(sweeps), 5, replace=False)]
        every = True
        for label, a, b, col, test in CRITERIA:
            d = [s[MODELS[a]][column[col]] - s[MODELS[b]][column[col]] for s in group]
            ok = bool(test(d))
            held[label] += ok
            every &= ok
        held["all"] += every
    return {k: v / groups for k, v in held.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("roots", type=Path, nargs="+")
    ap.add_argument("--lr", type=float, nargs=2, default=(7.0e-4, 1.4e-3))
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--sweeps", type=int, default=40)
    ap.add_argument("--groups", type=int, default=2000)
    ap.add_argument("--rule", choices=sorted(RULES), default="both")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    lo, hi = args.lr
    found = [(lr, t) for lr, t in pool(args.roots) if lo <= lr <= hi]
    if len(found) < args.trials:
        raise SystemExit(f"only {len(found)} trials with lr in [{lo}, {hi}]")
    p = draw_weights(np.array([lr for lr, _ in found]), lo, hi)
    first = min(args.roots[0].glob("seed-*"))
    scores = OfflineScores(first)  # every root shares the world: one eval cache
    rng = np.random.default_rng(args.seed)
    sweeps = []
    for k in range(args.sweeps):
        pick = rng.choice(len(found), args.trials, replace=False, p=p)
        s = sweep(scores, [found[i][1] for i in pick], first / "ingredients" / "zeroshot",
                  RULES[args.rule])
        sweeps.append(s)
        print(f"sweep {k}: zero-shot → best {s['best']['test'] - s['zeroshot']['test']:+.2f}  "
              f"greedy ({s['greedy']['members']}) − best {s['greedy']['test'] - s['best']['test']:+.2f}"
              f"  uniform − best, shift {s['uniform']['shift'] - s['best']['shift']:+.2f}",
              flush=True)
    rates = check(sweeps, args.groups, rng)
    per_sweep = {
        "zero-shot → best ≥ +10": statistics.fmean(
            s["best"]["test"] - s["zeroshot"]["test"] >= 10 for s in sweeps),
        "greedy − best ≥ 0": statistics.fmean(
            s["greedy"]["test"] - s["best"]["test"] >= 0 for s in sweeps),
        "greedy − best > 0": statistics.fmean(
            s["greedy"]["test"] - s["best"]["test"] > 0 for s in sweeps),
        "uniform − best, shift > 0": statistics.fmean(
            s["uniform"]["shift"] - s["best"]["shift"] > 0 for s in sweeps),
    }
    print(f"lr [{lo}, {hi}], {args.trials} trials, {args.sweeps} synthetic sweeps from "
          f"{len(found)} trials; per sweep: " +
          ", ".join(f"{k} {v:.2f}" for k, v in per_sweep.items()))
    for label, rate in rates.items():
        print(f"  P(holds in a 5-seed run) {rate:.2f}  {label}")
    args.out.write_text(json.dumps({"args": vars(args), "pool": len(found),
                                    "per_sweep": per_sweep, "five_seed": rates,
                                    "sweeps": sweeps}, indent=1, default=str))


if __name__ == "__main__":
    main()
