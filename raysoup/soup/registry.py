"""Name → recipe. An unknown name errors with the list of valid names."""

from __future__ import annotations

from raysoup.soup.greedy import GreedySoup
from raysoup.soup.uniform import UniformSoup

RECIPES = {"uniform": UniformSoup, "greedy": GreedySoup}


def get_recipe(name: str):
    try:
        return RECIPES[name]()
    except KeyError:
        raise ValueError(f"unknown soup recipe {name!r}; valid: {sorted(RECIPES)}") from None
