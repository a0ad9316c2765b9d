"""`raysoup.run`: an experiment's pipeline from Python; the CLI's stage commands call it too."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from raysoup.config import ExperimentCfg
    from raysoup.orchestration.pipeline import Run

# The pipeline's stages in the order they run (= orchestration.pipeline.STAGES, not imported
# here: it loads Ray).
STAGES = ("sweep", "evaluate", "soup", "report")


def load_config(config: str | Path | ExperimentCfg,
                overrides: Iterable[str] = ()) -> ExperimentCfg:
    """An `ExperimentCfg` from a YAML path or an existing config, with `KEY.PATH=VALUE`
    overrides applied (as `--set` does). Raises `raysoup.config.ConfigError` naming the file or
    the override a bad value came from."""
    from raysoup.config import ExperimentCfg, load_experiment, revalidate

    overrides = list(overrides)
    if isinstance(config, ExperimentCfg):
        return revalidate(config, overrides) if overrides else config
    return load_experiment(config, overrides)


def _stages(stages: Iterable[str] | None) -> tuple[str, ...]:
    if stages is None:
        return STAGES
    wanted = (stages,) if isinstance(stages, str) else tuple(stages)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown or not wanted:
        raise ValueError(f"stages {list(wanted)}: choose from {list(STAGES)}")
    return tuple(s for s in STAGES if s in wanted)  # the pipeline's order, whatever was given


def execute(cfg: ExperimentCfg, workdir: str | Path | None = None,
            stages: Iterable[str] | None = None, *, address: str | None = None,
            metrics_export_port: int | None = None, dashboard: bool = False) -> Run:
    """Run `stages` of `cfg` in `workdir` (default: the config's) and return the finished
    pipeline (`Run`: its results path, `summary()`, stage timings)."""
    from raysoup.orchestration.pipeline import run_pipeline

    where = cfg.resolved_workdir(None if workdir is None else str(workdir))
    return run_pipeline(cfg, where, _stages(stages), address=address,
                        metrics_export_port=metrics_export_port, dashboard=dashboard)


def run(config: str | Path | ExperimentCfg, workdir: str | Path | None = None,
        overrides: Iterable[str] = (), stages: Iterable[str] | None = None, *,
        address: str | None = None) -> pa.Table:
    """Run the experiment (`config`: a YAML path or an `ExperimentCfg`) and return its results
    table: a `pyarrow.Table` with one row per (model, split): model, kind, split, correct, n,
    accuracy, soup_id (`table.to_pandas()` for a DataFrame).

    `stages`: a subset of ("sweep", "evaluate", "soup", "report"), run in that order (default:
    all); a workdir resumes where it stopped, as `raysoup run` does. `address`: join a running
    Ray cluster instead of starting a local one."""
    from raysoup.evaluate.results import read_results

    done = execute(load_config(config, overrides), workdir, stages, address=address)
    return read_results(done.results_path)
