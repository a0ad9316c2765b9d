"""A word-level tokenizer for the synthetic world's closed vocabulary.

The world's captions, class names and templates use a few dozen words, so a 256-entry
vocabulary replaces open_clip's 49,408 BPE tokens (which would dominate a tiny text tower).
Token ids: 0 = pad, 1..len(vocab) = words, SOT = vocab_size-2, EOT = vocab_size-1. EOT is
the highest id on purpose: open_clip's text tower pools at argmax(token id).
"""

from __future__ import annotations

import torch

from raysoup.data.world import normalize_words


class TokenizerError(ValueError):
    """A text cannot be tokenized (unknown word, too long) or the vocabulary does not fit."""


class WordTokenizer:
    def __init__(self, vocab: list[str], context_length: int, vocab_size: int):
        if len(set(vocab)) != len(vocab):
            raise TokenizerError("WordTokenizer: vocabulary has duplicate words")
        if len(vocab) + 3 > vocab_size:  # pad, SOT and EOT need ids too
            raise TokenizerError(
                f"WordTokenizer: {len(vocab)} words + pad/SOT/EOT do not fit text_cfg.vocab_size "
                f"{vocab_size}"
            )
        self.vocab = list(vocab)
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.sot_id = vocab_size - 2
        self.eot_id = vocab_size - 1
        self._ids = {w: i + 1 for i, w in enumerate(self.vocab)}

    def encode(self, text: str) -> list[int]:
        ids = [self.sot_id]
        for word in normalize_words(text):
            if word not in self._ids:
                raise TokenizerError(f"WordTokenizer: unknown word {word!r} in {text!r}")
            ids.append(self._ids[word])
        ids.append(self.eot_id)
        if len(ids) > self.context_length:
            raise TokenizerError(
                f"WordTokenizer: {text!r} needs {len(ids)} tokens > context_length "
                f"{self.context_length}"
            )
        return ids

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
