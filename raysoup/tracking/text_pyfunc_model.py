"""The MLflow pyfunc of a raysoup text classifier: sentences (or sentence pairs) in, labels
and class probabilities out.

An MLflow "model from code": MLflow runs this file to load the model, so nothing is unpickled,
and it imports only torch, numpy, pandas and transformers (raysoup need not be installed where
the model is served). Its one artifact, `hf`, is raysoup's `save_pretrained` export
(raysoup/export/hf_dir.py): the model, its tokenizer and `raysoup.json` (max_length).

Input: a DataFrame with a string column `text` (and `text_pair` for a
sentence-pair task): the model's signature. Each example is tokenised as raysoup evaluates:
padded and cut to the recorded max_length.
Output: a DataFrame with `label` (the predicted class name) and `prob_<class>`, the
probability of each class (softmax of the logits: `label` is their argmax).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

BATCH = 64


def _columns(frame: pd.DataFrame) -> tuple[list[str], list[str] | None]:
    if "text" not in frame.columns:
        raise ValueError(f"expected a column 'text' (and 'text_pair'), got {list(frame.columns)}")
    pairs = frame["text_pair"] if "text_pair" in frame.columns else None
    return ([str(t) for t in frame["text"]], None if pairs is None else [str(t) for t in pairs])


class TextClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        root = Path(context.artifacts["hf"])
        info = json.loads((root / "raysoup.json").read_text())
        self.max_length = int(info["preprocess"]["max_length"])
        self.model = AutoModelForSequenceClassification.from_pretrained(root).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(root)
        labels = self.model.config.id2label
        self.classnames = [labels[i] for i in range(len(labels))]

    @torch.no_grad()
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts, pairs = _columns(model_input)
        probs = []
        for lo in range(0, len(texts), BATCH):
            x = self.tokenizer(texts[lo:lo + BATCH],
                               pairs[lo:lo + BATCH] if pairs is not None else None,
                               padding="max_length", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
            logits = self.model(**x).logits.float()
            probs.append(torch.softmax(logits, dim=-1).numpy().astype(np.float64))
        p = np.concatenate(probs) if probs else np.zeros((0, len(self.classnames)))
        out = pd.DataFrame({"label": [self.classnames[i] for i in p.argmax(1)]})
        for j, name in enumerate(self.classnames):
            out[f"prob_{name}"] = p[:, j]
        return out


mlflow.models.set_model(TextClassifier())
