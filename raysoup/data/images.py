"""LabeledImages: the one form every data source is read into — an index, not the pixels.

A split holds keys, labels and an *image column*: a handle that reads encoded images (PNG/JPEG
bytes) on demand — from files of an ImageFolder, from row groups of Parquet shards (local or on
object storage), or from memory for generated data. So a split of ImageNet costs its index
(keys and labels), not its images; consumers decode what they need, when they need it.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from raysoup.data import fs
from raysoup.data.errors import DataError

# When set, every decode appends a line naming the image to this file (any process: driver,
# trial, actor, task), so decodes can be counted across a whole pipeline run.
DECODE_LOG_ENV = "RAYSOUP_DECODE_LOG"


class ImageColumn:
    """Encoded images by position. Subclasses read from memory, files or Parquet row groups.

    `units()` groups items that are cheap to read together (one Parquet row group, one file):
    the training order shuffles units and then samples within a window, so a worker reads each
    unit once per epoch.
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, idx: np.ndarray) -> ImageColumn:
        raise NotImplementedError

    def read(self, idx: Sequence[int]) -> list[bytes]:
        raise NotImplementedError

    def units(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    def where(self, i: int) -> str | None:
        """The item's origin for error messages (None: name it by its sample key)."""
        return None

    def is_remote(self) -> bool:
        """Read from object storage (whose clients do not survive a fork)."""
        return False

    def fingerprint(self) -> bytes:
        """Bytes that change when the images' content may have changed, computed without
        reading the images themselves (caches of decoded pixels are keyed on it)."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> bytes:
        return self.read([i])[0]


class EncodedBytes(ImageColumn):
    """Encoded images held in memory (generated data before it is written)."""

    def __init__(self, items: Sequence[bytes]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def take(self, idx: np.ndarray) -> EncodedBytes:
        return EncodedBytes([self.items[i] for i in idx])

    def read(self, idx: Sequence[int]) -> list[bytes]:
        return [bytes(self.items[i]) for i in idx]

    def fingerprint(self) -> bytes:
        h = hashlib.sha256()  # in memory already: the bytes themselves
        for item in self.items:
            h.update(hashlib.sha256(item).digest())
        return h.digest()


class FileImages(ImageColumn):
    """One image file per item: local paths or s3:// / gs:// URIs (an ImageFolder)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, idx: np.ndarray) -> FileImages:
        return FileImages([self.paths[i] for i in idx])

    def read(self, idx: Sequence[int]) -> list[bytes]:
        out = []
        for i in idx:
            path = self.paths[i]
            if fs.is_uri(path):
                out.append(fs.read_bytes(path))
                continue
            try:
                with open(path, "rb") as f:
                    out.append(f.read())
            except OSError as e:
                raise DataError(f"cannot read image {path}: {e}") from None
        return out

    def where(self, i: int) -> str:
        return self.paths[i]

    def is_remote(self) -> bool:
        return any(fs.is_uri(p) for p in self.paths[:1])

    def fingerprint(self) -> bytes:
        """Each file's size and modification time (a file rewritten in place changes both
        or at least its mtime); one listing per directory, no image read."""
        return fs.stamps(self.paths)


def as_column(images) -> ImageColumn:
    """A column as given, or one made from a list of encoded bytes / file paths."""
    if isinstance(images, ImageColumn):
        return images
    items = list(images)
    if items and isinstance(items[0], (str, os.PathLike)):
        return FileImages(items)
    return EncodedBytes(items)


def count_decode(where: str) -> None:
    path = os.environ.get(DECODE_LOG_ENV)
    if path:
        # One line per decode, naming the image; O_APPEND keeps concurrent processes' lines whole.
        with open(path, "a") as f:
            f.write(where.replace("\n", " ") + "\n")


def decode_image(data: bytes, where: str) -> Image.Image:
    """Encoded bytes → RGB PIL image; a corrupt or truncated image is a DataError naming it."""
    count_decode(where)
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # a truncated file fails here, not later inside a transform
        return img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {where}: {exc}") from None


def decode_pixels(data: bytes, where: str) -> np.ndarray:
    """Encoded bytes → uint8 [H, W, 3], the pixels `decode_image` gives (the same
    libjpeg-turbo IDCT), faster for JPEGs: torchvision's decoder skips PIL's per-image
    overhead, which dominates at ImageNet sizes. A JPEG without its end marker (truncated),
    or anything else, goes through PIL, which names the problem. PIL's decompression-bomb
    limit (`Image.MAX_IMAGE_PIXELS`) applies to both routes."""
    if data[:2] == b"\xff\xd8" and data[-64:].rstrip(b"\0")[-2:] == b"\xff\xd9":
        _check_not_a_bomb(data, where)
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                              mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # PIL decodes it after all, or says what is wrong with it
        else:
            count_decode(where)
            return chw.permute(1, 2, 0).numpy()
    return np.array(decode_image(data, where))


def _check_not_a_bomb(data: bytes, where: str) -> None:
    """PIL's check on the header's size, no pixels decoded: torchvision's decoder has no
    limit, so a small file claiming a huge image would otherwise be decoded in full."""
    try:
        Image.open(io.BytesIO(data)).close()
    except Image.DecompressionBombError as exc:
        raise DataError(f"cannot decode image {where}: {exc}") from None
    except (OSError, SyntaxError, ValueError):
        pass  # a header PIL cannot read: the decoders below say what is wrong with it


def image_size_of(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone (no pixels decoded)."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


@dataclass
class LabeledImages:
    keys: list[str]  # stable unique sample keys, e.g. "train/000123"
    images: ImageColumn  # (a list of encoded bytes or file paths is wrapped into one)
    labels: np.ndarray  # int64 indices into classnames (the full label space)
    classnames: list[str]
    captions: list[str] | None = None
    class_subset: list[int] | None = None  # class indices a shift set covers (None = all)
    # A split whose classes each stand for a group of model classes (ObjectNet): labels and
    # classnames are the split's own; class_groups[i] = model class indices of class i.
    class_groups: list[list[int]] | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.images = as_column(self.images)
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
            images=self.images.take(idx),
            labels=self.labels[idx],
            captions=None if self.captions is None else [self.captions[i] for i in idx],
        )

    def decode(self, i: int) -> Image.Image:
        return decode_image(self.images.read([i])[0], self.where(i))

    def decode_many(self, idx: Sequence[int]) -> list[Image.Image]:
        """Several images, read together (a Parquet row group once for all its items)."""
        return [decode_image(b, self.where(i))
                for i, b in zip(idx, self.images.read(idx), strict=True)]

    def pixels_many(self, idx: Sequence[int]) -> list[np.ndarray]:
        """`decode_many` as uint8 [H, W, 3] arrays, by the faster `decode_pixels`."""
        return [decode_pixels(b, self.where(i))
                for i, b in zip(idx, self.images.read(idx), strict=True)]

    def where(self, i: int) -> str:
        """Where sample i comes from (file, row group), or its key: for error messages."""
        return self.images.where(i) or self.keys[i]

    def decode_all(self) -> np.ndarray:
        """uint8 [N,H,W,3]; every image must have the same size (true for the synthetic world)."""
        if not len(self):
            return np.zeros((0, 0, 0, 3), np.uint8)
        first = np.asarray(self.decode(0))
        out = np.empty((len(self),) + first.shape, np.uint8)
        out[0] = first
        for lo in range(1, len(self), 256):
            idx = list(range(lo, min(len(self), lo + 256)))
            for i, img in zip(idx, self.decode_many(idx), strict=True):
                arr = np.asarray(img)
                if arr.shape != first.shape:
                    raise DataError(
                        f"decode_all: image {self.keys[i]} is {arr.shape[:2]}, expected "
                        f"{first.shape[:2]}; use data.transforms.preprocess_eval or "
                        "train.augment.uint8_images, which resize"
                    )
                out[i] = arr
        return out
