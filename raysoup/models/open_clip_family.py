"""open_clip image classification: the CLIP image tower, L2-normalised features and a linear
head that starts as the zero-shot classifier (models/classifier.py).

Weights come from an open_clip pretrained tag, a local file, a base shipped with raysoup
(`raysoup:<name>`) or the project's own pre-training (models/factory.py, models/base_models.py).
The classifier's state dict is `visual.*` + `head.weight` + `head.bias`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from raysoup.models import base_models as bases
from raysoup.models import classifier, factory
from raysoup.models.family import InitialModel, MlflowModelSpec
from raysoup.models.open_clip_objectives import ClassifierObjective, ContrastiveObjective

if TYPE_CHECKING:
    from raysoup.config import ModelCfg, TrainHParams

# The MLflow pyfunc over an open_clip `local-dir:` export: a "model from code" that imports
# only these packages (raysoup need not be installed where it is served).
PYFUNC_CODE = Path(__file__).parents[1] / "tracking" / "pyfunc_model.py"
PYFUNC_REQUIREMENTS = ("torch", "open_clip_torch", "safetensors", "numpy", "pillow")


class OpenClipImageFamily:
    name = "open_clip"
    export_formats = ("open_clip", "safetensors")
    mlflow = MlflowModelSpec(flavour="pyfunc", code=PYFUNC_CODE, artifact="open_clip",
                             export_format="open_clip", requirements=PYFUNC_REQUIREMENTS)

    # --- build and weights
    def skeleton(self, model_name: str, num_classes: int) -> nn.Module:
        return classifier.classifier_skeleton(model_name, num_classes)

    def architecture(self, model_name: str) -> dict:
        return factory.model_config(model_name)

    def resolve_weights(self, model_cfg: ModelCfg, base_checkpoint: Path | None = None):
        return factory.resolve_weights(model_cfg, base_checkpoint)

    def load_pretrained(self, model_cfg: ModelCfg, base_checkpoint: Path | None = None):
        return factory.load_clip(model_cfg, base_checkpoint)

    def packaged_base(self, model_cfg: ModelCfg, splits) -> Path | None:
        # Only a raysoup base carries the word vocabulary the world tokenizer needs; any other
        # weight source (an open_clip tag, a plain file) comes with its own tokenizer.
        if model_cfg.tokenizer != "world":
            return None
        path = self.resolve_weights(model_cfg).path
        if path is None or not bases.is_base_checkpoint(path):
            return None
        return bases.verify_base(path, model_cfg,
                                 bases.head_words(splits.classnames, splits.templates))

    # --- preprocessing
    def preprocess(self, pretrained: nn.Module) -> dict:
        image_size, mean, std = factory.image_stats(pretrained)
        return {"image_size": image_size, "mean": list(mean), "std": list(std)}

    def input_args(self, preprocess: dict) -> dict:
        return {"image_size": preprocess["image_size"], "mean": preprocess["mean"],
                "std": preprocess["std"]}

    # --- the initial head, forward and loss
    def initial_model(self, model_cfg: ModelCfg, base: Path | None,
                      classnames: Sequence[str], templates: Sequence) -> InitialModel:
        """Zero-shot CLIP: the head is the class names x templates text embeddings."""
        clip = self.load_pretrained(model_cfg, base)
        # Token ids must be those the base model was pre-trained with: its manifest records them.
        tokenizer = factory.get_tokenizer(model_cfg, bases.base_vocab(base) if base else None)
        head = classifier.zero_shot_head(clip, tokenizer, classnames, templates, device="cpu")
        model = classifier.classifier_from_clip(clip, head)
        return InitialModel(model, self.preprocess(clip))

    def logits(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs)

    def train_objective(self, hp: TrainHParams, num_classes: int) -> ClassifierObjective:
        return ClassifierObjective(hp, num_classes)

    def pretrain_objective(self) -> ContrastiveObjective:
        return ContrastiveObjective()
