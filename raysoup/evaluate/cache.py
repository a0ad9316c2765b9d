"""The eval cache: every eval split decoded and preprocessed once, then streamed by every model.

A split becomes uint8 shards at the model's input size (open_clip's eval transform: shorter
side to S, bicubic, centre crop), `WORKDIR/cache/eval/<split>-<digest>/part-NNNNN.npy`, with a
`manifest.json` written last. The digest covers everything that changes the cache's content
(`split_digest`), so a changed split, image file, model size, shard size or `skip_corrupt`
builds a new cache and an unchanged one is reused by every later stage, run and resume.
Evaluators read one shard at a time and normalise batches as they go: memory is one shard,
whatever the split's size.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysoup import storage
from raysoup.data.images import DataError, LabeledImages, decode_image
from raysoup.data.transforms import normalise, resize_center_crop
from raysoup.workdir import Workdir

MANIFEST = "manifest.json"


def split_digest(data: LabeledImages, preprocess: dict, shard_images: int,
                 skip_corrupt: bool) -> str:
    """The cache's key: everything that changes its content. The split's keys, labels and
    class projection; its images' content, by the column's fingerprint (file sizes and
    modification times, never the images read again); the preprocessing; and how it is
    built: the shard size (which shard holds which image) and `skip_corrupt` (whether a
    corrupt image is left out or stops the build)."""
    h = hashlib.sha256()
    # v3: the resize is open_clip's to the pixel (data/transforms.py); v2 caches hold
    # other pixels for images that are not the model's size.
    h.update(json.dumps({"image_size": preprocess["image_size"], "v": 3,
                         "subset": data.class_subset, "groups": data.class_groups,
                         "shard_images": shard_images, "skip_corrupt": skip_corrupt}).encode())
    h.update(np.asarray(data.labels, np.int64).tobytes())
    for key in data.keys:
        h.update(key.encode())
        h.update(b"\0")
    h.update(data.images.fingerprint())
    return h.hexdigest()[:16]


def cache_dir(workdir: Path, name: str, data: LabeledImages, preprocess: dict,
              shard_images: int, skip_corrupt: bool) -> Path:
    digest = split_digest(data, preprocess, shard_images, skip_corrupt)
    return Workdir(workdir).eval_cache / f"{name}-{digest}"


def shard_ranges(n: int, shard: int) -> list[tuple[int, int]]:
    return [(lo, min(n, lo + shard)) for lo in range(0, n, shard)]


def shard_name(i: int) -> str:
    return f"part-{i:05d}.npy"


def build_shard(data: LabeledImages, image_size: int, out: Path,
                skip_corrupt: bool = False) -> dict:
    """Decode `data` (one shard's samples) once into uint8 [n, 3, S, S] at `out`.

    The shard's sidecar `<out>.json` ({"n", "skipped": positions of corrupt images}) is
    written after it: a shard counts as built only with its sidecar."""
    pixels = np.empty((len(data), 3, image_size, image_size), np.uint8)
    kept, skipped = 0, []
    for lo in range(0, len(data), 64):
        idx = list(range(lo, min(len(data), lo + 64)))
        for i, encoded in zip(idx, data.images.read(idx), strict=True):
            try:
                img = decode_image(encoded, data.where(i))
            except DataError:
                if not skip_corrupt:
                    raise
                skipped.append(i)
                continue
            if img.size != (image_size, image_size):
                img = resize_center_crop(img, image_size)
            pixels[kept] = np.asarray(img, np.uint8).transpose(2, 0, 1)
            kept += 1
    info = {"n": kept, "skipped": skipped}
    out.parent.mkdir(parents=True, exist_ok=True)
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a temp name
            np.save(f, pixels[:kept])

    storage.write_file(out, save)
    storage.write_file(sidecar(out), json.dumps(info))
    return info


def sidecar(shard: Path) -> Path:
    return shard.with_name(shard.name + ".json")


def built_shard(shard: Path) -> dict | None:
    """The sidecar of a shard an earlier (interrupted) build finished, else None."""
    try:
        return json.loads(storage.read_text(sidecar(shard)))
    except FileNotFoundError:
        return None


def read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads(storage.read_text(directory / MANIFEST))
    except FileNotFoundError:
        return None


def write_manifest(directory: Path, manifest: dict) -> None:
    """The completion marker: written after every shard is in place."""
    storage.write_file(directory / MANIFEST, json.dumps(manifest, indent=1))


def _load(path: Path) -> np.ndarray:
    if storage.is_remote(path):
        return np.load(io.BytesIO(storage.read_bytes(path)))
    return np.load(path)


class ArrayImages:
    """Images already normalised in memory, float32 [N, 3, H, W] (tests, benchmarks)."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, lo: int, hi: int, batch_size: int) -> Iterator[np.ndarray]:
        start = lo
        while start < hi:  # the same grid as CachedImages.batches
            stop = min(hi, (start // batch_size + 1) * batch_size)
            yield self.images[start:stop]
            start = stop

    def take(self, idx: np.ndarray) -> np.ndarray:
        return self.images[np.asarray(idx)]


@dataclass
class CachedImages:
    """A split's eval cache: uint8 shards read one at a time, normalised per batch."""

    directory: str
    counts: list[int]  # images per shard
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def shard(self, i: int) -> np.ndarray:
        return _load(Path(self.directory) / shard_name(i))

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        return normalise(pixels, self.mean, self.std)  # open_clip's arithmetic, bit for bit

    def batches(self, lo: int, hi: int, batch_size: int) -> Iterator[np.ndarray]:
        """float32 batches of images lo..hi, reading only the shards that overlap them.

        Batches lie on the grid of multiples of `batch_size` (a batch may span two shards),
        so how a split is sharded never changes which images are scored together."""
        loaded: tuple[int, np.ndarray] | None = None
        start = lo
        while start < hi:
            stop = min(hi, (start // batch_size + 1) * batch_size)
            parts = []
            pos = start
            while pos < stop:
                s = int(np.searchsorted(self.starts, pos, side="right")) - 1
                if loaded is None or loaded[0] != s:
                    loaded = (s, self.shard(s))  # one shard in memory at a time
                a, b = int(self.starts[s]), int(self.starts[s + 1])
                end = min(stop, b)
                parts.append(loaded[1][pos - a:end - a])
                pos = end
            yield self.normalise(parts[0] if len(parts) == 1 else np.concatenate(parts))
            start = stop

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Images at arbitrary positions (learned soup's random batches), a shard at a time."""
        idx = np.asarray(idx, np.int64)
        out = np.empty((len(idx), 3) + self._image_shape(), np.float32)
        owner = np.searchsorted(self.starts, idx, side="right") - 1
        for s in np.unique(owner):
            pixels = self.shard(int(s))
            where = np.flatnonzero(owner == s)
            out[where] = self.normalise(pixels[idx[where] - self.starts[s]])
        return out

    def _image_shape(self) -> tuple[int, int]:
        if not hasattr(self, "_shape"):
            self._shape = tuple(self.shard(0).shape[2:])
        return self._shape
