"""raysoup's Python API (docs/python-api.md): what the CLI does, as functions.

- `run(config, workdir=None, overrides=(), stages=None)`: the pipeline (or some of its stages)
  on an experiment, returning the results table;
- `soup_checkpoints(paths, method="uniform", out=..., heldout=None)`: a soup of checkpoint
  files, cooked locally (no workdir, no Ray); `HeldOut(data, model=...)` lets it score
  candidates (greedy, learned, WiSE-FT, a λ grid);
- `analyze(config, workdir=None, analyses=None)`: the paper's analyses of a finished workdir
  (error landscape, angles, soup vs ensemble, zero-shot transfer; docs/analysis.md).

Its modules import their heavy dependencies inside the functions: importing this package is
cheap (the CLI imports it before parsing its arguments).
"""

from raysoup.api.analysis import ANALYSES, analyze
from raysoup.api.checkpoint_soup import SCORED_METHODS, SoupCheckpointsError, soup_checkpoints
from raysoup.api.experiment import STAGES, execute, load_config, run
from raysoup.api.heldout import HeldOut, HeldOutError

__all__ = ["ANALYSES", "SCORED_METHODS", "STAGES", "HeldOut", "HeldOutError",
           "SoupCheckpointsError", "analyze", "execute", "load_config", "run", "soup_checkpoints"]
