"""Training input of a text family: batches of token rows from the train split's token cache.

The split is tokenised once (data/text/tokens.py: the first trial to need it builds the
cache, atomically shard by shard, and the others reuse it) and read memory-mapped, so a
trial's memory does not grow with the split. The epoch plan is the image path's
(`batches.plan_epoch`: the cache's shards are its units, one lane): a pure function of
(seed, epoch), so a resumed trial sees the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from raysoup.data.text.texts import LabeledTexts
from raysoup.data.text.tokens import CachedTokens, build_token_cache, token_digest
from raysoup.train.batches import plan_epoch

SHARD_ROWS = 4096  # token rows per shard of the train split's cache


def train_tokens(train: LabeledTexts, record: dict, cache_root: str | Path,
                 shard_rows: int = SHARD_ROWS) -> CachedTokens:
    from raysoup.models.hf_text.tokenizer import encoder, tokenizer_id

    digest = token_digest(train, tokenizer_id(record["tokenizer"]), int(record["max_length"]),
                          shard_rows)
    return build_token_cache(train, encoder(record), Path(cache_root) / f"train-{digest}",
                             shard_rows)


class TextTrainInput:
    """(int64 [B, 3, L] token rows, int64 labels [B]) per step, in plan order."""

    def __init__(self, tokens: CachedTokens, labels: np.ndarray, seed: int, batch_size: int,
                 window: int, shard: tuple[int, int] = (0, 1)):
        self.tokens, self.seed, self.batch_size, self.window = tokens, seed, batch_size, window
        self.labels = torch.from_numpy(np.asarray(labels, np.int64))
        self.rank, self.world = shard
        self.units = tokens.units()
        self.skipped: set[int] = set()  # nothing is ever skipped: the image loop's interface

    def steps(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        plan = plan_epoch(self.units, self.seed, epoch, self.batch_size, 1, self.window)
        if self.world == 1:
            return plan
        return [(lane, np.array_split(idx, self.world)[self.rank]) for lane, idx in plan]

    def steps_per_epoch(self) -> int:
        return len(self.steps(1))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, idx in self.steps(epoch):
            yield torch.from_numpy(self.tokens.take(idx)), self.labels[idx]
