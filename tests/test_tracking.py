from raysoup.tracking import Tracker, default_uri


def test_runs_are_reused_not_duplicated(tmp_path):
    tracker = Tracker(default_uri(tmp_path), "exp", artifact_root=tmp_path / "art")
    parent = tracker.sweep_run({"experiment": "exp"})
    run = tracker.trial_run(parent, "trial-000", {"lr": 1e-4})
    tracker.log_metrics(run, {"train_loss": 1.0, "flag": True}, step=1)
    tracker.end(run)
    # A resumed sweep (new Tracker, as after a driver restart) finds the same runs.
    again = Tracker(default_uri(tmp_path), "exp")
    assert again.sweep_run() == parent
    assert again.trial_run(parent, "trial-000", {"lr": 1e-4}) == run
    again.end(run)
    recipe = tmp_path / "recipe.json"
    recipe.write_text("{}")
    soup = again.soup_run(parent, "greedy", ["trial-000"], [1.0], {"test": 0.5}, [recipe])
    again.end(parent)
    runs = again.runs()
    assert len(runs) == 3
    assert {r.info.status for r in runs} == {"FINISHED"}
    child = again.client.get_run(run)
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.params["lr"] == "0.0001"
    assert [m.value for m in again.client.get_metric_history(run, "train_loss")] == [1.0]
    assert "flag" not in child.data.metrics
    assert again.client.get_run(soup).data.metrics["acc_test"] == 0.5
    assert [a.path for a in again.client.list_artifacts(soup)] == ["recipe.json"]
