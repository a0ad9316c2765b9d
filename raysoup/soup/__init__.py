from raysoup.soup.base import Candidate, RecipeResult, SoupScorer
from raysoup.soup.registry import METHODS, get_recipe

__all__ = ["METHODS", "Candidate", "RecipeResult", "SoupScorer", "get_recipe"]
