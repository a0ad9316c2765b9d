"""Soups that leave raysoup: an open_clip `local-dir:` checkpoint (the soup's image tower, the
base model's text tower, the classification head and a model card), which the MLflow pyfunc
model serves (`raysoup.tracking.pyfunc_model`). Neither needs raysoup to load."""

from raysoup.export.open_clip_dir import (
    ExportError,
    ModelInfo,
    base_clip_state,
    export_open_clip,
    export_safetensors,
    model_info,
)

__all__ = ["ExportError", "ModelInfo", "base_clip_state", "export_open_clip",
           "export_safetensors", "model_info"]
