"""Logged MLflow Models of a workdir's runs and their registered versions: one model per run,
one version per run, and the `champion` alias on the best soup by held-out accuracy."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from raysoup.faults import failpoint
from raysoup.tracking.store import WORKDIR_ID, RunStore

log = logging.getLogger(__name__)

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

    def _unfinished_model(self, run_id: str, name: str):
        """The run's logged model `name` that a killed `log_model` left PENDING (or FAILED):
        created, its upload not finished."""
        found = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{run_id}'")
        return next((m for m in found if m.name == name
                     and not str(m.status).endswith("READY")), None)

    def log_model(self, run_id: str, name: str, model_dir: Path,
                  params: Mapping[str, Any] | None = None) -> str:
        """An MLflow Model directory as the run's logged model (MLflow 3: `models:/<id>`);
        once per run: a resumed run's READY model is reused, and one a killed upload left
        PENDING is completed (its files uploaded again), not duplicated. Returns its id."""
        if known := self.model_of(run_id):
            return known
        model = self._unfinished_model(run_id, name) or self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=run_id,
            params={k: str(v) for k, v in (params or {}).items()},
            tags={**self.scope}, model_type="raysoup-classifier")
        failpoint("tracking.model_created")
        self.client.log_model_artifacts(model.model_id, str(model_dir))
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        self.set_tags(run_id, {MODEL_ID: model.model_id})
        return model.model_id

    def register(self, name: str, model_id: str, run_id: str, tags: Mapping[str, Any],
                 description: str = "") -> str:
        """A version of registered model `name` for the run's logged model, made once: a
        re-run or resumed run finds the version by its run id. Returns the version."""
        for version in self.client.search_model_versions(f"run_id = '{run_id}'"):
            if version.name == name:
                self._link(model_id, name, version.version)  # a kill may have come between
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
            tags={k: str(v) for k, v in {**tags, **self.scope}.items()},
            description=description)
        self._link(model_id, name, version.version)
        return version.version

    def _link(self, model_id: str, name: str, version: str | int) -> None:
        """The logged model's link to its registered version (MLflow's UI reads the tag
        `mlflow.modelVersions`; `mlflow.register_model` sets it, the client call does not)."""
        tags = self.client.get_logged_model(model_id).tags
        linked = json.loads(tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        entry = {"name": name, "version": version}  # as `mlflow.register_model` writes it
        if not any((e.get("name"), str(e.get("version"))) == (name, str(version))
                   for e in linked):
            self.client.set_logged_model_tags(
                model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*linked, entry])})

    def own_alias(self) -> str:
        """This workdir's own alias on a shared registered model: `champion-<8 hex of its
        workdir id>` (`champion` without a workdir)."""
        scope = self.scope.get(WORKDIR_ID)
        return f"{CHAMPION}-{scope[:8]}" if scope else CHAMPION

    def crown(self, name: str, soup_id: str | None = None, metric: str = "heldout"
              ) -> str | None:
        """Point this workdir's aliases of registered model `name` at its version with the
        highest `metric` tag (held-out accuracy: never test) among the soups cooked from
        candidate set `soup_id` (the current one: soups of a replaced set do not compete);
        returns that version.

        Aliases, when workdirs share a registered model (one tracking server, one experiment):
        `champion-<id>` (`own_alias`) is always this workdir's; `champion` belongs to the
        workdir that set it first and only that workdir moves it (held-out sets of two
        workdirs need not be the same images, so their soups are not ranked against each
        other). A workdir whose `champion` version was deleted frees the alias."""
        scope = self.scope.get(WORKDIR_ID)
        versions = [v for v in self.client.search_model_versions(f"name = '{name}'")
                    if metric in v.tags and (scope is None or v.tags.get(WORKDIR_ID) == scope)
                    and (soup_id is None or v.tags.get("raysoup.soup_id") == soup_id)]
        if not versions:
            return None
        best = max(versions, key=lambda v: (float(v.tags[metric]), -int(v.version)))
        if scope is not None:
            self.client.set_registered_model_alias(name, self.own_alias(), best.version)
        holder = self._alias_holder(name)
        if scope is None or holder in (None, "", scope):  # "": a version from before ids
            self.client.set_registered_model_alias(name, CHAMPION, best.version)
        else:
            log.warning("mlflow: %s@%s belongs to another workdir sharing the registered "
                        "model; this workdir's best soup is %s@%s (set "
                        "tracking.registered_model to give it a model of its own)",
                        name, CHAMPION, name, self.own_alias())
        return best.version

    def _alias_holder(self, name: str) -> str | None:
        """The workdir id of the version alias `champion` points at ("" for a version from
        before versions carried one; None: the alias is not set)."""
        try:
            version = self.client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            return None
        return version.tags.get(WORKDIR_ID, "")
