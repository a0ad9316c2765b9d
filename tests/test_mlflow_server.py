"""A small pipeline logging to a real `mlflow server` (the cluster setup), read back over REST.

The server runs like the one cluster.yaml starts on the head node: SQLite backend, proxied
artifacts (`--artifacts-destination`), so the driver uploads artifacts through the server and
never needs the server's disk. The run is the session's `served_run` (tests/conftest.py).
"""

import pytest

pytestmark = pytest.mark.slow


def test_pipeline_logs_to_mlflow_server(served_run, tmp_path):
    from mlflow.tracking import MlflowClient

    assert served_run["rc"] == 0, served_run["stderr"][-3000:]
    url, server_root, workdir = served_run["url"], served_run["server_root"], served_run["workdir"]

    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("server-e2e")
    # Artifacts go through the server (proxied), not to a driver-local directory.
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    assert not (workdir / "mlartifacts").exists()
    assert not (workdir / "mlflow.db").exists()

    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["soup-greedy", "soup-uniform", "sweep", "trial-000", "trial-001"]
    assert all(r.info.status == "FINISHED" for r in runs.values())
    parent = runs["sweep"].info.run_id
    assert "mlflow.parentRunId" not in runs["sweep"].data.tags

    for name in ("trial-000", "trial-001"):
        trial = runs[name]
        assert trial.data.tags["mlflow.parentRunId"] == parent
        assert trial.data.tags["raysoup.ingredient"] == f"ingredients/{name}"
        params = trial.data.params
        assert {"lr", "weight_decay", "seed", "epochs", "trial_id"} <= set(params)
        assert params["epochs"] == "2"
        history = client.get_metric_history(trial.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == [1, 2]  # one point per epoch
        assert all(m.value > 0 for m in history)

    splits = {"heldout", "test", "background", "blur_noise", "geometric", "inverted", "sketch"}
    for recipe in ("uniform", "greedy"):
        soup = runs[f"soup-{recipe}"]
        assert soup.data.tags["mlflow.parentRunId"] == parent
        assert soup.data.params["recipe"] == recipe
        ingredients = soup.data.params["ingredients"].split(",")
        assert set(ingredients) <= {"trial-000", "trial-001"} and ingredients
        assert soup.data.params["num_ingredients"] == str(len(ingredients))
        accs = {k.removeprefix("acc_"): v for k, v in soup.data.metrics.items()
                if k.startswith("acc_")}
        assert set(accs) >= {"heldout", "test"} and len(set(accs) - {"heldout", "test"}) >= 3
        assert set(accs) <= splits and all(0 <= v <= 1 for v in accs.values())
        assert [a.path for a in client.list_artifacts(soup.info.run_id)] == ["recipe.json"]
    assert runs["soup-uniform"].data.params["ingredients"] == "trial-000,trial-001"

    top = {a.path for a in client.list_artifacts(parent)}
    assert {"report", "results.parquet"} <= top
    report = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/figure.png" in report
    # Downloaded back through the server's artifact proxy: the real PNG.
    local = client.download_artifacts(parent, "report/figure.png", str(tmp_path))
    with open(local, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # ... and stored on the server's side, under its --artifacts-destination.
    stored = {p.name for p in (server_root / "artifacts").rglob("*") if p.is_file()}
    assert {"figure.png", "recipe.json", "results.parquet"} <= stored
