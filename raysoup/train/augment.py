"""Training-time augmentation on whole uint8 batches.

On tiny images the fixed cost of a PIL/torchvision call per sample (~100 µs) outweighs the
pixels, so shifts, flips and normalisation run on whole batches as tensor ops; per-sample work
(crops of real images, timm's RandAugment) is in train/batches.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from raysoup.data.images import LabeledImages
from raysoup.data.transforms import resize_center_crop


def uint8_images(data: LabeledImages, image_size: int) -> torch.Tensor:
    """Decode every image once into uint8 [N, 3, S, S] (resized + centre-cropped if needed)."""
    try:
        pixels = data.decode_all()
    except ValueError:  # images of different sizes (a real dataset): bring each to S first
        pixels = np.stack([np.asarray(resize_center_crop(data.decode(i), image_size))
                           for i in range(len(data))])
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x.float(), size=(image_size, image_size), mode="bilinear",
                          antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return x


def random_shift_flip(x: torch.Tensor, gen: torch.Generator, shift: int) -> torch.Tensor:
    """uint8 [n,3,h,w] → float32 (0..255), randomly translated (reflect pad) and h-flipped."""
    n, _, h, w = x.shape
    padded = F.pad(x.float(), (shift, shift, shift, shift), mode="reflect")
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen).tolist()
    # A loop of slices (one contiguous copy per image) is much faster than one advanced-indexing
    # gather, which computes an index for every element.
    out = torch.stack([padded[i, :, y : y + h, x_ : x_ + w] for i, (y, x_) in enumerate(zip(dy, dx))])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


class Normalize:
    """(x/255 − mean)/std for float images in 0..255."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.sub_(self.mean).div_(self.std)
