"""The in-process `soup.base.Kitchen` of `soup_checkpoints`: the Ray kitchen's arithmetic and
scoring (orchestration/kitchen.py) without Ray.

Every weight operation is the pure function the Ray tasks run (`reduce.Blend`, `add_into`,
`scaled`, `task_vectors`, `apply_task_vector`), here over all tensor names at once (each is per
tensor, so the bits of any shard layout), and every score is the eval actor's
`Evaluator.score` on the held-out split. So a method makes the same choices as in the soup
stage on the same data. Memory: one candidate soup (plus greedy's running sum, or a merged
task vector) and one model skeleton at a time, whatever the number of checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from raysoup.soup.base import Candidate, integers_source


class LocalKitchen:
    """`Kitchen` over an `Evaluator` holding the held-out split as "heldout" (None: a method
    that scores nothing; one that tries is an error naming `heldout=`)."""

    def __init__(self, anchor: Candidate | None, names: list[str], evaluator=None):
        self.anchor, self.names, self.evaluator = anchor, names, evaluator

    def _scorer(self):
        if self.evaluator is None:
            raise ValueError("this method scores candidate soups on held-out data: pass "
                             "heldout=raysoup.HeldOut(<split>, model=<open_clip name>)")
        return self.evaluator

    def accuracy(self, weights) -> float:
        """Held-out accuracy of one weight set (an eval actor's `evaluate_sum` / the evaluate
        stage's count: correct / n)."""
        correct, n = self._scorer().score(weights, ["heldout"])["heldout"]
        return correct / n

    def heldout(self, weights, metric: str = "accuracy") -> tuple[float, dict[str, float]]:
        """(held-out accuracy, {metric: value}) of one weight set, from one forward pass: a
        candidate's `heldout` and `metrics` (F1, MCC: the evaluate stage's counts of class 1)."""
        if metric == "accuracy":
            return self.accuracy(weights), {}
        from raysoup.evaluate.task_metrics import from_counts

        correct, n, *tp_fp_fn = self._scorer().score(weights, ["heldout"],
                                                     counts=True)["heldout"]
        return correct / n, {metric: from_counts(metric, correct, n, *tp_fp_fn)}

    def score(self, paths: list[Path], weightings: list[list[float]]) -> list[float]:
        from raysoup.reduce import Blend

        return [self.accuracy(Blend(tuple(w), integers_from=integers_source(paths, self.anchor))
                              .shard(paths, self.names)) for w in weightings]

    def score_merge(self, base: Path, paths: list[Path], merge, scales: list[float]
                    ) -> list[float]:
        from raysoup.reduce import apply_task_vector, task_vectors

        if len(scales) == 1 and self.evaluator is None:
            return [float("nan")]  # one λ: nothing to choose, nothing to score
        taus = task_vectors(paths, base, self.names, merge)
        return [self.accuracy(apply_task_vector(base, taus, s, self.names)) for s in scales]

    def running_sum(self, label: str, metric: str = "accuracy") -> LocalRunningSum:
        return LocalRunningSum(self, self.names, metric)

    def journal(self, label: str):
        return None  # nothing to resume: a local soup is cooked in one call

    def per_tensor(self, fn, paths: list[Path]) -> dict:
        return fn(paths, self.names)

    def learn(self, paths: list[Path], **settings) -> dict:
        from raysoup.soup.learned import learn_coefficients

        ev = self._scorer()
        mix = learn_coefficients(ev.model, paths, ev.splits["heldout"], device=ev.device,
                                 **settings)
        return {"weights": mix.weights, "tensor_weights": mix.tensor_weights,
                "trace": mix.trace, "info": mix.info}


class LocalRunningSum:
    """Greedy's `SoupScorer` in-process: the running sum of the Ray kitchen's
    `RunningSumScorer` (the same `add_into` and `scaled`, so the same bits). Candidates of a
    speculation window are scored one after another and not kept (memory: the sum and one
    candidate); the accepted one is added again on commit."""

    def __init__(self, kitchen: LocalKitchen, names: list[str], metric: str = "accuracy"):
        self.kitchen, self.names, self.metric = kitchen, names, metric
        self.sum: dict | None = None
        self.k = 0

    def start(self, first: Candidate) -> None:
        from raysoup.reduce import add_into

        self.sum, self.k = add_into(None, first.path, self.names), 1

    def score(self, candidates: list[Candidate]) -> list[float]:
        return [acc for acc, _ in self.score_with_loss(candidates)]

    def score_with_loss(self, candidates: list[Candidate]) -> list[tuple[float, float]]:
        from raysoup.reduce import add_into

        return [self._evaluate(add_into(self.sum, c.path, self.names), self.k + 1)
                for c in candidates]

    def current_loss(self) -> float:
        return self._evaluate(self.sum, self.k)[1]

    def _evaluate(self, total: dict, k: int) -> tuple[float, float]:
        from raysoup.evaluate.evaluator import LOSS_UNIT
        from raysoup.evaluate.task_metrics import from_counts
        from raysoup.reduce import scaled

        ev = self.kitchen._scorer()
        correct, n, units, *tp_fp_fn = ev.score(scaled(total, 1.0 / k), ["heldout"], loss=True,
                                                counts=self.metric != "accuracy")["heldout"]
        return from_counts(self.metric, correct, n, *tp_fp_fn), units * LOSS_UNIT / n

    def commit(self, candidate: Candidate) -> None:
        from raysoup.reduce import add_into

        self.sum, self.k = add_into(self.sum, candidate.path, self.names), self.k + 1
