"""The eval cache of a text family: each eval split tokenised once (data/text/tokens.py) into
`WORKDIR/cache/eval/<split>-<digest>/`, streamed by the eval actors as `EvalSplit`s.

Tokenising is fast next to decoding images (a GLUE split takes seconds), so the driver
builds the caches itself instead of scheduling Ray tasks; an unchanged split is reused by
every later stage, run and resume."""

from __future__ import annotations

from pathlib import Path

from raysoup.data.text.texts import LabeledTexts
from raysoup.data.text.tokens import build_token_cache, token_digest
from raysoup.evaluate.evaluator import EvalSplit
from raysoup.workdir import Workdir


def token_eval_splits(named: dict[str, LabeledTexts], workdir: Path, record: dict,
                      shard_rows: int) -> dict[str, EvalSplit]:
    from raysoup.models.hf_text.tokenizer import encoder, tokenizer_id

    tok_id, encode = tokenizer_id(record["tokenizer"]), encoder(record)
    out = {}
    for name, data in named.items():
        digest = token_digest(data, tok_id, int(record["max_length"]), shard_rows)
        tokens = build_token_cache(data, encode, Workdir(workdir).eval_cache / f"{name}-{digest}",
                                   shard_rows)
        subset = tuple(data.class_subset) if data.class_subset is not None else None
        out[name] = EvalSplit(images=tokens, labels=data.labels, class_subset=subset)
    return out
