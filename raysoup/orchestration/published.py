"""Soups that leave the run: each weight soup (and the best single model) logged as an MLflow
Model on its run, every soup a version of one registered model per experiment, tagged with
its lineage and accuracies, and the alias `champion` on the best soup by held-out accuracy.

Everything here is once per run and resumable: a run's logged model is found by its tag, a
version by its run id (tracking.py)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from raysoup.evaluate.cache import CachedImages
from raysoup.export import ModelInfo, export_open_clip
from raysoup.faults import failpoint
from raysoup.models.family import MlflowModelSpec
from raysoup.tracking import Tracker, save_pyfunc, save_text_pyfunc
from raysoup.workdir import SoupRecord

log = logging.getLogger(__name__)

EXAMPLE_IMAGES = 2


def example_images(cached: CachedImages, n: int = EXAMPLE_IMAGES) -> np.ndarray:
    """uint8 [n, S, S, 3]: the input example an MLflow Model records, from a split's eval
    cache (decoded and resized once already: no image is decoded again)."""
    return np.ascontiguousarray(cached.shard(0)[:n].transpose(0, 2, 3, 1))


def mean_shift(accuracies: dict[str, float]) -> float | None:
    shifts = [v for k, v in accuracies.items() if k not in ("heldout", "test")]
    return float(np.mean(shifts)) if shifts else None


def version_description(record: SoupRecord, accuracies: dict[str, float]) -> str:
    """A registered version's description (Markdown, shown on its page): recipe, ingredients
    with their weights, held-out / test / mean-shift accuracy."""
    weights = record.weights or [1 / len(record.ingredients)] * len(record.ingredients)
    members = ", ".join(f"{n} ({w:.3g})" for n, w in zip(record.ingredients, weights,
                                                          strict=False))
    shift = mean_shift(accuracies)
    scores = [f"{label} {100 * accuracies[k]:.2f} %" for k, label in
              (("heldout", "held-out"), ("test", "test")) if k in accuracies]
    scores += [f"mean shift {100 * shift:.2f} %"] if shift is not None else []
    return (f"**{record.name}**: recipe `{record.recipe}` over {len(record.ingredients)} "
            f"ingredient(s): {members}.\n\nAccuracy: {', '.join(scores) or 'not evaluated'}.")


class Publisher:
    """Logs and registers models for one run of the pipeline (one base model, one tracker)."""

    def __init__(self, tracker: Tracker, info: ModelInfo,
                 load_base: Callable[[], dict[str, torch.Tensor]], example: np.ndarray,
                 registered_model: str | None, mlflow: MlflowModelSpec):
        """`load_base`: the base CLIP's state dict, loaded once if a model is logged at all
        (a resumed run whose soups are all logged never loads it); `mlflow`: the model
        family's MLflow spec (`family_of(cfg.model).mlflow`)."""
        self.tracker, self.info, self._load_base = tracker, info, load_base
        self.example, self.registered_model = example, registered_model
        self.mlflow = mlflow

    @functools.cached_property
    def base_state(self) -> dict[str, torch.Tensor]:
        return self._load_base()

    def log(self, run_id: str, model_dir: Path, name: str, extra: dict) -> str:
        """`model_dir` (a soup or an ingredient) as the run's MLflow Model; its model id."""
        if known := self.tracker.model_of(run_id):
            return known
        info = dataclasses.replace(self.info, extra={**self.info.extra, **extra})
        with tempfile.TemporaryDirectory(prefix="raysoup-model-") as tmp:
            export = export_open_clip(model_dir, info, self.base_state, Path(tmp) / "open_clip")
            saved = save_pyfunc(export, info, Path(tmp) / "model", self.example,
                                spec=self.mlflow)
            params = {k: v for k, v in extra.items() if isinstance(v, str | int | float)}
            model_id = self.tracker.log_model(run_id, name, saved, params)
        log.info("mlflow: %s logged as models:/%s", name, model_id)
        return model_id

    def soup(self, run_id: str, soup_dir: Path, record: SoupRecord,
             accuracies: dict[str, float]) -> None:
        """Log a weight soup's model and register it (with its lineage) as a version."""
        name = record.name
        extra = {"model": name, "recipe": record.recipe, "ingredients": record.ingredients,
                 "weights": record.weights, "accuracy": accuracies}
        model_id = self.log(run_id, soup_dir, name, extra)
        failpoint("publish.logged")  # killed here, a resumed run registers the version once
        if not self.registered_model:
            return
        runs = {n: self.tracker.trial_run_id(n) for n in record.ingredients}
        tags = {"raysoup.recipe": record.recipe, "raysoup.soup_id": record.soup_id or "",
                "raysoup.ingredients": ",".join(record.ingredients)[:4000],
                # Lineage: the trial runs whose ingredients are in the soup.
                "raysoup.ingredient_runs": ",".join(r for r in runs.values() if r)[:4000],
                **{k: f"{v:.6f}" for k, v in accuracies.items() if k in ("heldout", "test")}}
        if (shift := mean_shift(accuracies)) is not None:
            tags["mean_shift"] = f"{shift:.6f}"
        version = self.tracker.register(self.registered_model, model_id, run_id, tags,
                                        description=version_description(record, accuracies))
        log.info("mlflow: %s registered as %s version %s", name, self.registered_model, version)

    def crown(self, soup_id: str | None = None) -> None:
        """The champion among this workdir's soups of candidate set `soup_id`."""
        if self.registered_model:
            version = self.tracker.crown(self.registered_model, soup_id)
            log.info("mlflow: %s@champion is version %s (best held-out accuracy)",
                     self.registered_model, version)


class TextPublisher(Publisher):
    """A Publisher of hf_text models: each is raysoup's `save_pretrained` export
    (`raysoup.export.hf_dir`) behind the text pyfunc (texts in, labels and probabilities out);
    logging, registering and crowning as for images."""

    def __init__(self, tracker: Tracker, zeroshot: Path, classnames: list[str], pairs: bool,
                 example: list, registered_model: str | None, mlflow: MlflowModelSpec):
        """`zeroshot`: the workdir's zero-shot ingredient (model name, tokenizer, max_length);
        `pairs`: a sentence-pair task; `example`: a few test texts (pairs) as the example."""
        super().__init__(tracker, None, dict, example, registered_model, mlflow)  # no base
        self.zeroshot, self.classnames, self.pairs = Path(zeroshot), classnames, pairs

    def log(self, run_id: str, model_dir: Path, name: str, extra: dict) -> str:
        from raysoup.export.hf_dir import export_text

        if known := self.tracker.model_of(run_id):
            return known
        with tempfile.TemporaryDirectory(prefix="raysoup-model-") as tmp:
            export = export_text(model_dir, self.zeroshot, "hf", Path(tmp) / "hf", extra)
            saved = save_text_pyfunc(export, Path(tmp) / "model", self.classnames, self.pairs,
                                     self.example, spec=self.mlflow,
                                     meta={k: extra[k] for k in ("recipe", "model")
                                           if k in extra})
            params = {k: v for k, v in extra.items() if isinstance(v, str | int | float)}
            model_id = self.tracker.log_model(run_id, name, saved, params)
        log.info("mlflow: %s logged as models:/%s", name, model_id)
        return model_id
