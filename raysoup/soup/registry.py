"""Name → merge method: the one place a method is listed (see `raysoup.soup.base`).

Each method names its settings (`Method.Settings`, a pydantic model declared in
`raysoup.soup_settings`, whose `SECTIONS` table lists them under the same names): the
experiment's `soup.<name>` section is validated against it (`raysoup.config.SoupCfg`), and
`get_recipe` builds the method from it. An unknown name errors with the valid ones.
"""

from __future__ import annotations

from raysoup.soup.dare import Dare
from raysoup.soup.ensemble import Ensemble
from raysoup.soup.greedy import GreedySoup
from raysoup.soup.learned import LearnedSoup
from raysoup.soup.model_stock import ModelStock
from raysoup.soup.task_arithmetic import TaskArithmetic
from raysoup.soup.ties import Ties
from raysoup.soup.uniform import UniformSoup
from raysoup.soup.wiseft import WiseFT

METHODS = {m.name: m for m in (
    UniformSoup, GreedySoup, LearnedSoup, ModelStock, WiseFT, Ensemble,
    TaskArithmetic, Ties, Dare,
)}


def get_recipe(name: str, cfg=None):
    """Method `name` with its settings from `cfg` (a `SoupCfg`, its `Settings`, or None = the
    method's defaults)."""
    if name not in METHODS:
        raise ValueError(f"unknown soup recipe {name!r}; valid: {sorted(METHODS)}")
    method = METHODS[name]
    settings = getattr(cfg, name, cfg) if cfg is not None else None
    if not isinstance(settings, method.Settings):
        settings = method.Settings()
    return method(**settings.model_dump())
