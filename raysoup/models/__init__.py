"""open_clip models: resolve -> build -> load, tiny JSON configs, zero-shot head, classifier.

Stages reach these through the model-family seam (`raysoup.models.family`, the registry in
`raysoup.models.families`): open_clip image classification is its one family.
"""

from raysoup.models.classifier import (
    ImageClassifier,
    classifier_from_clip,
    classifier_skeleton,
    zero_shot_head,
)
from raysoup.models.factory import (
    ModelLoadError,
    WeightSource,
    build_clip,
    get_tokenizer,
    image_stats,
    load_clip,
    register_configs,
    resolve_weights,
)

__all__ = [
    "ImageClassifier",
    "ModelLoadError",
    "WeightSource",
    "build_clip",
    "classifier_from_clip",
    "classifier_skeleton",
    "get_tokenizer",
    "image_stats",
    "load_clip",
    "register_configs",
    "resolve_weights",
    "zero_shot_head",
]
