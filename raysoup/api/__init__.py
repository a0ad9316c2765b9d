"""raysoup's Python API (docs/python-api.md): what the CLI does, as functions.

- `run(config, workdir=None, overrides=(), stages=None)`: the pipeline (or some of its stages)
  on an experiment, returning the results table;
- `soup_checkpoints(paths, method="uniform", out=...)`: a soup of checkpoint files, cooked
  locally (no workdir, no Ray).

Both modules import their heavy dependencies inside the functions: importing this package is
cheap (the CLI imports it before parsing its arguments).
"""

from raysoup.api.checkpoint_soup import SCORED_METHODS, SoupCheckpointsError, soup_checkpoints
from raysoup.api.experiment import STAGES, execute, load_config, run

__all__ = ["SCORED_METHODS", "STAGES", "SoupCheckpointsError", "execute", "load_config", "run",
           "soup_checkpoints"]
