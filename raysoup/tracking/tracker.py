"""MLflow runs of a raysoup workdir: the sweep, its trials and the soups, and their models
(finding and writing single runs: `store`; logged models and the registry: `models`).

Runs are addressed by explicit ids through `MlflowClient` (no global "active run"), and every
run carries a raysoup tag (sweep / trial name / soup recipe and identity) so that a resumed
stage finds and reuses its run instead of creating a duplicate. Runs are also tagged with
their workdir's id: workdirs that share a tracking store (a server, one SQLite file) and an
experiment name never find, reuse or append to each other's runs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mlflow.exceptions import MlflowException

from raysoup import storage
from raysoup.tracking.comparison import (
    VIEW_TAG,
    ModelMetrics,
    best_single_model,
    comparison_view,
    model_metrics,
)
from raysoup.tracking.models import ModelRegistry
from raysoup.tracking.store import KIND, MODEL, RECIPE, ROLE, SOUP_ID, TRIAL, WORKDIR, WORKDIR_ID
from raysoup.workdir import Workdir

log = logging.getLogger(__name__)
T = TypeVar("T")
# What a tracking store that cannot be reached raises: MLflow's error once its retries are
# spent, or the connection's (requests' errors are OSErrors).
UNREACHABLE = (MlflowException, OSError)


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached; the message says what to do."""


def _same(logged: float | None, value: float) -> bool:
    """A logged metric already holds `value` (NaN, an empty split's accuracy, included)."""
    return logged is not None and (logged == value or (math.isnan(logged) and math.isnan(value)))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def default_uri(workdir: Path) -> str:
    return f"sqlite:///{Workdir(workdir).mlflow_db.absolute()}"


def workdir_id(workdir: Path) -> str:
    """A stable id of a workdir's location: its URI for a remote workdir (the same on every
    machine), its absolute path otherwise."""
    where = storage.display(Path(workdir).absolute())
    return hashlib.sha256(where.encode()).hexdigest()[:16]


class Tracker(ModelRegistry):
    """Sweep parent run, one child run per trial, one run per soup, report artifacts
    (finding and writing runs: store.RunStore; logged models and the registry: models.py)."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None,
                 workdir: Path | None = None):
        """`workdir`: the runs are this workdir's (found by its id); None: every run of the
        experiment counts (a store nothing else writes to)."""
        super().__init__(
            uri, experiment, artifact_root,
            scope={} if workdir is None else {WORKDIR_ID: workdir_id(workdir)},
            labels={} if workdir is None else {
                WORKDIR: storage.display(Path(workdir).absolute())},
            # The workdir's own SQLite store: runs it holds from before runs carried a
            # workdir id can only be this workdir's, so they are adopted, not duplicated.
            adopt_untagged=workdir is not None and uri == default_uri(workdir))
        self.offline: str | None = None  # why the sweep's tracking calls are skipped

    # ------------------------------------------------------------------ sweep and trials

    def sweep_run(self, params: Mapping[str, Any] | None = None) -> str:
        try:
            run_id = self._get_or_create({ROLE: "sweep"}, "sweep", None)
            if params and not self.client.get_run(run_id).data.params:
                self.log_params(run_id, params)
            tags = self.client.get_experiment(self.experiment_id).tags
            if VIEW_TAG not in tags:  # the runs table's comparison view (a user's is kept)
                self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, comparison_view())
        except UNREACHABLE as err:
            raise self.unavailable(err, "the sweep's run") from err
        return run_id

    def sweep_run_id(self) -> str | None:
        """This workdir's sweep run, found (never created, nor set RUNNING again)."""
        return self._find({ROLE: "sweep"})

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

    def close_trial_runs(self, finished: list[str], diverged: list[str],
                         parent: str | None = None,
                         params_of: Callable[[str], Mapping[str, Any]] | None = None
                         ) -> list[str]:
        """End the runs of trials whose outcome is on disk (an ingredient, or a diverged
        marker) but whose run is still RUNNING: a driver killed while a trial wrote its
        ingredient never saw it complete, and a resumed sweep that finds every ingredient
        present does not run Tune again. With `parent`, a trial that has no run at all (it
        ran while the tracking server was down) gets one, with `params_of(trial)` as its
        params. Returns the trials closed. TrackingUnavailable if the store cannot be
        reached: nothing is lost, the next run of the command catches up."""
        closed = []
        try:
            for names, is_diverged in ((finished, False), (diverged, True)):
                for name in names:
                    run_id = self._find({TRIAL: name})
                    if run_id is None and parent is not None:
                        run_id = self.trial_run(parent, name,
                                                params_of(name) if params_of else {})
                    elif run_id is None or \
                            self.client.get_run(run_id).info.status != "RUNNING":
                        continue
                    self.end_trial(run_id, name, is_diverged)
                    closed.append(name)
        except UNREACHABLE as err:
            raise self.unavailable(err, "the sweep's trial runs") from err
        self.offline = None
        return closed

    # ------------------------------------------------------------------ a store that fails

    def during_sweep(self, what: str, call: Callable[..., T], *args: Any) -> T | None:
        """`call(*args)`, from Tune's loop: a tracking store that fails (a tracking server
        down) must not abort the sweep (an exception from a Tune callback does), and must not
        stall every step with MLflow's retries. After the first failure the sweep's tracking
        calls are skipped; `close_trial_runs` at the sweep's end catches the trial runs up.
        Returns None for a call that failed or was skipped."""
        if self.offline is not None:
            return None
        try:
            return call(*args)
        except UNREACHABLE as err:
            self.offline = _first_line(err)
            log.warning("mlflow: %s failed: %s. The sweep goes on; its trial runs catch up "
                        "when it ends (their per-epoch metrics from now on are not logged)",
                        what, self.offline)
            return None

    def unavailable(self, err: BaseException, what: str) -> TrackingUnavailable:
        where = self.labels.get(WORKDIR, "the workdir")
        return TrackingUnavailable(
            f"MLflow tracking at {self.uri} cannot be reached ({_first_line(err)}) to log "
            f"{what}. Nothing is lost: the ingredients, soups and results are in {where}. "
            "Once the tracking server is back, run the same command again (or `raysoup "
            "resume`): the runs catch up.")

    # ------------------------------------------------------------------ soups and report

    def soup_run(self, parent: str, recipe: str, ingredients: list[str], weights: list[float],
                 metrics: Mapping[str, float], artifacts: list[Path],
                 params: Mapping[str, Any] | None = None, identity: str = "",
                 before_end: Callable[[str], None] | None = None, model: str = "",
                 cooked: tuple[float, float] | None = None) -> str:
        """One run per cooked soup: `identity` (the soup's candidate set) tells a soup cooked
        again from other ingredients from a re-run of the same one; `metrics`: its
        `comparison.model_metrics`; `model`: its results.parquet name. `before_end(run_id)`
        (logging the soup's model) runs before the run is FINISHED: a finished run has it.
        `cooked`: (start, end) of the cooking in seconds since the epoch, where this driver
        cooked it: a new run spans the cooking, and `cook_seconds` is its length (the run is
        created after the soup evaluation; its own duration would be logging time)."""
        key = {RECIPE: recipe, SOUP_ID: identity} if identity else {RECIPE: recipe}
        existing = self._find(key)
        if existing and self.client.get_run(existing).info.status == "FINISHED":
            # A re-run of a cooked soup logs nothing twice; what was turned on since
            # (tracking.log_models, tracking.register) catches up on the finished run.
            if model:
                self.set_tags(existing, {MODEL: model})
            if before_end is not None:
                before_end(existing)
            return existing
        run_id = self._get_or_create(key, f"soup-{recipe}", parent,
                                     start_ms=int(cooked[0] * 1000) if cooked else None)
        if not self.client.get_run(run_id).data.params:
            self.log_params(run_id, {"recipe": recipe, "num_ingredients": len(ingredients),
                                     "ingredients": ",".join(ingredients)[:6000],
                                     **(params or {})})
            self.log_datasets(run_id)
        if model:
            self.set_tags(run_id, {MODEL: model})
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        if before_end is not None:
            before_end(run_id)
        # After the model: the metrics are the logged model's too.
        extra = {"cook_seconds": cooked[1] - cooked[0]} if cooked else {}
        self.log_metrics(run_id, {**metrics, **extra}, model_id=self.model_of(run_id))
        self.end(run_id, end_ms=int(cooked[1] * 1000) if cooked else None)
        return run_id

    # ------------------------------------------------------------------ every model

    def model_run_id(self, parent: str, entry: ModelMetrics) -> str | None:
        """The run that holds a model of results.parquet: its trial's or soup's run; the
        zero-shot model and an imported ingredient (no trial) get a run of their own."""
        if entry.kind == "ingredient" and (run_id := self._find({TRIAL: entry.model})):
            return run_id
        if entry.kind in ("soup", "ensemble"):
            key = {MODEL: entry.model, **({SOUP_ID: entry.soup_id} if entry.soup_id else {})}
            return self._find(key)  # None until the soup stage publishes it
        run_id = self._find({MODEL: entry.model, KIND: entry.kind})
        if run_id is None:
            run_id = self._get_or_create({MODEL: entry.model, KIND: entry.kind}, entry.model,
                                         parent)
            self.log_datasets(run_id)
            self.end(run_id)
        return run_id

    def log_results(self, parent: str, table, labels=None) -> int:
        """Every model's `comparison.model_metrics` (results.parquet `table`; `labels` of a
        two-class task add F1 and MCC) on its run, and on the run's logged model; only what
        changed is logged, so calling it after every stage adds no duplicate points. Returns
        the number of runs written to."""
        best = best_single_model(table)
        if best is not None:
            self.set_tags(parent, {"raysoup.best_single": best})
        written = 0
        for entry in model_metrics(table, labels).values():
            run_id = self.model_run_id(parent, entry)
            if run_id is None:
                continue
            run = self.client.get_run(run_id)
            tags = {KIND: entry.kind, MODEL: entry.model}
            if entry.kind == "ingredient":
                tags["raysoup.best_single"] = str(entry.model == best).lower()
            if any(run.data.tags.get(k) != v for k, v in tags.items()):
                self.set_tags(run_id, tags)
            model_id = self.model_of(run_id)
            have = run.data.metrics
            if model_id is not None and not self.client.get_logged_model(model_id).metrics:
                have = {}  # logged after its run's metrics: the model gets them all
            changed = {k: v for k, v in entry.metrics.items() if not _same(have.get(k), v)}
            if changed:
                self.log_metrics(run_id, changed, model_id=model_id)
                written += 1
        return written


def quiet() -> None:
    """MLflow logs alembic migrations at INFO on first use of a SQLite store, and draws a
    progress bar for every model directory it copies (each logged model, twice)."""
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
