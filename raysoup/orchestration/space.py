"""The sweep's search space as Ray Tune's, and a trial's hyper-parameters from its sample."""

from __future__ import annotations

from typing import Any

from ray import tune

from raysoup.config import ExperimentCfg, TrainHParams
from raysoup.search.distributions import as_dist


def param_space(space: dict[str, Any], grid: bool = False) -> dict[str, Any]:
    """Tune's search space; `grid`: every `choice` becomes a grid dimension."""
    return {name: as_dist(dist).to_tune(tune, grid) for name, dist in space.items()}


def tune_space(cfg: ExperimentCfg) -> dict[str, Any]:
    """The sweep's Tune param space (under search: grid, the choices are grid dimensions)."""
    return param_space(cfg.sweep.space, grid=cfg.sweep.search == "grid")


def hparams_for(cfg: ExperimentCfg, sampled: dict[str, Any]) -> TrainHParams:
    return TrainHParams.model_validate({**cfg.sweep.base.model_dump(), **sampled})
