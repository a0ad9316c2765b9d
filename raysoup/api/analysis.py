"""`raysoup.analyze`: the paper's analyses of a finished workdir (docs/analysis.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from raysoup.api.experiment import load_config

if TYPE_CHECKING:
    from raysoup.config import ExperimentCfg

# = orchestration.analyses.ANALYSES (not imported here: it loads Ray)
ANALYSES = ("landscape", "angles", "soup-vs-ensemble", "transfer")
log = logging.getLogger("raysoup")


def analyze(config: str | Path | ExperimentCfg, workdir: str | Path | None = None,
            analyses: Iterable[str] | None = None, overrides: Iterable[str] = (), *,
            address: str | None = None, points: int = 5, models: list[str] | None = None,
            shift: str | None = None, pair_limit: int | None = None
            ) -> dict[str, tuple[list[Path], list[str]]]:
    """Run `analyses` (default: all four, `ANALYSES`) over the workdir of `config` (default:
    the config's) and return {analysis: (files written, one-line findings)}. The tables and
    figures land in WORKDIR/report/analysis/; finished evaluations are journaled in
    WORKDIR/analysis/, so a rerun (or a killed one's rerun) computes only what is missing.

    `points`: the landscape grid's points per axis (odd: the models and their soup lie on it);
    `models`: its two fine-tuned ingredients (default: the best two on held-out); `shift`: its
    shift set (default: the first over every class); `pair_limit`: pairs only among the best
    that many ingredients on held-out (angles, soup vs ensemble: N(N − 1)/2 pairs)."""
    from raysoup.analysis.transfer import transfer_unavailable
    from raysoup.orchestration.analyses import run_analysis

    cfg = load_config(config, overrides)
    where = cfg.resolved_workdir(None if workdir is None else str(workdir))
    wanted = tuple(ANALYSES if analyses is None else
                   ((analyses,) if isinstance(analyses, str) else analyses))
    why_not = transfer_unavailable(cfg) if "transfer" in wanted else None
    if why_not and analyses is not None:
        raise ValueError(why_not)
    if why_not:  # all four by default: the three that apply run
        log.warning("analyze: %s; left out", why_not)
        wanted = tuple(a for a in wanted if a != "transfer")
    outcomes = run_analysis(cfg, where, wanted, address=address, points=points, models=models,
                            shift=shift, pair_limit=pair_limit)
    return {name: (o.files, o.findings)
            for name, o in zip(dict.fromkeys(wanted), outcomes, strict=True)}
