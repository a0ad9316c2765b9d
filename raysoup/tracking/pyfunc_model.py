"""The MLflow pyfunc of a raysoup model: images in, logits out.

An MLflow "model from code": MLflow runs this file to load the model, so nothing is unpickled,
and it imports only torch, numpy, pillow, safetensors and open_clip (raysoup need not be
installed where the model is served: MLflow loads it, not raysoup). Its one artifact,
`open_clip`, is an open_clip `local-dir:` export (raysoup/export/open_clip_dir.py).

Input: uint8 images [N, H, W, 3] (RGB, as `numpy.asarray(PIL.Image)`); images that are not the
model's size are resized (shorter side, bicubic) and centre-cropped, as raysoup evaluates.
Output: float32 logits [N, C] over the classes listed in the model's `classnames`.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import torch
from PIL import Image

BATCH = 256


# raysoup.data.transforms.resize_center_crop, restated: this file must load without raysoup
# (tests/test_export.py checks the two give the same pixels).
def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)  # torchvision's Resize(size), as open_clip's preprocess
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = round((new_w - size) / 2.0), round((new_h - size) / 2.0)  # half to even
    return img.crop((left, top, left + size, top + size))


class CLIPClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import open_clip
        from safetensors.torch import load_file

        root = Path(context.artifacts["open_clip"])
        cfg = json.loads((root / "open_clip_config.json").read_text())
        clip = open_clip.create_model(f"local-dir:{root}")
        self.visual = clip.visual.eval()
        head = load_file(str(root / "head.safetensors"))
        self.weight, self.bias = head["weight"], head["bias"]
        self.classnames = cfg["classnames"]
        pp = cfg["preprocess_cfg"]
        self.size = int(pp["size"])
        # (x/255 - mean)/std in float32, step by step: raysoup's (and torchvision's) arithmetic.
        self.mean = np.asarray(pp["mean"], np.float32)[:, None, None]
        self.std = np.asarray(pp["std"], np.float32)[:, None, None]

    def _pixels(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got shape {images.shape}")
        if images.shape[1:3] != (self.size, self.size):
            images = np.stack([np.asarray(_resize_center_crop(Image.fromarray(im), self.size))
                               for im in images])
        x = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        images = np.asarray(model_input, dtype=np.uint8)
        out = []
        for lo in range(0, len(images), BATCH):
            x = torch.from_numpy(np.ascontiguousarray(self._pixels(images[lo:lo + BATCH])))
            features = torch.nn.functional.normalize(self.visual(x), dim=-1)
            # F.linear, as the classifier's nn.Linear head: the same rounding as raysoup's scores.
            out.append(torch.nn.functional.linear(features, self.weight, self.bias).numpy())
        n = len(self.weight)
        return np.concatenate(out) if out else np.zeros((0, n), np.float32)


mlflow.models.set_model(CLIPClassifier())
