"""A tracking server that goes down in the middle of a sweep and comes back: a real
`mlflow server` process, stopped (SIGKILL) after the first trial's run finished and
restarted later on the same store, under a real local Ray Tune sweep.

The sweep must not be aborted by its tracking callbacks; its trials and ingredients are not
lost; the error at its end says what to do; and the resumed sweep's runs catch up (the trial
that ran while the server was down gets its run, with its hyper-parameters)."""

import threading
import time

import pytest
from conftest import free_port, start_mlflow_server, stop_mlflow_server
from small import small_config

from raysoup.config import ExperimentCfg

pytestmark = pytest.mark.slow


def test_sweep_outlives_its_tracking_server_and_its_runs_catch_up(ray_session, tmp_path,
                                                                   monkeypatch):
    from mlflow.tracking import MlflowClient

    from raysoup.orchestration.sweep import run_sweep
    from raysoup.prepare import prepare
    from raysoup.tracking import TRIAL, Tracker, TrackingUnavailable

    # A down server answers "connection refused" at once: no retries, so no minutes of
    # MLflow's backoff in the test (the behaviour under test is the same).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    root, port = tmp_path / "server", free_port()
    root.mkdir()
    url = f"http://127.0.0.1:{port}"
    workdir = tmp_path / "work"
    # The small experiment at its smallest: what is tested is the tracking, not the training.
    cfg = ExperimentCfg.model_validate(small_config(
        model={"pretrain": {"steps": 10}},
        data={"world": {"train_per_class": 40, "test_per_class": 10, "shift_per_class": 5}},
        sweep={"num_samples": 2}, tracking={"uri": url, "experiment": "down"}))
    prepare(cfg, workdir)
    server = start_mlflow_server(root, port)
    released = tmp_path / "server-stopped"
    # The driver pauses after trial-000's completion was tracked (failpoint); meanwhile the
    # server is stopped, then the driver goes on to trial-001.
    monkeypatch.setenv("RAYSOUP_FAILPOINTS", f"sweep.trial_complete=1:wait={released}")
    client = MlflowClient(tracking_uri=url)

    def stop_after_first_trial():
        try:
            wait_for_first_trial()
        finally:
            stop_mlflow_server(server)
            released.touch()

    def wait_for_first_trial():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not finished.is_set():
            exp = client.get_experiment_by_name("down")  # None until the driver creates it
            runs = exp and client.search_runs([exp.experiment_id],
                                              "tags.`raysoup.trial` = 'trial-000'")
            if runs and runs[0].info.status == "FINISHED":
                break
            time.sleep(0.5)

    finished = threading.Event()  # the sweep ended (or failed) before the server was stopped
    stopper = threading.Thread(target=stop_after_first_trial, daemon=True)
    stopper.start()
    try:
        tracker = Tracker(url, "down", workdir=workdir)
        parent = tracker.sweep_run()
        with pytest.raises(TrackingUnavailable, match="run the same command again"):
            run_sweep(cfg, workdir, tracker, parent)
    finally:
        finished.set()
        stopper.join(timeout=60)
    monkeypatch.delenv("RAYSOUP_FAILPOINTS")
    assert tracker.offline  # trial-001 ran untracked; the sweep was not aborted
    for name in ("trial-000", "trial-001"):  # both trials trained and kept
        assert (workdir / "ingredients" / name / "model.safetensors").is_file()

    server = start_mlflow_server(root, port)  # back, on the same store
    try:
        again = Tracker(url, "down", workdir=workdir)  # the command run again
        assert again.sweep_run() == parent
        assert run_sweep(cfg, workdir, again, parent) == ["trial-000", "trial-001"]
        runs = again.runs()
    finally:
        stop_mlflow_server(server)
    trials = {r.data.tags[TRIAL]: r for r in runs if TRIAL in r.data.tags}
    assert sorted(trials) == ["trial-000", "trial-001"] and len(runs) == 3  # nothing twice
    for name, run in trials.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["raysoup.ingredient"] == f"ingredients/{name}"
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert float(run.data.params["lr"]) > 0
    # trial-000's per-epoch metrics were logged live; trial-001's epochs ran untracked.
    assert "train_loss" in trials["trial-000"].data.metrics
