"""A raysoup model as an MLflow Model: the pyfunc flavour over an open_clip export, with a
signature (uint8 images [N, H, W, 3], any H and W -> float32 logits [N, C]), an input example,
the class names and preprocessing (in the export's config) and pinned requirements."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np

from raysoup.export.open_clip_dir import ModelInfo

CODE = Path(__file__).with_name("pyfunc_model.py")
# What pyfunc_model.py imports, pinned to the versions raysoup runs with (mlflow is added by
# MLflow itself).
REQUIREMENTS = ("torch", "open_clip_torch", "safetensors", "numpy", "pillow")


def requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]


def signature(info: ModelInfo):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    # Any image size: the model resizes to its own (info.image_size), as raysoup evaluates.
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(info.classnames)))]))


def save_pyfunc(export_dir: Path, info: ModelInfo, out: Path,
                example: np.ndarray | None = None) -> Path:
    """An MLflow Model directory at `out` (must not exist) serving the open_clip export at
    `export_dir`; `example`: uint8 images [n, S, S, 3] recorded as the input example."""
    import mlflow

    mlflow.pyfunc.save_model(
        path=str(out), python_model=str(CODE), artifacts={"open_clip": str(export_dir)},
        signature=signature(info), input_example=example, pip_requirements=requirements(),
        metadata={"classnames": info.classnames, "preprocess": info.preprocess_cfg,
                  **{k: v for k, v in info.extra.items() if k in ("recipe", "model")}})
    return out
