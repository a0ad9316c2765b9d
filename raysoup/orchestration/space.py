"""The sweep's search space as Ray Tune's, and a trial's hyper-parameters from its sample."""

from __future__ import annotations

from typing import Any

from ray import tune

from raysoup.config import Choice, ExperimentCfg, LogUniform, RandInt, TrainHParams, Uniform


def param_space(space: dict[str, Any], grid: bool = False) -> dict[str, Any]:
    """Tune's search space; `grid`: every `choice` becomes a grid dimension."""
    out: dict[str, Any] = {}
    for name, dist in space.items():
        if isinstance(dist, LogUniform):
            out[name] = tune.loguniform(*dist.loguniform)
        elif isinstance(dist, Uniform):
            out[name] = tune.uniform(*dist.uniform)
        elif isinstance(dist, RandInt):
            out[name] = tune.randint(*dist.randint)
        elif isinstance(dist, Choice):
            out[name] = tune.grid_search(dist.choice) if grid else tune.choice(dist.choice)
        else:
            out[name] = dist
    return out


def tune_space(cfg: ExperimentCfg) -> dict[str, Any]:
    """The sweep's Tune param space (under search: grid, the choices are grid dimensions)."""
    return param_space(cfg.sweep.space, grid=cfg.sweep.search == "grid")


def hparams_for(cfg: ExperimentCfg, sampled: dict[str, Any]) -> TrainHParams:
    return TrainHParams.model_validate({**cfg.sweep.base.model_dump(), **sampled})
