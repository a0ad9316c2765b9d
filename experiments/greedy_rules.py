"""Greedy soup's acceptance rules compared offline on finished sweeps (docs/fidelity.md, F8).

    .venv/bin/python experiments/greedy_rules.py ROOT OUT.json

ROOT holds `raysoup fidelity` workdirs (`seed-*`, each a finished run). Per workdir, every
trial and every candidate soup (the plain float32 average of its members) is scored in this
process on held-out, test and the shift sets, and greedy is run with each rule:

- `acc`: held-out accuracy does not drop (the paper's rule, `>=`); `acc_strict`: it rises;
- `both`: accuracy does not drop and cross-entropy does not rise (`loss_must_not_rise`);
  these three run raysoup's own greedy loop (`GreedySoup.select`) over in-process scores;
- `nll`: candidates ranked and accepted by held-out cross-entropy alone.

Prints d = greedy − best single (by held-out accuracy) on test and mean shift per rule and
writes everything to OUT.json. Reads the workdirs only. `OfflineScores` and `OfflineScorer`
are shared with experiments/sweep_bootstrap.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from raysoup.checkpoints import load_state_dict
from raysoup.config import load_experiment
from raysoup.evaluate.evaluator import Evaluator, count_correct, load_weights_
from raysoup.models.classifier import classifier_skeleton
from raysoup.orchestration.evaluation import build_eval_cache
from raysoup.prepare import prepare
from raysoup.soup import Candidate
from raysoup.soup.greedy import GreedySoup

RULES = ("acc", "acc_strict", "nll", "both")
GREEDY = {"acc": GreedySoup(), "acc_strict": GreedySoup(accept_ties=False),
          "both": GreedySoup(loss_must_not_rise=True)}


class OfflineScores:
    """Ingredients (checkpoint dirs) and their uniform soups scored in this process on the
    splits of `workdir`'s world: {split: (accuracy %, mean cross-entropy)}. Every soup is
    scored once; `heldout_only` scores just the held-out split (greedy's loop). Every state
    dict it loads stays in memory: an analysis of finished miniature sweeps (tens of MB), not
    a tool for 72 ViT-B/32 ingredients."""

    def __init__(self, workdir: Path):
        cfg = load_experiment(workdir / "experiment.yaml")
        data, zeroshot = prepare(cfg, workdir)
        self.shifts = list(data.shifts)
        named = {"heldout": data.heldout, "test": data.test, **data.shifts}
        self.splits = build_eval_cache(named, workdir, zeroshot["preprocess"],
                                       cfg.data.eval_cache_shard)
        self.ev = Evaluator(classifier_skeleton(zeroshot["model_name"], zeroshot["num_classes"]),
                            self.splits, 500)
        self.states: dict[Path, dict] = {}
        self.scored: dict[tuple, dict] = {}

    def soup(self, members: list[Path], heldout_only: bool = False) -> dict:
        key = tuple(members)  # summed in this order (as raysoup's running sum adds them)
        done = self.scored.get(key)
        if done is not None and (heldout_only or "test" in done):
            return done
        states = [self._state(m) for m in key]
        weights = {k: sum(s[k].float() for s in states) / len(states)
                   if v.is_floating_point() else v for k, v in states[0].items()}
        load_weights_(self.ev.model, weights)
        out = {}
        for name in (["heldout"] if heldout_only else list(self.splits)):
            split = self.splits[name]
            logits, labels = self.ev.logits(name), torch.tensor(split.labels)
            acc = 100 * count_correct(logits, labels, split.class_subset,
                                      split.class_groups) / len(split)
            out[name] = (acc, float(torch.nn.functional.cross_entropy(logits, labels)))
        self.scored[key] = out
        return out

    def summary(self, members: list[Path]) -> dict:
        r = self.soup(members)
        return {"heldout": r["heldout"][0], "heldout_nll": r["heldout"][1], "test": r["test"][0],
                "shift": float(np.mean([r[s][0] for s in self.shifts]))}

    def _state(self, path: Path) -> dict:
        if path not in self.states:
            self.states[path] = load_state_dict(path)
        return self.states[path]


class OfflineScorer:
    """`raysoup.soup.base.SoupScorer` over `OfflineScores` (candidates' `path`s)."""

    def __init__(self, scores: OfflineScores):
        self.scores = scores

    def start(self, first):
        self.members = [first.path]

    def score_with_loss(self, window):
        return [self.scores.soup([*self.members, c.path], heldout_only=True)["heldout"]
                for c in window]

    def score(self, window):
        return [acc for acc, _ in self.score_with_loss(window)]

    def current_loss(self):
        return self.scores.soup(self.members, heldout_only=True)["heldout"][1]

    def commit(self, cand):
        self.members.append(cand.path)


def study(workdir: Path) -> dict:
    scores = OfflineScores(workdir)
    paths = {p.name: p for p in sorted((workdir / "ingredients").iterdir())
             if p.name.startswith("trial-")}
    names = sorted(paths)
    heldout = {n: scores.soup([paths[n]])["heldout"] for n in names}
    candidates = [Candidate(n, heldout[n][0], paths[n]) for n in names]
    result = {"single": {n: scores.summary([paths[n]]) for n in names}}
    by_path = {p: n for n, p in paths.items()}
    for rule, greedy in GREEDY.items():  # raysoup's own greedy loop
        members = greedy.select(candidates, OfflineScorer(scores)).ingredients
        result[rule] = {"members": members, **scores.summary([paths[m] for m in members])}
    # Loss alone (not a raysoup rule): ranked by held-out loss, kept if it does not rise.
    ranked = sorted(names, key=lambda n: (heldout[n][1], n))
    members = [paths[ranked[0]]]
    for cand in ranked[1:]:
        if (scores.soup([*members, paths[cand]])["heldout"][1]
                <= scores.soup(members)["heldout"][1]):
            members = [*members, paths[cand]]
    result["nll"] = {"members": [by_path[m] for m in members], **scores.summary(members)}
    result["uniform"] = scores.summary(list(paths.values()))
    return result


def main(root: Path, out: Path) -> None:
    torch.set_num_threads(2)
    results = {}
    for workdir in sorted(root.glob("seed-*")):
        r = results[workdir.name] = study(workdir)
        best = min(r["single"], key=lambda n: (-r["single"][n]["heldout"], n))
        b = r["single"][best]
        print(workdir.name, f"best {best} test {b['test']:.2f} shift {b['shift']:.2f} | " +
              " | ".join(f"{rule}: {len(r[rule]['members'])} d_test {r[rule]['test'] - b['test']:+.2f}"
                         f" d_shift {r[rule]['shift'] - b['shift']:+.2f}" for rule in RULES),
              flush=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
