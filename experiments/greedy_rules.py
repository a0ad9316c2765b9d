"""Greedy soup's acceptance rules compared offline on finished sweeps (FIDELITY.md, F8).

    .venv/bin/python experiments/greedy_rules.py ROOT OUT.json

ROOT holds `raysoup fidelity` workdirs (`seed-*`, each a finished run). Per workdir, every
trial and every candidate soup (the plain float32 average of its members) is scored in this
process on held-out, test and the shift sets, and greedy is run with each rule:

- `acc`: held-out accuracy does not drop (the paper's rule, `>=`); `acc_strict`: it rises;
- `both`: accuracy does not drop and cross-entropy does not rise (`loss_must_not_rise`);
  these three run raysoup's own greedy loop (`GreedySoup.select`) over in-process scores;
- `nll`: candidates ranked and accepted by held-out cross-entropy alone.

Prints d = greedy − best single (by held-out accuracy) on test and mean shift per rule and
writes everything to OUT.json. Reads the workdirs only.
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


def study(workdir: Path) -> dict:
    cfg = load_experiment(workdir / "experiment.yaml")
    data, zeroshot = prepare(cfg, workdir)
    named = {"heldout": data.heldout, "test": data.test, **data.shifts}
    splits = build_eval_cache(named, workdir, zeroshot["preprocess"], cfg.data.eval_cache_shard)
    ev = Evaluator(classifier_skeleton(zeroshot["model_name"], zeroshot["num_classes"]),
                   splits, 500)

    def measure(weights) -> dict:
        load_weights_(ev.model, weights)
        out = {}
        for name, split in splits.items():
            logits, labels = ev.logits(name), torch.tensor(split.labels)
            acc = 100 * count_correct(logits, labels, split.class_subset,
                                      split.class_groups) / len(split)
            nll = float(torch.nn.functional.cross_entropy(logits, labels))
            out[name] = (acc, nll)
        return out

    def summary(r: dict) -> dict:
        return {"heldout": r["heldout"][0], "heldout_nll": r["heldout"][1],
                "test": r["test"][0], "shift": float(np.mean([r[s][0] for s in data.shifts]))}

    names = sorted(p.name for p in (workdir / "ingredients").iterdir()
                   if p.name.startswith("trial-"))
    states = {n: load_state_dict(workdir / "ingredients" / n) for n in names}
    scored: dict[tuple, dict] = {(n,): measure(states[n]) for n in names}

    def soup(members: list[str]) -> dict:
        key = tuple(members)
        if key not in scored:
            first = states[members[0]]
            scored[key] = measure({k: sum(states[m][k].float() for m in members) / len(members)
                                   if v.is_floating_point() else v for k, v in first.items()})
        return scored[key]

    class Scorer:  # `raysoup.soup.base.SoupScorer` over this process's scores
        def start(self, first):
            self.members = [first.name]

        def score_with_loss(self, window):
            return [soup([*self.members, c.name])["heldout"] for c in window]

        def score(self, window):
            return [acc for acc, _ in self.score_with_loss(window)]

        def current_loss(self):
            return soup(self.members)["heldout"][1]

        def commit(self, cand):
            self.members.append(cand.name)

    candidates = [Candidate(n, scored[(n,)]["heldout"][0], workdir / "ingredients" / n)
                  for n in names]
    result = {"single": {n: summary(scored[(n,)]) for n in names}}
    for rule, greedy in GREEDY.items():  # raysoup's own greedy loop
        members = greedy.select(candidates, Scorer()).ingredients
        result[rule] = {"members": members, **summary(soup(members))}
    # Loss alone (not a raysoup rule): ranked by held-out loss, kept if it does not rise.
    ranked = sorted(names, key=lambda n: (scored[(n,)]["heldout"][1], n))
    members = ranked[:1]
    for cand in ranked[1:]:
        if soup([*members, cand])["heldout"][1] <= soup(members)["heldout"][1]:
            members = [*members, cand]
    result["nll"] = {"members": members, **summary(soup(members))}
    result["uniform"] = summary(soup(names))
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
