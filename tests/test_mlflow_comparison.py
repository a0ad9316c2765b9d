"""MLflow as the comparison surface, on a local SQLite store: every model of results.parquet
(zero-shot, trials, an imported ingredient, soups, the ensemble) gets one set of metric names
on its run (raysoup/tracking/comparison.py), soups their paired intervals, and a soup's logged
model the same metrics. (The same on a real pipeline and a real server: test_mlflow_server.py.)
"""

import numpy as np
import pyarrow as pa
import pytest

from raysoup.evaluate import results as res
from raysoup.evaluate.paired import annotate
from raysoup.tracking import Tracker, default_uri

SPLITS = {"heldout": 40, "test": 40, "blur": 16, "sketch": 16}


def _table(seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    models = [("zeroshot", "zeroshot", None), ("trial-000", "ingredient", None),
              ("trial-001", "ingredient", None), ("imported", "ingredient", None),
              ("uniform_soup", "soup", "set-1"), ("ensemble", "ensemble", "set-1")]
    tables = []
    for name, kind, soup_id in models:
        scores = {}
        for split, n in SPLITS.items():
            mask = rng.random(n) < 0.7
            scores[split] = (int(mask.sum()), n, np.packbits(mask).tobytes())
        tables.append(res.rows(name, kind, scores, soup_id))
    return annotate(res.merge(res.empty(), tables))


def _model_dir(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    return model_dir


def test_every_model_has_the_same_metric_names_and_soups_their_intervals(tmp_path):
    from raysoup.tracking import KIND, MODEL, model_metrics

    table = _table()
    tracker = Tracker(default_uri(tmp_path), "exp", workdir=tmp_path)
    parent = tracker.sweep_run()
    for name in ("trial-000", "trial-001"):
        tracker.end_trial(tracker.trial_run(parent, name, {"lr": 1e-4}), name, False)
    entries = model_metrics(table)
    model_dir = _model_dir(tmp_path)

    def log_model(run_id):
        tracker.log_model(run_id, "uniform_soup", model_dir)

    for recipe, model in (("uniform", "uniform_soup"), ("ensemble", "ensemble")):
        tracker.soup_run(parent, recipe, ["trial-000", "trial-001"], [0.5, 0.5],
                         entries[model].metrics, [], identity="set-1", model=model,
                         before_end=log_model if recipe == "uniform" else None,
                         cooked=(1_700_000_000.0, 1_700_000_002.5))
    assert tracker.log_results(parent, table) == 4  # zero-shot, 2 trials, the imported one
    assert tracker.log_results(parent, table) == 0  # nothing changed: nothing logged twice

    runs = {r.data.tags.get(MODEL): r for r in tracker.runs() if MODEL in r.data.tags}
    assert sorted(runs) == sorted(entries)
    rows = table.to_pylist()
    for name, run in runs.items():
        mine = [r for r in rows if r["model"] == name]
        metrics = run.data.metrics
        for r in mine:
            assert metrics[f"acc/{r['split']}"] == r["accuracy"]
        assert metrics["acc/mean_shift"] == pytest.approx(
            np.mean([r["accuracy"] for r in mine if r["split"] in ("blur", "sketch")]))
        assert run.data.tags[KIND] == mine[0]["kind"]
        compared = [r for r in mine if r["diff_vs_best"] is not None]
        assert bool(compared) == (mine[0]["kind"] in ("soup", "ensemble"))
        for r in compared:
            assert (metrics[f"vs_best/{r['split']}"], metrics[f"vs_best/{r['split']}_lo"],
                    metrics[f"vs_best/{r['split']}_hi"]) == (r["diff_vs_best"], r["diff_lo"],
                                                             r["diff_hi"])
        # Every value once: no duplicate points in a chart.
        history = tracker.client.get_metric_history(run.info.run_id, "acc/test")
        assert len(history) == 1
    best = next(r["best_single"] for r in rows if r["best_single"])
    assert runs[best].data.tags["raysoup.best_single"] == "true"
    assert tracker.client.get_run(parent).data.tags["raysoup.best_single"] == best
    assert runs["zeroshot"].info.run_name == "zeroshot"
    assert runs["zeroshot"].info.status == "FINISHED"
    assert runs["zeroshot"].data.tags["mlflow.parentRunId"] == parent

    # The soup's run spans its cooking; its logged model carries its metrics.
    soup = runs["uniform_soup"]
    assert (soup.info.start_time, soup.info.end_time) == (1_700_000_000_000, 1_700_000_002_500)
    assert soup.data.metrics["cook_seconds"] == 2.5
    logged = tracker.client.get_logged_model(soup.data.tags["raysoup.model_id"])
    on_model = {m.key: m.value for m in logged.metrics}
    assert on_model["acc/heldout"] == soup.data.metrics["acc/heldout"]
    assert "vs_best/test_lo" in on_model


def test_changed_results_are_logged_again(tmp_path):
    """A grown sweep changes the best single model: the comparison metrics follow."""
    tracker = Tracker(default_uri(tmp_path), "exp", workdir=tmp_path)
    parent = tracker.sweep_run()
    def zeroshot_test(table):
        return next(r["accuracy"] for r in table.to_pylist()
                    if r["model"] == "zeroshot" and r["split"] == "test")

    before, after = _table(0), _table(1)
    assert zeroshot_test(before) != zeroshot_test(after)
    tracker.log_results(parent, before)
    assert tracker.log_results(parent, after) == 4
    [zeroshot] = [r for r in tracker.runs() if r.info.run_name == "zeroshot"]
    history = tracker.client.get_metric_history(zeroshot.info.run_id, "acc/test")
    assert [m.value for m in history] == [zeroshot_test(before), zeroshot_test(after)]


def test_sweep_soup_gain_is_the_soups_not_the_last_offers():
    """After a rejected offer the sweep run's soup/gain was that offer's (negative) gain; it
    is the soup's held-out accuracy minus the best single model's, in the chart group of
    the anytime curve and the best single model."""
    from raysoup.orchestration.anytime import _sweep_metrics
    from raysoup.soup.anytime import REJECTED, Offer

    rejected = Offer(2, "trial-002", REJECTED, {}, heldout=0.90, with_soup=0.91, gain=-0.02,
                     soup_heldout=0.93, soup=("trial-000", "trial-001"), best_single=0.92)
    metrics = _sweep_metrics(rejected)
    assert metrics == {"soup/size": 2, "soup/heldout": 0.93,
                       "soup/best_single_heldout": 0.92,
                       "soup/gain": pytest.approx(0.93 - 0.92)}
    assert {k.split("/")[0] for k in metrics} == {"soup"}


def test_two_class_tasks_get_f1_and_mcc_on_every_run(tmp_path):
    """GLUE's metrics beside accuracy (a known case: labels 1 1 0 0 1, the model right on
    images 0, 2 and 4, so it predicts 1 0 0 1 1: tp 2, fn 1, fp 1, tn 1 → F1 4/6, MCC 1/6);
    none for a task of more classes (labels=None) or a split whose labels do not match."""
    from raysoup.tracking import MODEL, model_metrics

    right = np.array([1, 0, 1, 0, 1], bool)
    scores = {"test": (3, 5, np.packbits(right).tobytes()),
              "blur": (3, 5, np.packbits(right).tobytes())}
    table = res.merge(res.empty(), [res.rows("trial-000", "ingredient", scores, None)])
    labels = {"test": np.array([1, 1, 0, 0, 1]), "blur": np.array([1, 0])}  # blur: 2 of 5
    metrics = model_metrics(table, labels)["trial-000"].metrics
    assert metrics["f1/test"] == pytest.approx(4 / 6)
    assert metrics["mcc/test"] == pytest.approx(1 / 6)
    assert "f1/blur" not in metrics and "mcc/blur" not in metrics
    plain = model_metrics(table)["trial-000"].metrics
    assert not any(k.startswith(("f1/", "mcc/")) for k in plain)

    tracker = Tracker(default_uri(tmp_path), "exp", workdir=tmp_path)
    parent = tracker.sweep_run()
    tracker.end_trial(tracker.trial_run(parent, "trial-000", {"lr": 1e-4}), "trial-000", False)
    assert tracker.log_results(parent, table, labels) == 1
    run = next(r for r in tracker.runs() if r.data.tags.get(MODEL) == "trial-000")
    assert run.data.metrics["f1/test"] == pytest.approx(4 / 6)
    assert run.data.metrics["mcc/test"] == pytest.approx(1 / 6)
