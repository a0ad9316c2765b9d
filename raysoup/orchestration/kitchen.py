"""The Ray kitchen: what merge methods cook with during the soup stage (`soup.base.Kitchen`).

- A weighting is scored by reducing it shard-parallel into the object store (`reduce_to_refs`,
  the same shard function the writer runs, so a scored soup and its written soup are the same
  bits) and evaluating it on held-out in an eval actor.
- A task-vector merge is computed once per soup, shard-parallel into the object store
  (`task_vector_refs`); each scale λ is then θ_0 + λ·τ per shard and one held-out evaluation.
- Greedy's running sum (`RunningSumScorer`) and its decision journal (one per recipe, next to
  the soups, so a killed soup stage resumes the decisions).
- Per-tensor statistics run one Ray task per shard; learning runs inside an eval actor, which
  already holds the preprocessed held-out split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ray

from raysoup.evaluate.evaluator import LOSS_UNIT
from raysoup.evaluate.task_metrics import from_counts
from raysoup.orchestration.evaluation import EvalPool
from raysoup.orchestration.reduce_tasks import (
    _per_tensor,
    add_ingredient,
    apply_refs,
    placed,
    reduce_to_refs,
    task_vector_refs,
)
from raysoup.reduce.merge import TensorMerge
from raysoup.soup import Candidate
from raysoup.soup.base import integers_source
from raysoup.soup.journal import DecisionJournal
from raysoup.workdir import soup_journal

log = logging.getLogger(__name__)


class RayKitchen:
    """`raysoup.soup.base.Kitchen` over an eval pool and a shard plan. `soups_dir` and
    `soup_id` (the candidate set) place and key the decision journals."""

    def __init__(self, pool: EvalPool, plan: list[list[str]], anchor: Candidate | None,
                 soups_dir: Path | None = None, soup_id: str | None = None):
        self.pool, self.plan, self.anchor = pool, plan, anchor
        self.soups_dir, self.soup_id = soups_dir, soup_id
        # The last task-vector merge's shard refs: a recipe scores its λ in rounds
        # (`raysoup.soup.grid_search`), and each round reuses the merge of the same τ.
        self._taus: tuple[tuple, list] | None = None

    def _heldout(self, shard_refs: list[list]) -> list[float]:
        """Held-out accuracy of each soup given as its shard refs (at most one per actor)."""
        calls = [lambda a, r=r: a.evaluate_sum.remote(r, 1.0, ["heldout"]) for r in shard_refs]
        return [correct / n for correct, n in (s["heldout"] for s in self.pool.run(calls))]

    def score(self, paths: list[Path], weightings: list[list[float]]) -> list[float]:
        accs: list[float] = []
        # At most one soup per actor in the object store at a time.
        step = max(1, len(self.pool))
        for start in range(0, len(weightings), step):
            accs += self._heldout([
                reduce_to_refs(paths, w, self.plan,
                               integers_from=integers_source(paths, self.anchor))
                for w in weightings[start : start + step]])
        return accs

    def score_splits(self, paths: list[Path], weightings: list[list[float]]
                     ) -> list[dict[str, float]]:
        """Accuracy on every split the eval actors hold of each weighting (WiSE-FT's curve)."""
        out: list[dict[str, float]] = []
        step = max(1, len(self.pool))
        for start in range(0, len(weightings), step):
            refs = [reduce_to_refs(paths, w, self.plan,
                                   integers_from=integers_source(paths, self.anchor))
                    for w in weightings[start : start + step]]
            calls = [lambda a, r=r: a.evaluate_sum.remote(r, 1.0, None) for r in refs]
            out += [{split: correct / n for split, (correct, n) in scores.items()}
                    for scores in self.pool.run(calls)]
        return out

    def score_merge(self, base: Path, paths: list[Path], merge: TensorMerge,
                    scales: list[float]) -> list[float]:
        key = (Path(base), tuple(Path(p) for p in paths), merge)
        if self._taus is None or self._taus[0] != key:
            self._taus = None  # the previous merge's refs are released before the next one
            self._taus = (key, task_vector_refs(base, paths, merge, self.plan))
        taus = self._taus[1]
        accs: list[float] = []
        step = max(1, len(self.pool))
        for start in range(0, len(scales), step):
            accs += self._heldout([apply_refs(base, taus, s, self.plan)
                                   for s in scales[start : start + step]])
        return accs

    def running_sum(self, label: str, metric: str = "accuracy") -> RunningSumScorer:
        # Greedy logs its decisions itself (soup.greedy.decision_line): a speculative score is
        # not a decision, and a candidate may be scored twice.
        return RunningSumScorer(self.pool, self.plan, metric)

    def journal(self, label: str) -> DecisionJournal | None:
        if self.soups_dir is None:
            return None
        return DecisionJournal(soup_journal(self.soups_dir, label), self.soup_id)

    def per_tensor(self, fn, paths: list[Path]) -> dict:
        merged: dict = {}
        for part in ray.get([placed(_per_tensor).remote(fn, [str(p) for p in paths], names)
                             for names in self.plan]):
            merged.update(part)
        return merged

    def learn(self, paths: list[Path], **settings) -> dict:
        [mix] = self.pool.run([lambda a: a.learn_coefficients.remote([str(p) for p in paths],
                                                                   settings)])
        mem = mix["info"].get("memory", {})
        log.info("  learned: %d steps, loss %.4f → %.4f, peak RSS %.0f MiB (%.0f MiB before; "
                 "ingredients %.1f MiB on disk)", len(mix["trace"]),
                 mix["trace"][0]["loss"] if mix["trace"] else float("nan"),
                 mix["trace"][-1]["loss"] if mix["trace"] else float("nan"),
                 mem.get("peak_rss_mib", float("nan")), mem.get("rss_before_mib", float("nan")),
                 mem.get("ingredients_mib", float("nan")))
        return mix


class RunningSumScorer:
    """`SoupScorer` over a shard-parallel running sum held in Ray's object store.

    Each candidate costs one shard-parallel add (θ_c read once) and one held-out evaluation;
    the candidate soup is sum × 1/k, bit-identical to the final reduction of the same list.
    A window of candidates is scored at once: with A actors and M candidates, each candidate
    gets A // M actors that score slices of the held-out split (data parallel), and the
    candidates run side by side (speculation). Counts (and the loss, in fixed point) are
    summed, so the accuracy and the loss are exactly those of a single whole-split evaluation.
    `metric` other than accuracy (F1, MCC): the score is that metric, from the class-1 counts
    (tp, fp, fn) summed the same way.
    """

    def __init__(self, pool: EvalPool, plan: list[list[str]], metric: str = "accuracy"):
        self.pool, self.plan, self.metric = pool, plan, metric
        self.sum_refs: list | None = None
        self.pending: dict[str, list] = {}
        self.k = 0
        self.evaluations = 0

    def start(self, first: Candidate) -> None:
        self.sum_refs, self.k = add_ingredient(None, first.path, self.plan), 1

    def score(self, candidates: list[Candidate]) -> list[float]:
        return [acc for acc, _ in self.score_with_loss(candidates)]

    def score_with_loss(self, candidates: list[Candidate]) -> list[tuple[float, float]]:
        self.pending = {c.name: add_ingredient(self.sum_refs, c.path, self.plan)
                        for c in candidates}
        scored = self._evaluate([self.pending[c.name] for c in candidates], self.k + 1)
        self.evaluations += len(candidates)
        return scored

    def current_loss(self) -> float:
        [(_, loss)] = self._evaluate([self.sum_refs], self.k)
        return loss

    def _evaluate(self, soups: list[list], k: int) -> list[tuple[float, float]]:
        """(held-out metric, mean cross-entropy) of each running sum (shard refs) ÷ k."""
        parts = max(1, len(self.pool) // len(soups))
        counts = {"counts": True} if self.metric != "accuracy" else {}
        calls, owner = [], []
        for j, refs in enumerate(soups):
            for i in range(parts):
                calls.append(lambda a, r=refs, p=(i, parts): a.evaluate_sum.remote(
                    r, 1.0 / k, ["heldout"], p, loss=True, **counts))
                owner.append(j)
        # correct, n, loss units (and tp, fp, fn): integers, exact in any order
        sums = [[0] * (6 if counts else 3) for _ in soups]
        for j, scores in zip(owner, self.pool.run(calls), strict=True):
            for t, v in enumerate(scores["heldout"]):
                sums[j][t] += v
        return [(from_counts(self.metric, correct, n, *tp_fp_fn), units * LOSS_UNIT / n)
                for correct, n, units, *tp_fp_fn in sums]

    def commit(self, candidate: Candidate) -> None:
        refs = self.pending.pop(candidate.name, None)
        if refs is None:  # replayed from the journal: never scored in this process
            refs = add_ingredient(self.sum_refs, candidate.path, self.plan)
        self.sum_refs, self.pending, self.k = refs, {}, self.k + 1
