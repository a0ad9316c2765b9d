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
    assert sorted(runs) == ["soup-greedy", "soup-uniform", "sweep", "trial-000", "trial-001",
                            "zeroshot"]
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

    for recipe in ("uniform", "greedy"):
        soup = runs[f"soup-{recipe}"]
        assert soup.data.tags["mlflow.parentRunId"] == parent
        assert soup.data.params["recipe"] == recipe
        ingredients = soup.data.params["ingredients"].split(",")
        assert set(ingredients) <= {"trial-000", "trial-001"} and ingredients
        assert soup.data.params["num_ingredients"] == str(len(ingredients))
        assert [a.path for a in client.list_artifacts(soup.info.run_id)] == ["recipe.json"]
        # The run spans the cooking (created after it, at publishing).
        cooked = soup.data.metrics["cook_seconds"]
        assert cooked > 0
        assert abs(soup.info.end_time - soup.info.start_time - 1000 * cooked) <= 2
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


SPLITS = {"heldout", "test", "background", "blur_noise", "geometric", "inverted", "sketch"}


def test_every_model_run_carries_the_same_comparison_metrics(served_run):
    """MLflow as the comparison surface: zero-shot, each trial and each soup have one run
    each with acc/<split> for every split and acc/mean_shift, equal to results.parquet; the
    soups their difference to the best single model with its paired interval."""
    import numpy as np
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    assert served_run["rc"] == 0, served_run["stderr"][-3000:]
    client = MlflowClient(tracking_uri=served_run["url"])
    exp = client.get_experiment_by_name("server-e2e")
    table = pq.read_table(served_run["workdir"] / "results.parquet").to_pylist()
    runs = {r.data.tags["raysoup.model"]: r for r in client.search_runs(
        [exp.experiment_id], filter_string="tags.`raysoup.model` != ''")}
    assert sorted(runs) == sorted({r["model"] for r in table})
    assert {r["kind"] for r in table} >= {"zeroshot", "ingredient", "soup"}
    expected = {f"acc/{s}" for s in SPLITS} | {"acc/mean_shift"}
    for model, run in runs.items():
        metrics = run.data.metrics
        assert {k for k in metrics if k.startswith("acc/")} == expected, model
        mine = [r for r in table if r["model"] == model]
        assert run.data.tags["raysoup.kind"] == mine[0]["kind"]
        for row in mine:
            assert metrics[f"acc/{row['split']}"] == pytest.approx(row["accuracy"], abs=1e-12)
            if row["kind"] == "soup":
                diff, lo, hi = (metrics[f"vs_best/{row['split']}{end}"]
                                for end in ("", "_lo", "_hi"))
                assert diff == pytest.approx(row["diff_vs_best"], abs=1e-12)
                assert lo <= diff <= hi
                assert (lo, hi) == pytest.approx((row["diff_lo"], row["diff_hi"]), abs=1e-12)
            else:
                assert not any(k.startswith("vs_best/") for k in metrics)
        shifts = [r["accuracy"] for r in mine if r["split"] not in ("heldout", "test")]
        assert metrics["acc/mean_shift"] == pytest.approx(np.mean(shifts), abs=1e-12)
    best = next(r["best_single"] for r in table if r["best_single"])
    assert runs[best].data.tags["raysoup.best_single"] == "true"


def test_console_has_no_mlflow_warnings_or_tensorboard_hint(served_run):
    """MLflow's UserWarning for a pyfunc `predict` without type hints (one per logged model,
    with raw ANSI colour codes), and Tune's hint to run TensorBoard on Ray's temp directory."""
    assert served_run["rc"] == 0, served_run["stderr"][-3000:]
    console = served_run["stdout"] + served_run["stderr"]
    assert "logged as models:/" in console  # models were logged
    assert "UserWarning" not in console and "\x1b[" not in console
    assert "tensorboard" not in console.lower()
