"""Logged MLflow Models of a workdir's runs and their registered versions: one model per run,
one version per run, and the `champion` alias on the best soup by held-out accuracy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException

from raysoup.tracking.store import WORKDIR_ID, RunStore

MODEL_ID = "raysoup.model_id"  # the run's logged MLflow Model
CHAMPION = "champion"  # registered-model alias: the best soup by held-out accuracy


class ModelRegistry(RunStore):
    """RunStore + the runs' logged models and the model registry."""

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
