"""Evaluation preprocessing, done once per split (training augmentation: train/augment.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from raysoup.data.images import LabeledImages


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """open_clip's eval transform, to the pixel: torchvision's `Resize(size)` then
    `CenterCrop(size)`, which `open_clip.create_model_and_transforms` builds from an export's
    `preprocess_cfg` (resize_mode "shortest", bicubic). The shorter side becomes `size`, the
    longer `int(size * long / short)` (truncated); the crop's offsets are
    `int(round((side - size) / 2))` (Python's round: half to even). An export then evaluates
    exactly as raysoup's report did."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = round((new_w - size) / 2.0), round((new_h - size) / 2.0)  # half to even
    return img.crop((left, top, left + size, top + size))


def normalise(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [..., 3, H, W] → float32 (x/255 − mean)/std in torchvision's arithmetic
    (`ToTensor`, then `Normalize`: each step rounded to float32 as there), so the tensors
    equal open_clip's preprocess bit for bit."""
    mean_ = np.asarray(mean, np.float32)[:, None, None]
    std_ = np.asarray(std, np.float32)[:, None, None]
    out = pixels.astype(np.float32)
    out /= np.float32(255)
    out -= mean_
    out /= std_
    return out


def preprocess_eval(data: LabeledImages, image_size: int, mean: Sequence[float],
                    std: Sequence[float]) -> np.ndarray:
    """float32 [N, 3, H, W], normalised; images already image_size square are not resampled."""
    out = np.empty((len(data), 3, image_size, image_size), np.float32)
    for i in range(len(data)):
        img = data.decode(i)
        if img.size != (image_size, image_size):
            img = resize_center_crop(img, image_size)
        out[i] = normalise(np.asarray(img).transpose(2, 0, 1), mean, std)
    return out
