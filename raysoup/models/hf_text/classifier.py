"""The classifier the stages handle: the library's sequence classifier behind a forward that
takes one tensor (int64 [B, 3, L]: ids, token types, mask) and returns the logits, so the
evaluator, the learned soup and the anytime soup call it as they call an image classifier.
Its state dict is the library's, under `model.` (`model.bert.encoder...`,
`model.classifier.weight`)."""

from __future__ import annotations

import inspect

import torch
from torch import nn


class TextClassifier(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # DistilBERT-style models take no token types; BERT's do (sentence pairs).
        self.takes_types = "token_type_ids" in inspect.signature(model.forward).parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.long()
        extra = {"token_type_ids": x[:, 1]} if self.takes_types else {}
        return self.model(input_ids=x[:, 0], attention_mask=x[:, 2], **extra).logits


def sequence_config(source: str, num_classes: int, classnames=None):
    from transformers import AutoConfig

    from raysoup.models.hf_text.source import resolve

    names = list(classnames) if classnames else [str(i) for i in range(num_classes)]
    return AutoConfig.from_pretrained(resolve(source), num_labels=num_classes,
                                      id2label=dict(enumerate(names)),
                                      label2id={n: i for i, n in enumerate(names)})


def skeleton(source: str, num_classes: int) -> TextClassifier:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_config(sequence_config(source, num_classes))
    return TextClassifier(model).eval()


def pretrained(source: str, weights: str, num_classes: int, classnames, seed: int
               ) -> TextClassifier:
    """The pre-trained encoder with the head as the library initialises it, drawn after
    `torch.manual_seed(seed)` (ingredient 0 is reproducible)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from raysoup.models.hf_text.source import resolve

    torch.manual_seed(seed)
    # The library reports the head it initialises (and an MLM head it drops) as a warning
    # table; that is this function's purpose, so only errors are shown meanwhile.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve(weights), config=sequence_config(source, num_classes, classnames))
    finally:
        hf_logging.set_verbosity(level)
    return TextClassifier(model).eval()


def pretrained_config_model(source: str, classnames) -> nn.Module:
    """The library's sequence classifier (no wrapper) with the label names: what an export
    saves with save_pretrained."""
    from transformers import AutoModelForSequenceClassification

    config = sequence_config(source, len(classnames), classnames)
    return AutoModelForSequenceClassification.from_config(config).eval()
