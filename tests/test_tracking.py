"""The MLflow tracker (raysoup/tracking) on a local SQLite store: runs reused across driver
restarts, one store shared by workdirs, killed runs closed on resume, the champion alias,
and the store's seeding and cache."""
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
    soup = again.soup_run(parent, "greedy", ["trial-000"], [1.0], {"acc/test": 0.5}, [recipe])
    again.end(parent)
    runs = again.runs()
    assert len(runs) == 3
    assert {r.info.status for r in runs} == {"FINISHED"}
    child = again.client.get_run(run)
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.params["lr"] == "0.0001"
    assert [m.value for m in again.client.get_metric_history(run, "train_loss")] == [1.0]
    assert "flag" not in child.data.metrics
    assert again.client.get_run(soup).data.metrics["acc/test"] == 0.5
    assert [a.path for a in again.client.list_artifacts(soup)] == ["recipe.json"]


def test_workdirs_sharing_a_store_keep_their_own_runs(tmp_path):
    """Two workdirs, one tracking store and experiment name (a shared server): each has its
    own sweep, trial and soup runs, and a resumed driver finds its own."""
    from raysoup.tracking import ROLE, TRIAL

    uri = default_uri(tmp_path / "store")
    recipe = tmp_path / "recipe.json"
    recipe.write_text("{}")
    ids = {}
    for name, seed, acc in (("a", 1, 0.5), ("b", 2, 0.7)):
        # An artifact root in tmp_path: without one MLflow puts artifacts in ./mlruns.
        tracker = Tracker(uri, "exp", artifact_root=tmp_path / "art", workdir=tmp_path / name)
        parent = tracker.sweep_run({"seed": seed})
        trial = tracker.trial_run(parent, "trial-000", {"lr": seed * 1e-4})
        tracker.log_metrics(trial, {"train_loss": float(seed)}, step=1)
        tracker.end(trial)
        soup = tracker.soup_run(parent, "uniform", ["trial-000"], [1.0], {"acc/test": acc}, [recipe],
                                identity="same-candidates")
        tracker.end(parent)
        ids[name] = (parent, trial, soup)
    runs = Tracker(uri, "exp").runs()
    assert sum(r.data.tags.get(ROLE) == "sweep" for r in runs) == 2
    assert sum(r.data.tags.get(TRIAL) == "trial-000" for r in runs) == 2
    assert sum(r.data.tags.get("mlflow.runName") == "soup-uniform" for r in runs) == 2
    assert len(list((tmp_path / "art").rglob("recipe.json"))) == 2
    client = Tracker(uri, "exp").client
    for name, seed, acc in (("a", 1, 0.5), ("b", 2, 0.7)):
        parent, trial, soup = ids[name]
        assert client.get_run(parent).data.params == {"seed": str(seed)}
        assert client.get_run(trial).data.params == {"lr": str(seed * 1e-4)}
        assert [m.value for m in client.get_metric_history(trial, "train_loss")] == [seed]
        assert client.get_run(soup).data.metrics == {"acc/test": acc}
        assert client.get_run(parent).data.tags["raysoup.workdir"] == str(tmp_path / name)
        again = Tracker(uri, "exp", workdir=tmp_path / name)  # a resumed driver
        assert again.sweep_run() == parent
        assert again.trial_run(parent, "trial-000", {}) == trial


def test_runs_from_before_workdir_ids_are_adopted_in_the_workdirs_own_store(tmp_path):
    old = Tracker(default_uri(tmp_path), "exp")  # runs written without a workdir id
    parent = old.sweep_run({"experiment": "exp"})
    trial = old.trial_run(parent, "trial-000", {"lr": 1e-4})
    new = Tracker(default_uri(tmp_path), "exp", workdir=tmp_path)
    assert new.sweep_run() == parent and new.trial_run(parent, "trial-000", {}) == trial
    assert len(new.runs()) == 2
    # Another workdir's tracker on that store adopts nothing.
    other = Tracker(default_uri(tmp_path), "exp", workdir=tmp_path / "other")
    assert other.sweep_run() != parent and len(other.runs()) == 3


def test_artifacts_without_an_artifact_root_stay_next_to_the_store(tmp_path, monkeypatch):
    """MLflow's default artifact location is ./mlruns of the current directory (a test once
    wrote into the repository root): a SQLite store keeps them beside its database."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tracker = Tracker(default_uri(tmp_path / "store"), "exp")
    parent = tracker.sweep_run()
    recipe = tmp_path / "recipe.json"
    recipe.write_text("{}")
    tracker.soup_run(parent, "uniform", [], [], {}, [recipe])
    assert list(cwd.iterdir()) == []
    assert len(list((tmp_path / "store" / "mlartifacts").rglob("recipe.json"))) == 1


def test_resumed_sweep_closes_runs_a_killed_driver_left_running(tmp_path):
    """A trial wrote its ingredient, but the driver was killed before it saw the trial
    complete: its run stays RUNNING. The next run finds every ingredient present and skips
    Tune; the run must still end (FINISHED, with its ingredient tag), not stay RUNNING."""
    import torch
    from small import small_config

    from raysoup.checkpoints import write_ingredient
    from raysoup.config import ExperimentCfg
    from raysoup.orchestration.sweep import run_sweep

    cfg = ExperimentCfg.model_validate(small_config(sweep={"num_samples": 2}))
    tracker = Tracker(default_uri(tmp_path), "e2e")
    parent = tracker.sweep_run()
    runs = {name: tracker.trial_run(parent, name, {"lr": 1e-4}) for name in ("trial-000",
                                                                               "trial-001")}
    tracker.end(runs["trial-000"])  # seen to complete
    for name in runs:
        write_ingredient(tmp_path / "ingredients" / name, {"w": torch.ones(2)},
                         {"kind": "ingredient", "name": name})
    assert run_sweep(cfg, tmp_path, tracker, parent) == ["trial-000", "trial-001"]
    late = tracker.client.get_run(runs["trial-001"])
    assert late.info.status == "FINISHED"
    assert late.data.tags["raysoup.ingredient"] == "ingredients/trial-001"


def test_champion_is_the_best_heldout_soup_of_the_current_candidate_set(tmp_path):
    """Versions are made once per run; `champion` goes to the best held-out version among the
    soups of the candidate set given (a replaced set's soups do not compete), never by test."""
    from raysoup.tracking import CHAMPION

    tracker = Tracker(default_uri(tmp_path), "exp", artifact_root=tmp_path / "art",
                      workdir=tmp_path)
    parent = tracker.sweep_run()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    versions = {}
    for recipe, soup_id, heldout, test in (("old", "set-1", 0.99, 0.99),
                                           ("uniform", "set-2", 0.90, 0.95),
                                           ("greedy", "set-2", 0.93, 0.91)):
        run = tracker.soup_run(parent, recipe, ["t"], [1.0], {}, [], identity=soup_id)
        model_id = tracker.log_model(run, recipe, model_dir)
        assert tracker.log_model(run, recipe, model_dir) == model_id  # once per run
        tags = {"raysoup.soup_id": soup_id, "heldout": heldout, "test": test}
        versions[recipe] = tracker.register("exp", model_id, run, tags)
        assert tracker.register("exp", model_id, run, tags) == versions[recipe]
    assert tracker.crown("exp", "set-2") == versions["greedy"]
    assert tracker.client.get_model_version_by_alias("exp", CHAMPION).version == \
        versions["greedy"]
    assert tracker.crown("exp") == versions["old"]  # without a set: every soup competes
    assert len(tracker.client.search_model_versions("name = 'exp'")) == 3


def test_new_sqlite_store_is_seeded_like_one_mlflow_builds(tmp_path, monkeypatch):
    """A new workdir's store is a copy of an empty migrated template (MLflow replays its
    migrations for a new database: ~2 s each time): same schema and version as a database
    MLflow built, its own Default experiment, and an existing store is never replaced."""
    import sqlite3
    from contextlib import closing

    from mlflow.tracking import MlflowClient

    from raysoup.storage import CACHE_ENV
    from raysoup.tracking import seed_sqlite_store

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))

    def schema(db):
        # Each object's DDL as a set of lines: two databases MLflow built itself may list a
        # table's constraints in another order (its batch migrations copy tables).
        with closing(sqlite3.connect(db)) as con:
            rows = con.execute("SELECT type, name, sql FROM sqlite_master "
                               "WHERE name NOT LIKE 'sqlite_%'")
            ddl = {(kind, name): frozenset(line.strip().rstrip(",") for line in sql.splitlines())
                   for kind, name, sql in rows}
            return ddl, con.execute("SELECT version_num FROM alembic_version").fetchall()

    built = tmp_path / "built" / "mlflow.db"
    built.parent.mkdir()
    MlflowClient(f"sqlite:///{built}").search_experiments()  # MLflow's own way
    seeded = tmp_path / "seeded" / "mlflow.db"
    tracker = Tracker(default_uri(seeded.parent), "exp")
    parent = tracker.sweep_run({"experiment": "exp"})
    assert list((tmp_path / "cache" / "raysoup-mlflow").glob("empty-*.db"))  # the template
    assert schema(seeded) == schema(built)
    names = sorted(e.name for e in tracker.client.search_experiments())
    assert names == ["Default", "exp"]
    # Seeding again (a second Tracker, another process) keeps the store and its runs.
    seed_sqlite_store(seeded)
    assert Tracker(default_uri(seeded.parent), "exp").sweep_run() == parent
    # The template itself holds no rows but its schema version.
    template = next((tmp_path / "cache" / "raysoup-mlflow").glob("empty-*.db"))
    with closing(sqlite3.connect(template)) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                            "AND name NOT LIKE 'sqlite_%'")]
        counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    assert counts.pop("alembic_version") == 1 and set(counts.values()) == {0}


def test_unwritable_cache_root_leaves_the_store_to_mlflow(tmp_path, monkeypatch):
    from raysoup.storage import CACHE_ENV

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # a file where a directory must be
    tracker = Tracker(default_uri(tmp_path / "work"), "exp")
    parent = tracker.sweep_run({"experiment": "exp"})
    assert Tracker(default_uri(tmp_path / "work"), "exp").sweep_run() == parent


def test_a_moved_workdir_keeps_its_artifacts(tmp_path):
    """MLflow stores absolute file: URIs; the workdir's own store follows a moved workdir:
    run artifacts, logged models and registered versions resolve at the new place."""
    import shutil
    from pathlib import Path
    from urllib.parse import unquote, urlsplit

    old, new = tmp_path / "old" / "work", tmp_path / "new" / "work"
    tracker = Tracker(default_uri(old), "exp", artifact_root=old / "mlartifacts", workdir=old)
    parent = tracker.sweep_run()
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"recipe": "greedy"}')
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    soup = tracker.soup_run(parent, "greedy", ["t"], [1.0], {}, [recipe])
    model_id = tracker.log_model(soup, "greedy_soup", model_dir)
    version = tracker.register("exp", model_id, soup, {"heldout": 0.5})
    new.parent.mkdir()
    shutil.move(old, new)

    moved = Tracker(default_uri(new), "exp", artifact_root=new / "mlartifacts", workdir=new)
    client = moved.client
    assert client.get_run(soup).info.artifact_uri.startswith((new / "mlartifacts").as_uri())
    got = client.download_artifacts(soup, "recipe.json", str(tmp_path))
    assert Path(got).read_text() == '{"recipe": "greedy"}'
    location = client.get_logged_model(model_id).artifact_location
    assert location.startswith((new / "mlartifacts").as_uri())
    assert (Path(unquote(urlsplit(location).path)) / "MLmodel").is_file()
    assert client.get_model_version("exp", version).source == location
    # A second opening finds nothing to rewrite; new runs land in the new place.
    again = Tracker(default_uri(new), "exp", workdir=new)
    run = again.soup_run(parent, "uniform", ["t"], [1.0], {}, [recipe])
    assert (new / "mlartifacts").as_uri() in again.client.get_run(run).info.artifact_uri
    assert not old.exists()  # nothing written at the old place
