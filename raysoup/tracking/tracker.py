"""MLflow runs of a raysoup workdir: the sweep, its trials and the soups, and their models.

Runs are addressed by explicit ids through `MlflowClient` (no global "active run"), and every
run carries a raysoup tag (sweep / trial name / soup recipe and identity) so that a resumed
stage finds and reuses its run instead of creating a duplicate. Runs are also tagged with
their workdir's id: workdirs that share a tracking store (a server, one SQLite file) and an
experiment name never find, reuse or append to each other's runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import mlflow
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelOutput,
    Metric,
    Param,
    RunStatus,
    RunTag,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from raysoup import storage
from raysoup.atomic import temp_sibling, write_atomic
from raysoup.workdir import Workdir

log = logging.getLogger(__name__)

ROLE = "raysoup.role"
TRIAL = "raysoup.trial"
RECIPE = "raysoup.recipe"
SOUP_ID = "raysoup.soup_id"
WORKDIR = "raysoup.workdir"  # where the run's files are (shown in the UI)
WORKDIR_ID = "raysoup.workdir_id"  # what runs are found by (a tag value safe in a filter)
MODEL_ID = "raysoup.model_id"  # the run's logged MLflow Model
CHAMPION = "champion"  # registered-model alias: the best soup by held-out accuracy


def default_uri(workdir: Path) -> str:
    return f"sqlite:///{Workdir(workdir).mlflow_db.absolute()}"


def workdir_id(workdir: Path) -> str:
    """A stable id of a workdir's location: its URI for a remote workdir (the same on every
    machine), its absolute path otherwise."""
    where = storage.display(Path(workdir).absolute())
    return hashlib.sha256(where.encode()).hexdigest()[:16]


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


class Tracker:
    """Sweep parent run, one child run per trial, one run per soup, report artifacts."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None,
                 workdir: Path | None = None):
        """`workdir`: the runs are this workdir's (found by its id); None: every run of the
        experiment counts (a store nothing else writes to)."""
        self.uri = uri
        self.experiment_name = experiment
        self.artifact_root = artifact_root
        self.scope = {} if workdir is None else {WORKDIR_ID: workdir_id(workdir)}
        self.labels = {} if workdir is None else {
            WORKDIR: storage.display(Path(workdir).absolute())}
        # The workdir's own SQLite store: runs it holds from before runs carried a workdir id
        # can only be this workdir's, so they are adopted rather than duplicated.
        self.adopt_untagged = workdir is not None and uri == default_uri(workdir)
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
                seed_sqlite_store(Path(self.uri.removeprefix("sqlite:///")))
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

    def _get_or_create(self, tags: Mapping[str, str], name: str, parent: str | None) -> str:
        run_id = self._find(tags)
        if run_id is None:
            tags = {**tags, **self.scope, **self.labels, MLFLOW_RUN_NAME: name}
            if parent:
                tags[MLFLOW_PARENT_RUN_ID] = parent
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id
        else:
            # A resumed run is RUNNING again until it ends; never a second run.
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run_id

    # ------------------------------------------------------------------ sweep and trials

    def sweep_run(self, params: Mapping[str, Any] | None = None) -> str:
        run_id = self._get_or_create({ROLE: "sweep"}, "sweep", None)
        if params and not self.client.get_run(run_id).data.params:
            self.log_params(run_id, params)
        return run_id

    def trial_run(self, parent: str, trial: str, params: Mapping[str, Any]) -> str:
        run_id = self._get_or_create({TRIAL: trial}, trial, parent)
        if not self.client.get_run(run_id).data.params:
            self.log_params(run_id, params)
            self.log_datasets(run_id)
        return run_id

    def trial_run_id(self, trial: str) -> str | None:
        return self._find({TRIAL: trial})

    def end_trial(self, run_id: str, trial: str, diverged: bool) -> None:
        """A trial's outcome on its run: the ingredient it wrote, or that it diverged."""
        self.set_tags(run_id, {"raysoup.status": "diverged"} if diverged else
                      {"raysoup.ingredient": f"ingredients/{trial}"})
        self.end(run_id, ok=not diverged)

    def close_trial_runs(self, finished: list[str], diverged: list[str]) -> list[str]:
        """End the runs of trials whose outcome is on disk (an ingredient, or a diverged
        marker) but whose run is still RUNNING: a driver killed while a trial wrote its
        ingredient never saw it complete, and a resumed sweep that finds every ingredient
        present does not run Tune again. Returns the trials closed."""
        closed = []
        for names, is_diverged in ((finished, False), (diverged, True)):
            for name in names:
                run_id = self._find({TRIAL: name})
                if run_id is None or self.client.get_run(run_id).info.status != "RUNNING":
                    continue
                self.end_trial(run_id, name, is_diverged)
                closed.append(name)
        return closed

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        batch = [Param(k, str(v)) for k, v in sorted(params.items())]
        self.client.log_batch(run_id, params=batch)

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, run_id: str, ok: bool = True) -> None:
        status = RunStatus.FINISHED if ok else RunStatus.FAILED
        self.client.set_terminated(run_id, status=RunStatus.to_string(status))

    # ------------------------------------------------------------------ soups and report

    def soup_run(self, parent: str, recipe: str, ingredients: list[str], weights: list[float],
                 accuracies: Mapping[str, float], artifacts: list[Path],
                 params: Mapping[str, Any] | None = None, identity: str = "",
                 before_end: Callable[[str], None] | None = None) -> str:
        """One run per cooked soup: `identity` (the soup's candidate set) tells a soup cooked
        again from other ingredients from a re-run of the same one. `before_end(run_id)`
        (logging the soup's model) runs before the run is FINISHED: a finished run has it."""
        key = {RECIPE: recipe, SOUP_ID: identity} if identity else {RECIPE: recipe}
        existing = self._find(key)
        if existing and self.client.get_run(existing).info.status == "FINISHED":
            return existing  # a re-run of a cooked soup logs nothing twice
        run_id = self._get_or_create(key, f"soup-{recipe}", parent)
        if not self.client.get_run(run_id).data.params:
            self.log_params(run_id, {"recipe": recipe, "num_ingredients": len(ingredients),
                                     "ingredients": ",".join(ingredients)[:6000],
                                     **(params or {})})
            self.log_datasets(run_id)
        self.log_metrics(run_id, {f"acc_{k}": v for k, v in accuracies.items()})
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        if before_end is not None:
            before_end(run_id)
        self.end(run_id)
        return run_id

    # ------------------------------------------------------------------ models and lineage

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

    def model_of(self, run_id: str) -> str | None:
        """The id of the run's READY logged model (None: none logged, or not completed)."""
        model_id = self.client.get_run(run_id).data.tags.get(MODEL_ID)
        if not model_id:
            return None
        try:
            model = self.client.get_logged_model(model_id)
        except MlflowException:
            return None
        return model_id if str(model.status).endswith("READY") else None

    def log_model(self, run_id: str, name: str, model_dir: Path,
                  params: Mapping[str, Any] | None = None) -> str:
        """An MLflow Model directory as the run's logged model (MLflow 3: `models:/<id>`);
        once per run: a resumed run's READY model is reused. Returns the model id."""
        if known := self.model_of(run_id):
            return known
        model = self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=run_id,
            params={k: str(v) for k, v in (params or {}).items()},
            tags={**self.scope}, model_type="raysoup-classifier")
        self.client.log_model_artifacts(model.model_id, str(model_dir))
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        self.set_tags(run_id, {MODEL_ID: model.model_id})
        return model.model_id

    def register(self, name: str, model_id: str, run_id: str, tags: Mapping[str, Any]) -> str:
        """A version of registered model `name` for the run's logged model, made once: a
        re-run or resumed run finds the version by its run id. Returns the version."""
        for version in self.client.search_model_versions(f"run_id = '{run_id}'"):
            if version.name == name:
                return version.version
        try:
            self.client.create_registered_model(
                name, description="Soups cooked by raysoup; alias `champion`: the best by "
                                  "held-out accuracy.")
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # The model's artifact location, not `models:/<id>`: MLflow resolves that URI with
        # the process-wide tracking URI, not this client's.
        location = self.client.get_logged_model(model_id).artifact_location
        version = self.client.create_model_version(
            name, source=location, run_id=run_id, model_id=model_id,
            tags={k: str(v) for k, v in {**tags, **self.scope}.items()})
        return version.version

    def crown(self, name: str, soup_id: str | None = None, metric: str = "heldout"
              ) -> str | None:
        """Point alias `champion` of registered model `name` at this workdir's version with
        the highest `metric` tag (held-out accuracy: never test) among the soups cooked from
        candidate set `soup_id` (the current one: soups of a replaced set do not compete);
        returns that version."""
        scope = self.scope.get(WORKDIR_ID)
        versions = [v for v in self.client.search_model_versions(f"name = '{name}'")
                    if metric in v.tags and (scope is None or v.tags.get(WORKDIR_ID) == scope)
                    and (soup_id is None or v.tags.get("raysoup.soup_id") == soup_id)]
        if not versions:
            return None
        best = max(versions, key=lambda v: (float(v.tags[metric]), -int(v.version)))
        self.client.set_registered_model_alias(name, CHAMPION, best.version)
        return best.version

    def log_artifacts(self, run_id: str, paths: list[Path], subdir: str | None = None) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path=subdir)

    def runs(self) -> list:
        """All runs of the experiment (tests and summaries)."""
        return self.client.search_runs([self.experiment_id], max_results=10_000)


def quiet() -> None:
    """MLflow logs alembic migrations at INFO on first use of a SQLite store, and draws a
    progress bar for every model directory it copies (each logged model, twice)."""
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
