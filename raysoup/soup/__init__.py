from raysoup.soup.base import Candidate, RecipeResult, SoupScorer
from raysoup.soup.registry import RECIPES, get_recipe

__all__ = ["RECIPES", "Candidate", "RecipeResult", "SoupScorer", "get_recipe"]
