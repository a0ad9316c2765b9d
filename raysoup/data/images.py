"""LabeledImages: the one in-memory form every data source is read into.

Images stay encoded (PNG/JPEG bytes from Parquet, or file paths from an ImageFolder) until a
consumer decodes them, so a split of a real dataset costs its compressed size, not N*H*W*3.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image


class DataError(ValueError):
    """A dataset on disk or in memory is malformed; the message names the path or field."""


@dataclass
class LabeledImages:
    keys: list[str]  # stable unique sample keys, e.g. "train/000123"
    images: list  # list[bytes] (encoded images) or list[str] (file paths)
    labels: np.ndarray  # int64 indices into classnames (the full label space)
    classnames: list[str]
    captions: list[str] | None = None
    class_subset: list[int] | None = None  # class indices a shift set covers (None = all)
    # A split whose classes each stand for a group of model classes (ObjectNet): labels and
    # classnames are the split's own; class_groups[i] = model class indices of class i.
    class_groups: list[list[int]] | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.keys)
        if len(self.images) != n or len(self.labels) != n:
            raise DataError(
                f"LabeledImages: keys/images/labels lengths differ "
                f"({n}/{len(self.images)}/{len(self.labels)})"
            )
        if self.captions is not None and len(self.captions) != n:
            raise DataError(f"LabeledImages: {len(self.captions)} captions for {n} samples")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classnames)):
            raise DataError(
                f"LabeledImages: labels must lie in [0, {len(self.classnames)}), "
                f"got [{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, mask_or_indices) -> LabeledImages:
        """Subset by a boolean mask or integer indices; class space and subset are kept."""
        idx = np.asarray(mask_or_indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise DataError(f"select: mask shape {idx.shape} != ({len(self)},)")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False)
        return replace(
            self,
            keys=[self.keys[i] for i in idx],
            images=[self.images[i] for i in idx],
            labels=self.labels[idx],
            captions=None if self.captions is None else [self.captions[i] for i in idx],
        )

    def decode(self, i: int) -> Image.Image:
        item = self.images[i]
        try:
            if isinstance(item, (bytes, bytearray, memoryview)):
                img = Image.open(io.BytesIO(item))
            else:
                img = Image.open(Path(item))
            return img.convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:
            where = item if isinstance(item, str) else self.keys[i]
            raise DataError(f"cannot decode image {where}: {exc}") from None

    def decode_all(self) -> np.ndarray:
        """uint8 [N,H,W,3]; every image must have the same size (true for the synthetic world)."""
        if not len(self):
            return np.zeros((0, 0, 0, 3), np.uint8)
        first = np.asarray(self.decode(0))
        out = np.empty((len(self),) + first.shape, np.uint8)
        out[0] = first
        for i in range(1, len(self)):
            arr = np.asarray(self.decode(i))
            if arr.shape != first.shape:
                raise DataError(
                    f"decode_all: image {self.keys[i]} is {arr.shape[:2]}, expected "
                    f"{first.shape[:2]}; use data.transforms.preprocess_eval or "
                    "train.augment.uint8_images, which resize"
                )
            out[i] = arr
        return out
