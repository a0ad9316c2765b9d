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
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from raysoup import storage
from raysoup.tracking.models import ModelRegistry
from raysoup.tracking.store import RECIPE, ROLE, SOUP_ID, TRIAL, WORKDIR, WORKDIR_ID
from raysoup.workdir import Workdir


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

    # ------------------------------------------------------------------ sweep and trials

    def sweep_run(self, params: Mapping[str, Any] | None = None) -> str:
        run_id = self._get_or_create({ROLE: "sweep"}, "sweep", None)
        if params and not self.client.get_run(run_id).data.params:
            self.log_params(run_id, params)
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


def quiet() -> None:
    """MLflow logs alembic migrations at INFO on first use of a SQLite store, and draws a
    progress bar for every model directory it copies (each logged model, twice)."""
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
