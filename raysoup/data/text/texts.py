"""LabeledTexts: a split of labelled sentences or sentence pairs.

The texts are held as Arrow string arrays (one buffer each, a few bytes per token): the GLUE
tasks' splits are megabytes. What grows with a split after that is the token cache
(data/text/tokens.py), which is written in shards and read a shard at a time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa


@dataclass
class LabeledTexts:
    keys: list[str]  # stable, unique: the held-out split is carved by their hash
    texts: pa.Array  # string [N]: the sentence (or the first of a pair)
    pairs: pa.Array | None  # string [N]: the second sentence of a pair, or None
    labels: np.ndarray  # int64 [N], indices into classnames
    classnames: list[str]
    origin: str  # where the split was read from (messages)
    class_subset: list[int] | None = None  # the classes an eval split covers (None: all)
    class_groups: list[list[int]] | None = None  # unused for texts; the image interface's

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, mask_or_idx) -> LabeledTexts:
        idx = np.asarray(mask_or_idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        take = pa.array(idx, pa.int64())
        return replace(self, keys=[self.keys[i] for i in idx], texts=self.texts.take(take),
                       pairs=None if self.pairs is None else self.pairs.take(take),
                       labels=np.asarray(self.labels)[idx])

    def where(self, i: int) -> str:
        return f"{self.origin} (example {self.keys[i]})"

    def rows(self, lo: int, hi: int) -> tuple[list[str], list[str] | None]:
        """The texts (and pairs) of examples lo..hi as Python strings."""
        texts = self.texts.slice(lo, hi - lo).to_pylist()
        pairs = None if self.pairs is None else self.pairs.slice(lo, hi - lo).to_pylist()
        return texts, pairs

    def fingerprint(self) -> bytes:
        """Digest of the content (keys, texts, pairs, labels): the token cache's key."""
        h = hashlib.sha256(np.asarray(self.labels, np.int64).tobytes())
        for column in (self.keys, self.texts, self.pairs):
            if column is None:
                h.update(b"\1none")
                continue
            values = column if isinstance(column, list) else column.to_pylist()
            for v in values:
                h.update((v or "").encode())
                h.update(b"\0")
        return h.digest()


def content_keys(texts: list[str], pairs: list[str] | None, labels: np.ndarray) -> list[str]:
    """Keys from each example's content (+ '#k' for its k-th duplicate): independent of row
    order and of where the file lies, so the held-out split is the same on every machine."""
    seen: dict[str, int] = {}
    keys = []
    for i, text in enumerate(texts):
        blob = f"{text}\0{pairs[i] if pairs is not None else ''}\0{int(labels[i])}"
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
        k = seen.get(digest, 0)
        seen[digest] = k + 1
        keys.append(f"{digest}#{k}" if k else digest)
    return keys
