"""A workdir's MLflow runs at the level of single runs: the store connection, finding a run by
its raysoup tags (scoped to the workdir) or creating it, and writing params, metrics, tags,
dataset inputs and artifacts to it. `Tracker` (tracker.py) builds the sweep's runs on this.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from raysoup import storage
from raysoup.atomic import temp_sibling, write_atomic

log = logging.getLogger(__name__)

ROLE = "raysoup.role"
TRIAL = "raysoup.trial"
RECIPE = "raysoup.recipe"
SOUP_ID = "raysoup.soup_id"
MODEL = "raysoup.model"  # the results.parquet model a run holds
KIND = "raysoup.kind"  # its kind: zeroshot | ingredient | soup | ensemble
WORKDIR = "raysoup.workdir"  # where the run's files are (shown in the UI)
WORKDIR_ID = "raysoup.workdir_id"  # what runs are found by (a tag value safe in a filter)


def is_server(uri: str) -> bool:
    """A remote tracking server (REST), as opposed to a local store (sqlite:, file:, a path)."""
    return uri.split(":", 1)[0].lower() in ("http", "https", "databricks")


def seed_sqlite_store(db: Path) -> None:
    """Start a SQLite store that does not exist yet as a copy of an empty, fully migrated one.

    MLflow builds a new database by replaying every schema migration since its first version
    (~2 s of CPU here, in every new workdir and every test that opens one). The template is
    built that way once per MLflow version in the cache root, then emptied of rows (tables and
    alembic version stay), so that MLflow adds its Default experiment for the new store exactly
    as for a database it created. The copy is linked into place only if `db` still does not
    exist: a store another process created meanwhile is never replaced."""
    if db.exists():
        return
    template = storage.cache_root() / "raysoup-mlflow" / f"empty-{mlflow.__version__}.db"
    if not template.is_file():
        def build(tmp: Path) -> None:
            MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()
            with closing(sqlite3.connect(tmp)) as con:
                tables = [row[0] for row in con.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%' AND name != 'alembic_version'")]
                for table in tables:
                    con.execute(f'DELETE FROM "{table}"')
                con.commit()
        try:
            write_atomic(template, build)
        except (OSError, sqlite3.Error) as e:  # a read-only cache root: MLflow builds the store
            log.debug("no MLflow store template in %s: %s", template.parent, e)
            return
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(db)
    try:
        shutil.copyfile(template, tmp)
        try:
            os.link(tmp, db)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


# Where MLflow's SQL schema keeps artifact locations (file: URIs in a local store).
URI_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
               ("logged_models", "artifact_location"), ("model_versions", "source"),
               ("model_versions", "storage_location"))


def rebase_moved_store(db: Path) -> list[str]:
    """A local workdir's own store after the workdir moved (or was copied): MLflow keeps
    absolute `file:` URIs, so every artifact location under the old `.../mlartifacts` is
    rewritten to the `mlartifacts/` beside `db` now. Only this store's artifact root is
    touched (no other location, no file). Returns the old roots rewritten."""
    if not db.is_file():
        return []
    new = (db.parent / "mlartifacts").absolute().as_uri()
    with closing(sqlite3.connect(db)) as con:
        olds = sorted({loc for (loc,) in con.execute("SELECT artifact_location FROM experiments")
                       if loc and loc.startswith("file:") and loc.endswith("/mlartifacts")}
                      - {new})
        for old in olds:
            for table, column in URI_COLUMNS:
                con.execute(
                    f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '
                    f'WHERE "{column}" = ? OR substr("{column}", 1, ?) = ?',
                    (new, len(old) + 1, old, len(old) + 1, old + "/"))
        con.commit()
    return olds


class RunStore:
    """The runs of one experiment in one tracking store, addressed by explicit run ids."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None,
                 scope: dict[str, str], labels: dict[str, str], adopt_untagged: bool):
        """`scope`: the tags a run must carry to be found (this workdir's id; empty: every run
        of the experiment); `labels`: further tags a new run gets; `adopt_untagged`: a run
        without a workdir id is this store's (and gets tagged when found)."""
        self.uri = uri
        self.experiment_name = experiment
        self.artifact_root = artifact_root
        self.scope = scope
        self.labels = labels
        self.adopt_untagged = adopt_untagged
        # The workdir's own local SQLite store (not a remote workdir's mirror): its artifact
        # locations follow the workdir when it moves (`rebase_moved_store`).
        self.own_local_store = adopt_untagged and uri.startswith("sqlite:///") \
            and not storage.is_remote(Path(uri.removeprefix("sqlite:///")))
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        # Dataset records (data/lineage.py) every trial and soup run gets as MLflow inputs.
        self.datasets: list[dict] = []

    def persist(self) -> None:
        """Copy a local store kept in a remote workdir's mirror (SQLite file, artifacts) to
        the remote, so a driver on another machine resumes with the same runs."""
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///"))
            if storage.is_remote(db) and db.is_file():
                storage.publish(db)
        if self.artifact_root is not None and storage.is_remote(self.artifact_root) \
                and not is_server(self.uri):
            # The experiment's own artifact location: it may be the mirror path of the driver
            # that created it (another machine), which still names the same remote prefix.
            location = self.client.get_experiment(self.experiment_id).artifact_location
            if location.startswith("file:"):
                storage.publish_missing(Path(unquote(urlsplit(location).path)))

    # Picklable: Tune pickles callbacks holding a Tracker; the client is rebuilt lazily.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            if self.uri.startswith("sqlite:///"):
                db = Path(self.uri.removeprefix("sqlite:///"))
                seed_sqlite_store(db)
                if self.own_local_store and (moved := rebase_moved_store(db)):
                    log.info("mlflow: the workdir moved; artifact locations %s now point to "
                             "%s", ", ".join(moved), db.parent / "mlartifacts")
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is not None:
                self._experiment_id = exp.experiment_id
            else:
                # A tracking server places artifacts itself (its --default-artifact-root, or
                # proxied `mlflow-artifacts:/` uploads): a driver-local path would be a file
                # the server and its UI cannot read.
                root = self.artifact_root
                if root is None and self.uri.startswith("sqlite:///"):
                    # MLflow's default is ./mlruns of the current directory: keep a store's
                    # artifacts next to its database instead.
                    root = Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts"
                local = root is not None and not is_server(self.uri)
                location = root.absolute().as_uri() if local else None
                self._experiment_id = self.client.create_experiment(
                    self.experiment_name, artifact_location=location
                )
        return self._experiment_id

    def _search(self, tags: Mapping[str, str], max_results: int) -> list:
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs([self.experiment_id], filter_string=where,
                                       max_results=max_results)

    def _find(self, tags: Mapping[str, str]) -> str | None:
        runs = self._search({**tags, **self.scope}, 1)
        if runs:
            return runs[0].info.run_id
        if self.adopt_untagged:
            untagged = [r for r in self._search(tags, 100) if WORKDIR_ID not in r.data.tags]
            if untagged:
                run_id = untagged[0].info.run_id
                self.set_tags(run_id, {**self.scope, **self.labels})
                return run_id
        return None

    def _get_or_create(self, tags: Mapping[str, str], name: str, parent: str | None,
                       start_ms: int | None = None) -> str:
        run_id = self._find(tags)
        if run_id is None:
            tags = {**tags, **self.scope, **self.labels, MLFLOW_RUN_NAME: name}
            if parent:
                tags[MLFLOW_PARENT_RUN_ID] = parent
            run_id = self.client.create_run(self.experiment_id, start_time=start_ms, tags=tags,
                                            run_name=name).info.run_id
        else:
            # A resumed run is RUNNING again until it ends; never a second run.
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        batch = [Param(k, str(v)) for k, v in sorted(params.items())]
        self.client.log_batch(run_id, params=batch)

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int = 0,
                    model_id: str | None = None) -> None:
        """`model_id`: a logged model of the run the metrics are also the metrics of."""
        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step, model_id=model_id)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, run_id: str, ok: bool = True, end_ms: int | None = None) -> None:
        status = RunStatus.FINISHED if ok else RunStatus.FAILED
        self.client.set_terminated(run_id, status=RunStatus.to_string(status), end_time=end_ms)

    def log_datasets(self, run_id: str, records: list[dict] | None = None) -> None:
        """Dataset records (`data.lineage.split_records`) as the run's MLflow inputs, each
        tagged with its role (mlflow.data.context: train, heldout, test, shift)."""
        records = self.datasets if records is None else records
        if not records:
            return
        inputs = [DatasetInput(
            Dataset(name=r["name"], digest=r["digest"], source_type=r["source_type"],
                    source=json.dumps({"uri": r["uri"]}),
                    profile=json.dumps({"num_rows": r["rows"], **r.get("profile", {})})),
            tags=[InputTag("mlflow.data.context", r["context"])]) for r in records]
        self.client.log_inputs(run_id, datasets=inputs)

    def log_artifacts(self, run_id: str, paths: list[Path], subdir: str | None = None) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path=subdir)

    def runs(self) -> list:
        """All runs of the experiment (tests and summaries)."""
        return self.client.search_runs([self.experiment_id], max_results=10_000)
