"""Build the shipped text base `raysoup:tiny-text`: a WordPiece vocabulary and a 2-layer BERT
pre-trained with masked-language modelling on the text world's corpus (data/text/world.py).

    python -m raysoup.models.hf_text.make_base raysoup/models/bases/tiny-text

Writes a save_pretrained directory (config.json, model.safetensors, the tokenizer files) and
manifest.json (the recipe, the final MLM loss, every file's sha256), last. About a minute on
one CPU core; deterministic for the recipe on one machine (floating point may differ across
CPUs, so the shipped files are what the tests use).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

RECIPE = {"corpus_sentences": 20000, "vocab_size": 400, "hidden_size": 64, "layers": 2,
          "heads": 2, "intermediate_size": 128, "max_length": 40, "steps": 2500,
          "batch_size": 64, "lr": 2e-3, "warmup_steps": 100, "mask_prob": 0.15, "seed": 0}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_vocab(corpus: list[str], size: int) -> dict[str, int]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(
        vocab_size=size, special_tokens=SPECIALS, min_frequency=1))
    return tok.get_vocab()


def _masked(ids: torch.Tensor, special: torch.Tensor, tok, prob: float, gen: torch.Generator):
    """BERT's masking: `prob` of the real tokens are predicted; of those 80 % become [MASK],
    10 % a random token, 10 % stay."""
    labels = ids.clone()
    chosen = (torch.rand(ids.shape, generator=gen) < prob) & ~special
    labels[~chosen] = -100
    inputs = ids.clone()
    roll = torch.rand(ids.shape, generator=gen)
    inputs[chosen & (roll < 0.8)] = tok.mask_token_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = torch.randint(len(SPECIALS), tok.vocab_size, ids.shape, generator=gen)[swap]
    return inputs, labels


def pretrain(out: Path, recipe: dict = RECIPE) -> dict:
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    from raysoup.data.text.world import mlm_corpus, words

    torch.manual_seed(recipe["seed"])
    corpus = mlm_corpus(recipe["corpus_sentences"], recipe["seed"])
    tok = BertTokenizer(vocab=train_vocab(corpus + words(), recipe["vocab_size"]))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=recipe["hidden_size"],
                        num_hidden_layers=recipe["layers"],
                        num_attention_heads=recipe["heads"],
                        intermediate_size=recipe["intermediate_size"],
                        max_position_embeddings=recipe["max_length"] + 24, type_vocab_size=2,
                        pad_token_id=tok.pad_token_id)
    model = BertForMaskedLM(config)
    enc = tok(corpus, padding="max_length", truncation=True, max_length=recipe["max_length"],
              return_tensors="pt", return_special_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    special = enc["special_tokens_mask"].bool() | (mask == 0)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01)
    gen = torch.Generator().manual_seed(recipe["seed"])
    losses = []
    model.train()
    for step in range(recipe["steps"]):
        lr = recipe["lr"] * min(1.0, (step + 1) / recipe["warmup_steps"])
        lr *= 0.5 * (1 + np.cos(np.pi * step / recipe["steps"]))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(ids), (recipe["batch_size"],), generator=gen)
        inputs, labels = _masked(ids[idx], special[idx], tok, recipe["mask_prob"], gen)
        loss = model(input_ids=inputs, attention_mask=mask[idx], labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    files = sorted(p.name for p in out.iterdir() if p.name != "manifest.json")
    manifest = {"format": "raysoup.text_base/1", "recipe": recipe,
                "mlm_loss_last_100": float(np.mean(losses[-100:])),
                "mlm_loss_first_100": float(np.mean(losses[:100])),
                "sha256": {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in files}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=RECIPE["steps"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.process_time()
    manifest = pretrain(args.out, {**RECIPE, "steps": args.steps})
    print(json.dumps({k: manifest[k] for k in ("mlm_loss_first_100", "mlm_loss_last_100")}),
          f"cpu {time.process_time() - t0:.0f} s")


if __name__ == "__main__":
    main()
