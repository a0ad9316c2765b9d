"""A small pipeline logging to a real `mlflow server` (the cluster setup), read back over REST.

The server runs like the one cluster.yaml starts on the head node: SQLite backend, proxied
artifacts (`--artifacts-destination`), so the driver uploads artifacts through the server and
never needs the server's disk.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from small import small_overrides

from raysoup.config import load_experiment

pytestmark = pytest.mark.slow

TINY = Path(__file__).parents[1] / "experiments" / "tiny.yaml"

# experiments/tiny.yaml shrunk to a ~1-minute run (tests/small.py).
SMALL = small_overrides(epochs=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # own process group
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url, root
    finally:
        # The server forks workers: stop the whole group; they take 5-10 s to exit.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_pipeline_logs_to_mlflow_server(ray_session, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from raysoup.orchestration.pipeline import run_pipeline

    url, server_root = mlflow_server
    cfg = load_experiment(TINY,
                          [*SMALL, f"tracking.uri={url}", "tracking.experiment=server-e2e"])
    workdir = tmp_path / "work"
    run_pipeline(cfg, workdir)

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
