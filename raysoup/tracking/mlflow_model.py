"""A raysoup model as an MLflow Model: the pyfunc flavour over a model family's export
(`raysoup.export`), saved as a "model from code" named by the family's `MlflowModelSpec`
(open_clip: pyfunc_model.py beside this file, which imports only the spec's requirements:
mlflow itself is added by MLflow)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

if TYPE_CHECKING:
    from raysoup.models.family import MlflowModelSpec


def save_pyfunc(export_dir: Path, info, out: Path, example=None, *,
                spec: MlflowModelSpec) -> Path:
    """An MLflow Model directory at `out` (must not exist) serving the export at `export_dir`
    (`info`: its `raysoup.export.ModelInfo`; `spec`: the model family's `mlflow`, which names
    the model-from-code file, the artifact key and the requirements): signature uint8 images
    [N, H, W, 3], any H and W (the model resizes as raysoup evaluates) -> float32 logits
    [N, C]; `example` (uint8 images) as the input example; class names, preprocessing and
    recipe as metadata; requirements pinned to this install's versions."""
    if spec.flavour != "pyfunc" or spec.code is None:
        raise ValueError(f"save_pyfunc: the family's MLflow spec is {spec.flavour!r} "
                         f"(code {spec.code}); a pyfunc model from code is needed")
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(info.classnames)))]))
    mlflow.pyfunc.save_model(
        path=str(out), python_model=str(spec.code), artifacts={spec.artifact: str(export_dir)},
        signature=signature, input_example=example,
        pip_requirements=[f"{n}=={metadata.version(n)}" for n in spec.requirements],
        metadata={"classnames": info.classnames, "preprocess": info.preprocess_cfg,
                  **{k: v for k, v in info.extra.items() if k in ("recipe", "model")}})
    return out


def save_text_pyfunc(export_dir: Path, out: Path, classnames: list[str], pairs: bool,
                     example: list | None = None, *, spec: MlflowModelSpec,
                     meta: dict | None = None) -> Path:
    """An MLflow Model directory at `out` (must not exist) serving the hf_text export at
    `export_dir` (`raysoup.export.hf_dir`) through the family's model-from-code file
    (text_pyfunc_model.py): signature strings `text` (and `text_pair` for a sentence-pair
    task) -> `label` and `prob_<class>` per class; `example`: a few texts (or pairs) as the
    input example; `meta` (recipe, model) beside the class names as metadata; requirements
    pinned to this install's versions."""
    import pandas as pd
    from mlflow.types.schema import ColSpec

    if spec.flavour != "pyfunc" or spec.code is None:
        raise ValueError(f"save_text_pyfunc: the family's MLflow spec is {spec.flavour!r} "
                         f"(code {spec.code}); a pyfunc model from code is needed")
    columns = ["text", "text_pair"] if pairs else ["text"]
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", c) for c in columns]),
        outputs=Schema([ColSpec("string", "label"),
                        *(ColSpec("double", f"prob_{c}") for c in classnames)]))
    frame = None
    if example:
        rows = [r if pairs else [r] for r in example]
        frame = pd.DataFrame(rows, columns=columns)
    mlflow.pyfunc.save_model(
        path=str(out), python_model=str(spec.code), artifacts={spec.artifact: str(export_dir)},
        signature=signature, input_example=frame,
        pip_requirements=[f"{n}=={metadata.version(n)}" for n in spec.requirements],
        metadata={"classnames": classnames, **(meta or {})})
    return out
