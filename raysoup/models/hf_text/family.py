"""`HfTextFamily`: the model-family protocol (models/family.py) for Hugging Face sequence
classifiers.

- weights and tokenizer: `model.name` names the architecture and tokenizer, `model.pretrained`
  the weights (usually the same: a Hub id, a save_pretrained directory or `raysoup:<name>`);
- ingredient 0 ("zero-shot" in the report): the pre-trained encoder with the classification
  head as the library initialises it, seeded (`HEAD_SEED`); a text encoder has no zero-shot
  head, so its scores are chance-level and it is the origin task vectors are measured from;
- preprocessing: the tokenizer to `model.max_length` tokens (the preprocess record);
- loss: cross-entropy with label smoothing (mixup, cutmix and RandAugment are image
  augmentations and are refused);
- export: a save_pretrained directory plus the tokenizer (`hf`), or the state dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from raysoup.models.family import InitialModel, MlflowModelSpec
from raysoup.models.hf_text import classifier
from raysoup.models.hf_text.source import TextModelError, resolve

if TYPE_CHECKING:
    from raysoup.config import ModelCfg, TrainHParams

HEAD_SEED = 0  # the library-initialised head of ingredient 0 is drawn after this seed
TOKENS = "tokens"  # the preprocess record's kind


class TextObjective:
    def __init__(self, hp: TrainHParams):
        image_only = {k: v for k, v in (("mixup", hp.mixup), ("cutmix", hp.cutmix),
                                        ("randaug_n", hp.randaug_n)) if v}
        if image_only:
            raise ValueError(f"hf_text: {sorted(image_only)} are image augmentations; set them "
                             "to 0 for a text model")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def forward_loss(self, net: nn.Module, x: torch.Tensor,
                     target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = net(x)
        return logits, self.criterion(logits.float(), target)


TEXT_PYFUNC_CODE = Path(__file__).parents[2] / "tracking" / "text_pyfunc_model.py"


class HfTextFamily:
    name = "hf_text"
    export_formats = ("hf", "safetensors")
    # A pyfunc from code over the `hf` export (raysoup/tracking/text_pyfunc_model.py): texts
    # in, labels and probabilities out, tokenised as raysoup evaluates (max_length padding).
    mlflow = MlflowModelSpec(flavour="pyfunc", code=TEXT_PYFUNC_CODE, artifact="hf",
                             export_format="hf",
                             requirements=("torch", "transformers", "tokenizers",
                                           "safetensors", "numpy", "pandas"))

    # --- build and weights
    def skeleton(self, model_name: str, num_classes: int) -> nn.Module:
        return classifier.skeleton(model_name, num_classes)

    def architecture(self, model_name: str) -> dict:
        return classifier.sequence_config(model_name, 2).to_dict()

    def resolve_weights(self, model_cfg: ModelCfg, base_checkpoint: Path | None = None):
        from raysoup.models.factory import WeightSource

        source = model_cfg.pretrained or model_cfg.name
        where = resolve(source)
        if Path(where).is_dir():
            return WeightSource("base" if source.startswith("raysoup:") else "file",
                                path=Path(where))
        # A Hub id, fetched by transformers (WeightSource's "tag": a name, not a file).
        return WeightSource("open_clip_tag", tag=where)

    def load_pretrained(self, model_cfg: ModelCfg, base_checkpoint: Path | None = None):
        return classifier.pretrained(model_cfg.name, model_cfg.pretrained or model_cfg.name, 2,
                                     None, HEAD_SEED)

    def packaged_base(self, model_cfg: ModelCfg, splits) -> Path | None:
        return None  # the shipped text bases are save_pretrained directories: nothing to check

    # --- preprocessing
    def preprocess(self, pretrained: nn.Module) -> dict:
        record = getattr(pretrained, "preprocess", None)
        if record is None:
            raise TextModelError("hf_text: the preprocess record comes with initial_model")
        return record

    def input_args(self, preprocess: dict) -> dict:
        return {"tokens": preprocess}

    # --- the initial head, forward and loss
    def initial_model(self, model_cfg: ModelCfg, base: Path | None,
                      classnames: Sequence[str], templates: Sequence) -> InitialModel:
        model = classifier.pretrained(model_cfg.name, model_cfg.pretrained or model_cfg.name,
                                      len(classnames), classnames, HEAD_SEED)
        record = {"kind": TOKENS, "tokenizer": model_cfg.name,
                  "max_length": model_cfg.max_length}
        return InitialModel(model, record)

    def logits(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs)

    def train_objective(self, hp: TrainHParams, num_classes: int) -> TextObjective:
        return TextObjective(hp)

    def pretrain_objective(self):
        raise TextModelError("hf_text starts from a pre-trained encoder (model.pretrained); "
                             "model.pretrain is for open_clip (the text base ships with "
                             "raysoup: python -m raysoup.models.hf_text.make_base)")
