"""Name → model family: the one place a family is listed (see `raysoup.models.family`).

`model.family` (default open_clip) names the family of an experiment; the zero-shot manifest
records `"family"` when it is not the default, so workers rebuild a model from it alone. The
field is left out of a config's dump at its default (config.OmitsNewDefaults), so an image
config's snapshot and the shipped base's recorded model config keep their bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

from raysoup.models.family import ModelFamily
from raysoup.models.hf_text.family import HfTextFamily
from raysoup.models.open_clip_family import OpenClipImageFamily

DEFAULT_FAMILY = "open_clip"

FAMILIES: Mapping[str, ModelFamily] = {f.name: f for f in (
    OpenClipImageFamily(),
    HfTextFamily(),
)}


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; valid: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(model=None) -> ModelFamily:
    """The family of a `ModelCfg` (the experiment's `model` section) or of a model manifest
    (dict); None: the default family."""
    if isinstance(model, Mapping):
        name = model.get("family")
    else:
        name = getattr(model, "family", None)
    return get_family(name or DEFAULT_FAMILY)
