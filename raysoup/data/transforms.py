"""Evaluation preprocessing, done once per split (training augmentation: train/augment.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from raysoup.data.images import LabeledImages


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """open_clip's eval transform: shorter side -> size (bicubic), then a centre crop."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                     Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def preprocess_eval(data: LabeledImages, image_size: int, mean: Sequence[float],
                    std: Sequence[float]) -> np.ndarray:
    """float32 [N, 3, H, W], normalised; images already image_size square are not resampled."""
    out = np.empty((len(data), 3, image_size, image_size), np.float32)
    std_ = np.asarray(std, np.float32)[:, None, None]
    scale = 1.0 / (255.0 * std_)  # (x/255 - mean)/std == x*scale - shift
    shift = np.asarray(mean, np.float32)[:, None, None] / std_
    for i in range(len(data)):
        img = data.decode(i)
        if img.size != (image_size, image_size):
            img = resize_center_crop(img, image_size)
        out[i] = np.asarray(img, np.float32).transpose(2, 0, 1) * scale - shift
    return out
