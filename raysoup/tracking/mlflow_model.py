"""A raysoup model as an MLflow Model: the pyfunc flavour over an open_clip export
(`raysoup.export`), saved as a "model from code" (pyfunc_model.py beside this file, which
imports only what PYFUNC_REQUIREMENTS pins: mlflow itself is added by MLflow)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

PYFUNC_CODE = Path(__file__).parent / "pyfunc_model.py"
PYFUNC_REQUIREMENTS = ("torch", "open_clip_torch", "safetensors", "numpy", "pillow")


def save_pyfunc(export_dir: Path, info, out: Path, example=None) -> Path:
    """An MLflow Model directory at `out` (must not exist) serving the open_clip export at
    `export_dir` (`info`: its `raysoup.export.ModelInfo`): signature uint8 images
    [N, H, W, 3], any H and W (the model resizes as raysoup evaluates) -> float32 logits
    [N, C]; `example` (uint8 images) as the input example; class names, preprocessing and
    recipe as metadata; requirements pinned to this install's versions."""
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(info.classnames)))]))
    mlflow.pyfunc.save_model(
        path=str(out), python_model=str(PYFUNC_CODE), artifacts={"open_clip": str(export_dir)},
        signature=signature, input_example=example,
        pip_requirements=[f"{n}=={metadata.version(n)}" for n in PYFUNC_REQUIREMENTS],
        metadata={"classnames": info.classnames, "preprocess": info.preprocess_cfg,
                  **{k: v for k, v in info.extra.items() if k in ("recipe", "model")}})
    return out
