"""The model registry on a local SQLite store (raysoup/tracking/models.py): registering turned
on after the soups were published, the `champion` alias of a registered model shared by two
workdirs, a logged model whose upload was killed, and logged models linked to their versions.
(On a real pipeline and server: test_published_models.py.)"""

import json
import os
import subprocess
import sys
import textwrap

from raysoup.tracking import CHAMPION, MODEL_ID, Tracker, default_uri


def _model_dir(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    (model_dir / "weights.bin").write_bytes(os.urandom(4096))
    return model_dir


def _publish(tracker, model_dir, register, recipe="greedy", heldout=0.9, soup_id="set-1"):
    """What the soup stage does for one soup (soup_stage.publish and Publisher.soup)."""
    parent = tracker.sweep_run()

    def before_end(run_id):
        model_id = tracker.log_model(run_id, f"{recipe}_soup", model_dir)
        if register:
            tracker.register("exp", model_id, run_id,
                             {"raysoup.soup_id": soup_id, "heldout": heldout},
                             description=f"{recipe}: held-out {heldout}")

    run = tracker.soup_run(parent, recipe, ["trial-000"], [1.0], {"acc/heldout": heldout}, [],
                           identity=soup_id, before_end=before_end, model=f"{recipe}_soup")
    return run


def test_turning_register_on_registers_an_already_published_soup(tmp_path):
    """A soup run FINISHED with tracking.register off; the soup stage run again with it on
    must register it (it used to return before registering)."""
    tracker = Tracker(default_uri(tmp_path), "exp", workdir=tmp_path)
    run = _publish(tracker, _model_dir(tmp_path), register=False)
    assert tracker.client.get_run(run).info.status == "FINISHED"
    assert tracker.client.search_model_versions("name = 'exp'") == []

    again = Tracker(default_uri(tmp_path), "exp", workdir=tmp_path)  # the later run
    assert _publish(again, _model_dir(tmp_path), register=True) == run
    [found] = again.client.search_model_versions("name = 'exp'")
    version = again.client.get_model_version("exp", found.version)
    assert version.run_id == run and version.description == "greedy: held-out 0.9"
    # The logged model is the one the first run logged, and it knows its version (the link
    # MLflow's UI shows under Models).
    model_id = again.client.get_run(run).data.tags[MODEL_ID]
    assert version.source == again.client.get_logged_model(model_id).artifact_location
    linked = json.loads(again.client.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert linked == [{"name": "exp", "version": version.version}]
    assert len(again.client.search_logged_models([again.experiment_id])) == 1
    # Once more: nothing twice.
    _publish(again, _model_dir(tmp_path), register=True)
    assert len(again.client.search_model_versions("name = 'exp'")) == 1
    assert json.loads(again.client.get_logged_model(model_id).tags["mlflow.modelVersions"]) \
        == linked


def test_champion_is_not_taken_by_another_workdir_sharing_the_registered_model(tmp_path):
    """Workdirs a and b share a store, an experiment and so a registered model: `champion`
    stays with the workdir that set it first; each has its own `champion-<id>` alias."""
    uri = default_uri(tmp_path / "store")
    trackers = {name: Tracker(uri, "exp", artifact_root=tmp_path / "art",
                              workdir=tmp_path / name) for name in ("a", "b")}
    versions = {}
    for name, heldout in (("a", 0.80), ("b", 0.95)):
        tracker = trackers[name]
        run = _publish(tracker, _model_dir(tmp_path), register=True, heldout=heldout)
        [versions[name]] = [v.version for v in tracker.client.search_model_versions(
            f"run_id = '{run}'")]
        assert tracker.crown("exp", "set-1") == versions[name]
    client = trackers["a"].client
    assert client.get_model_version_by_alias("exp", CHAMPION).version == versions["a"]
    for name, tracker in trackers.items():
        own = tracker.own_alias()
        assert own.startswith(f"{CHAMPION}-") and len(own) == len(CHAMPION) + 9
        assert client.get_model_version_by_alias("exp", own).version == versions[name]
    assert trackers["a"].own_alias() != trackers["b"].own_alias()
    # a's champion version deleted: the next workdir to crown takes the alias.
    client.delete_model_version("exp", versions["a"])
    trackers["b"].crown("exp", "set-1")
    assert client.get_model_version_by_alias("exp", CHAMPION).version == versions["b"]


KILLED_LOG_MODEL = textwrap.dedent("""
    import sys
    from pathlib import Path
    from raysoup.tracking import Tracker, default_uri
    tracker = Tracker(default_uri(Path(sys.argv[1])), "exp", workdir=Path(sys.argv[1]))
    tracker.log_model(sys.argv[2], "greedy_soup", Path(sys.argv[3]))
    print("not killed")
""")


def test_log_model_killed_midway_is_completed_not_duplicated(tmp_path):
    """The driver dies (SIGKILL, failpoint) after MLflow created the logged model and before
    its files and READY status: the next log_model completes that model."""
    tracker = Tracker(default_uri(tmp_path), "exp", workdir=tmp_path)
    parent = tracker.sweep_run()
    run = tracker.soup_run(parent, "greedy", ["trial-000"], [1.0], {}, [], identity="set-1")
    model_dir = _model_dir(tmp_path)
    env = {**os.environ, "RAYSOUP_FAILPOINTS": "tracking.model_created=1"}
    proc = subprocess.run([sys.executable, "-c", KILLED_LOG_MODEL, str(tmp_path), run,
                           str(model_dir)], check=False, env=env, capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    [pending] = tracker.client.search_logged_models([tracker.experiment_id])
    assert str(pending.status).endswith("PENDING")
    assert tracker.model_of(run) is None  # not usable yet

    model_id = tracker.log_model(run, "greedy_soup", model_dir)
    assert model_id == pending.model_id
    [logged] = tracker.client.search_logged_models([tracker.experiment_id])
    assert str(logged.status).endswith("READY")
    stored = {a.path for a in tracker.client.list_logged_model_artifacts(model_id)}
    assert stored == {"MLmodel", "weights.bin"}
    assert tracker.client.get_run(run).data.tags[MODEL_ID] == model_id
