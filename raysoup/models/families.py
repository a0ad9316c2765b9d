"""Name → model family: the one place a family is listed (see `raysoup.models.family`).

Today every experiment is open_clip image classification, and the config has no field naming
the family, so `family_of` returns open_clip for every model section. The second family adds
`model.family: Literal[...] = "open_clip"` to `ModelCfg` (and `"family"` to the zero-shot
manifest, for workers that rebuild a model from it); `family_of` already reads both. That field
is not added before then: it would change the config snapshot and the shipped base's recorded
model config.
"""

from __future__ import annotations

from collections.abc import Mapping

from raysoup.models.family import ModelFamily
from raysoup.models.open_clip_family import OpenClipImageFamily

DEFAULT_FAMILY = "open_clip"

FAMILIES: Mapping[str, ModelFamily] = {f.name: f for f in (
    OpenClipImageFamily(),
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
