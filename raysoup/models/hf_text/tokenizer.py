"""The family's preprocessing: the model's own tokenizer, padded and cut to `max_length`.

An example becomes int32 [3, L]: token ids, token type ids (the segment of a sentence pair),
attention mask; that is the row the token cache (data/text/tokens.py) stores and the
classifier's forward takes.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from raysoup.models.hf_text.source import resolve


@functools.lru_cache(maxsize=4)
def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(source))


def tokenizer_id(source: str) -> str:
    """Digest of the tokenizer's full serialised form (vocabulary, normaliser, specials): the
    token cache's key, the same on every machine for the same tokenizer."""
    tok = load_tokenizer(source)
    backend = getattr(tok, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else repr(sorted(tok.get_vocab().items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode(source: str, max_length: int, texts: list[str], pairs: list[str] | None
           ) -> np.ndarray:
    tok = load_tokenizer(source)
    enc = tok(texts, pairs, padding="max_length", truncation=True, max_length=max_length,
              return_token_type_ids=True, return_attention_mask=True)
    out = np.zeros((len(texts), 3, max_length), np.int32)
    out[:, 0] = enc["input_ids"]
    out[:, 1] = enc["token_type_ids"]
    out[:, 2] = enc["attention_mask"]
    return out


def encoder(record: dict):
    """`encode` bound to a preprocess record ({"tokenizer", "max_length"})."""
    return functools.partial(encode, record["tokenizer"], int(record["max_length"]))
