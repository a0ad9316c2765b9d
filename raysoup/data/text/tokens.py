"""The token cache: a text split tokenised once, then read by every trial and eval actor.

`WORKDIR/cache/eval/<split>-<digest>/part-NNNNN.npy`: int32 [n, 3, L] shards (token ids,
token type ids, attention mask), with `manifest.json` written last. The digest covers the
split's content (keys, texts, labels), the tokenizer (its serialised form) and the max length,
so a change to any of them tokenises again and an unchanged split is reused by every stage,
run and resume. Readers load a shard at a time (memory-mapped when local): memory is one
shard, whatever the split's size. The tokenizer itself is the model family's: the builder
takes its `encode` function.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysoup import storage
from raysoup.data.text.texts import LabeledTexts

MANIFEST = "manifest.json"
# texts, pairs (or None), max_length -> int32 [n, 3, max_length]
Encode = Callable[[list[str], list[str] | None], np.ndarray]


def token_digest(data: LabeledTexts, tokenizer_id: str, max_length: int,
                 shard_rows: int) -> str:
    h = hashlib.sha256(json.dumps({"v": 1, "tokenizer": tokenizer_id, "max_length": max_length,
                                   "shard_rows": shard_rows,
                                   "subset": data.class_subset}).encode())
    h.update(data.fingerprint())
    return h.hexdigest()[:16]


def shard_name(i: int) -> str:
    return f"part-{i:05d}.npy"


def _save(array: np.ndarray):
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a temp name
            np.save(f, array)
    return write


def build_token_cache(data: LabeledTexts, encode: Encode, directory: Path,
                      shard_rows: int) -> CachedTokens:
    """Tokenise `data` into `directory` (shards an interrupted build finished are kept) and
    return its reader."""
    manifest = _read_manifest(directory)
    if manifest is None:
        counts = []
        for i, lo in enumerate(range(0, len(data), shard_rows)):
            hi = min(len(data), lo + shard_rows)
            out = directory / shard_name(i)
            if not storage.is_file(out):
                texts, pairs = data.rows(lo, hi)
                storage.write_file(out, _save(np.ascontiguousarray(encode(texts, pairs),
                                                                   np.int32)))
            counts.append(hi - lo)
        manifest = {"rows": len(data), "counts": counts, "origin": data.origin}
        storage.write_file(directory / MANIFEST, json.dumps(manifest, indent=1))
    return CachedTokens(str(directory), list(manifest["counts"]))


def _read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads(storage.read_text(directory / MANIFEST))
    except FileNotFoundError:
        return None


@dataclass
class CachedTokens:
    """A split's token cache: int32 [n, 3, L] shards read one at a time. The eval actors
    stream it like the image eval cache (`batches`, `take`), as int64 token batches."""

    directory: str
    counts: list[int]

    def __post_init__(self) -> None:
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def units(self) -> np.ndarray:
        """The shard of each row (the training plan shuffles shards, then rows within)."""
        return np.repeat(np.arange(len(self.counts)), self.counts)

    def shard(self, i: int) -> np.ndarray:
        path = Path(self.directory) / shard_name(i)
        if storage.is_remote(path):
            return np.load(io.BytesIO(storage.read_bytes(path)))
        return np.load(path, mmap_mode="r")

    def batches(self, lo: int, hi: int, batch_size: int) -> Iterator[np.ndarray]:
        """int64 batches of rows lo..hi on the grid of multiples of `batch_size` (as the image
        cache's: how a split is sharded never changes which rows are scored together)."""
        start = lo
        while start < hi:
            stop = min(hi, (start // batch_size + 1) * batch_size)
            yield self.take(np.arange(start, stop))
            start = stop

    def take(self, idx) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        owner = np.searchsorted(self.starts, idx, side="right") - 1
        out = None
        for s in np.unique(owner):
            rows = self.shard(int(s))
            where = np.flatnonzero(owner == s)
            if out is None:
                out = np.empty((len(idx), *rows.shape[1:]), np.int64)
            out[where] = rows[idx[where] - self.starts[s]]
        return out if out is not None else np.empty((0, 3, 0), np.int64)
