"""Name → recipe. An unknown name errors with the list of valid names.

Each entry builds its recipe from the `soup` section of the config (`SoupCfg`), so recipe
settings live in the experiment YAML.
"""

from __future__ import annotations

from raysoup.soup.ensemble import Ensemble
from raysoup.soup.greedy import GreedySoup
from raysoup.soup.learned import LearnedSoup
from raysoup.soup.model_stock import ModelStock
from raysoup.soup.uniform import UniformSoup
from raysoup.soup.wiseft import WiseFT

RECIPES = {
    "uniform": lambda cfg: UniformSoup(),
    # Speculation is set by the soup driver (it depends on the eval pool, not on the recipe).
    "greedy": lambda cfg: GreedySoup(accept_ties=cfg.greedy_accept_ties),
    "learned": lambda cfg: LearnedSoup(**cfg.learned.model_dump()),
    "ensemble": lambda cfg: Ensemble(),
    "wiseft": lambda cfg: WiseFT(alphas=cfg.wiseft.alphas),
    "model_stock": lambda cfg: ModelStock(),
}


def get_recipe(name: str, cfg=None):
    """The recipe `name` with settings from `cfg` (a `SoupCfg`; None = the defaults)."""
    if name not in RECIPES:
        raise ValueError(f"unknown soup recipe {name!r}; valid: {sorted(RECIPES)}")
    if cfg is None:
        from raysoup.config import SoupCfg

        cfg = SoupCfg()
    return RECIPES[name](cfg)
