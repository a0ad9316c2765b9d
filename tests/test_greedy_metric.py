"""`soup.greedy.metric`: greedy ranks and decides by held-out accuracy, F1 or MCC (GLUE's
per-task metric). Pure Python: a hand-made held-out split where accuracy and F1 choose
different soups."""

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from raysoup.evaluate.task_metrics import binary_counts, f1, from_counts, mcc
from raysoup.soup import Candidate
from raysoup.soup.greedy import GreedySoup
from raysoup.soup_settings import GreedySettings


def predictions(tp, fp, fn, tn):
    """Labels and predictions of a 20-example held-out split with these counts."""
    labels = np.array([1] * (tp + fn) + [0] * (fp + tn))
    preds = np.array([1] * tp + [0] * fn + [1] * fp + [0] * tn)
    return labels, preds


# Held-out: 4 positives of 20. A alone: acc .80, F1 .60; C alone: acc .80, F1 .33;
# the soup A+C: acc .85 (up) but F1 .40 (down): it finds fewer positives.
WORLD = {
    ("A",): predictions(3, 3, 1, 13),
    ("C",): predictions(1, 1, 3, 15),
    ("A", "C"): predictions(1, 0, 3, 16),
}


class CountsScorer:
    """A running soup's held-out metric from the class-1 counts, as the kitchens compute it."""

    def __init__(self, metric):
        self.metric, self.members = metric, []

    def _score(self, members):
        labels, preds = WORLD[tuple(sorted(members))]
        return from_counts(self.metric, int(np.sum(labels == preds)), len(labels),
                           *binary_counts(labels, preds))

    def start(self, first):
        self.members = [first.name]

    def score(self, window):
        return [self._score([*self.members, c.name]) for c in window]

    def commit(self, cand):
        self.members.append(cand.name)


def candidates():
    out = []
    for name in ("A", "C"):
        labels, preds = WORLD[(name,)]
        out.append(Candidate(name, float(np.mean(labels == preds)), Path(name),
                             {"f1": f1(labels, preds), "mcc": mcc(labels, preds)}))
    return out


def test_accuracy_and_f1_choose_differently():
    by_acc = GreedySoup().select(candidates(), CountsScorer("accuracy"))
    by_f1 = GreedySoup(metric="f1").select(candidates(), CountsScorer("f1"))
    assert by_acc.ingredients == ["A", "C"]  # 0.80 → 0.85: accepted
    assert by_f1.ingredients == ["A"]  # F1 0.60 → 0.40: rejected
    assert [t["heldout"] for t in by_f1.trace] == pytest.approx([0.6, 0.4])
    assert by_f1.info == {"accept_ties": True, "metric": "f1"}  # recipe.json says which
    assert by_acc.info == {"accept_ties": True}  # the default's record is unchanged
    by_mcc = GreedySoup(metric="mcc").select(candidates(), CountsScorer("mcc"))
    assert by_mcc.ingredients == ["A"]


def test_ranking_uses_the_metric():
    # B: below A on accuracy, above it on F1: it starts the F1 greedy soup.
    b_labels, b_preds = predictions(4, 5, 0, 11)  # acc .75, F1 .62
    b = Candidate("B", 0.75, Path("B"), {"f1": f1(b_labels, b_preds)})
    a = candidates()[0]
    scorer = CountsScorer("f1")
    scorer.score = lambda window: [0.0] * len(window)  # every addition rejected
    assert GreedySoup(metric="f1").select([a, b], scorer).ingredients == ["B"]
    assert GreedySoup().select([a, b], scorer).ingredients == ["A"]
    with pytest.raises(ValueError, match="ingredient A has no held-out mcc"):
        GreedySoup(metric="mcc").select([Candidate("A", 0.8, Path("A")), b], scorer)


@pytest.mark.parametrize("seed", range(20))
def test_counts_give_glue_f1_and_mcc(seed):
    rng = np.random.default_rng(seed)
    labels, preds = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    if seed == 0:
        preds[:] = 0  # F1 and MCC of a constant prediction: 0
    correct = int(np.sum(labels == preds))
    counts = binary_counts(labels, preds)
    assert from_counts("f1", correct, 50, *counts) == pytest.approx(f1(labels, preds))
    assert from_counts("mcc", correct, 50, *counts) == pytest.approx(mcc(labels, preds))
    assert from_counts("accuracy", correct, 50, *counts) == correct / 50


def test_bad_metric_is_a_clear_error():
    with pytest.raises(ValidationError, match="'accuracy', 'f1' or 'mcc'"):
        GreedySettings(metric="auc")
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        GreedySoup(metric="auc")
    with pytest.raises(ValueError, match="'f1' needs a two-class task.*4 classes"):
        GreedySettings(metric="f1").check_task(4)
    GreedySettings(metric="mcc").check_task(2)
    GreedySettings().check_task(1000)  # accuracy: any task


def test_the_default_config_dumps_as_before():
    # A snapshot written before the field existed keeps its bytes; a set metric is recorded.
    assert "metric" not in GreedySettings().model_dump()
    assert GreedySettings(metric="f1").model_dump()["metric"] == "f1"
    assert GreedySoup(**GreedySettings(metric="mcc").model_dump()).metric == "mcc"


def test_the_report_says_which_metric_greedy_used(tmp_path):
    from raysoup.evaluate import results as res
    from raysoup.report import write_report

    t = res.merge(res.empty(), [res.rows(m, k, {"heldout": (9, 10), "test": (90, 100)})
                                for m, k in (("trial-000", "ingredient"),
                                             ("greedy_soup", "soup"))])
    # (One report: a second costs seconds of figures; the default's text is the other
    # report tests'.)
    write_report(t, tmp_path, "demo", greedy_metric="f1")
    assert ("greedy soup ranked and chose its ingredients by held-out F1 of class 1 "
            "(`soup.greedy.metric: f1`)") in (tmp_path / "README.md").read_text()


def test_the_pipeline_ranks_candidates_by_their_stored_heldout_metric(tmp_path):
    """The soup stage's candidates get each ingredient's held-out F1 and MCC from the
    results' per-example correctness (`Run.heldout_metrics`), nothing scored again."""
    from types import SimpleNamespace

    from raysoup.evaluate import results as res
    from raysoup.orchestration.pipeline import Run

    labels, preds = WORLD[("A",)]
    bits = np.packbits(labels == preds).tobytes()
    path = tmp_path / "results.parquet"
    res.write_results(path, res.merge(res.empty(), [
        res.rows("trial-000", "ingredient", {"heldout": (16, 20, bits)})]))

    def run(metric):
        split = SimpleNamespace(labels=labels)
        data = SimpleNamespace(classnames=["neg", "pos"], heldout=split, test=split, shifts={})
        cfg = SimpleNamespace(soup=SimpleNamespace(greedy=GreedySettings(metric=metric)))
        return SimpleNamespace(cfg=cfg, data=data, results_path=path)

    got = Run.heldout_metrics(run("f1"))["trial-000"]
    assert got["f1"] == pytest.approx(f1(labels, preds)) == pytest.approx(0.6)
    assert got["mcc"] == pytest.approx(mcc(labels, preds))
    assert Run.heldout_metrics(run("accuracy")) == {}  # the default reads nothing


def test_the_greedy_soups_mlflow_run_gets_the_metric_as_a_param():
    from raysoup.orchestration.soup_stage import run_params
    from raysoup.workdir import SoupRecord

    info = GreedySoup(metric="mcc").select(candidates(), CountsScorer("mcc")).info
    params = run_params(SoupRecord("greedy", "soup", ["A"], [1.0], info=info))
    assert params["metric"] == "mcc"
    default = GreedySoup().select(candidates(), CountsScorer("accuracy")).info
    assert "metric" not in run_params(SoupRecord("greedy", "soup", ["A", "C"], [.5, .5],
                                                 info=default))
