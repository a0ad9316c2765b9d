"""models/: word tokenizer, resolve/build/load, zero-shot head, classifier, base-model cache."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from raysoup.config import ModelCfg, PretrainCfg, WorldCfg
from raysoup.data.world import CLASSNAMES, TEMPLATES, build_split, vocabulary
from raysoup.models import (
    ImageClassifier,
    ModelLoadError,
    build_clip,
    classifier_from_clip,
    classifier_skeleton,
    get_tokenizer,
    image_stats,
    load_clip,
    resolve_weights,
    zero_shot_head,
)
from raysoup.models.base_models import base_vocab, read_base_manifest
from raysoup.models.tokenizer import TokenizerError, WordTokenizer
from raysoup.train.base_clip import ensure_base_clip

TINY = "raysoup-tiny-vit"
WORLD = WorldCfg(num_classes=4, train_per_class=16, test_per_class=5, shift_per_class=5)


def _cfg(**kw) -> ModelCfg:
    kw.setdefault("name", TINY)
    kw.setdefault("tokenizer", "world")
    return ModelCfg(**kw)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_clip(TINY)


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer(_cfg(pretrained="unused"), vocabulary(WORLD))


def test_tiny_config_registered_and_sized(clip):
    assert TINY in open_clip.list_models()
    assert image_stats(clip)[0] == 32
    assert clip.visual.output_dim == 64
    assert clip.token_embedding.num_embeddings == 256  # small vocab, not 49,408 BPE tokens


def test_tokenizer_ids_and_eot_is_argmax(tokenizer):
    tokens = tokenizer(["a photo of a cross.", "A Drawing of a red, small circle"])
    assert tokens.shape == (2, 24) and tokens.dtype == torch.long
    # open_clip pools text features at argmax(token id): that must be the EOT position.
    eot = tokens.argmax(dim=-1)
    assert tokens[0, 0] == 254 and eot.tolist() == [6, 8]
    assert (tokens[torch.arange(2), eot] == 255).all()
    assert tokens[0, 7:].eq(0).all()  # padding after EOT
    words = tokenizer.vocab
    assert tokens[0, 2].item() == words.index("photo") + 1


def test_tokenizer_errors():
    tok = WordTokenizer(["a", "star"], context_length=4, vocab_size=8)
    with pytest.raises(TokenizerError, match="unknown word 'circle'"):
        tok("a circle")
    with pytest.raises(TokenizerError, match="context_length"):
        tok("a star a star")
    with pytest.raises(TokenizerError, match="vocab_size"):
        WordTokenizer([f"w{i}" for i in range(6)], context_length=4, vocab_size=8)


def test_zero_shot_head_matches_open_clip_logits(clip, tokenizer):
    classnames = CLASSNAMES[:4]
    head = zero_shot_head(clip, tokenizer, classnames, TEMPLATES)
    assert head.shape == (4, 64)
    torch.testing.assert_close(head.norm(dim=1), clip.logit_scale.exp().expand(4))
    clf = classifier_from_clip(clip, head).eval()
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        # open_clip-style zero-shot: normalised image features @ class text embeddings * scale
        texts = open_clip.build_zero_shot_classifier(clip, tokenizer, classnames, TEMPLATES)
        expected = clip.logit_scale.exp() * clip.encode_image(images, normalize=True) @ texts
        logits = clf(images)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(logits.argmax(1), expected.argmax(1))


def test_skeleton_has_the_classifier_keys_and_shapes(clip, tokenizer):
    real = classifier_from_clip(clip, zero_shot_head(clip, tokenizer, CLASSNAMES[:4], TEMPLATES))
    skel = classifier_skeleton(TINY, 4)
    real_sd, skel_sd = real.state_dict(), skel.state_dict()
    assert list(skel_sd) == list(real_sd)
    assert {"head.weight", "head.bias"} <= set(skel_sd)
    assert all(k.startswith(("visual.", "head.")) for k in skel_sd)
    assert all(skel_sd[k].shape == real_sd[k].shape for k in real_sd)
    assert isinstance(skel, ImageClassifier) and not skel.training


def test_resolve_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not found") as err:
        resolve_weights(_cfg(pretrained=str(tmp_path / "missing.safetensors")))
    assert "tags of 'raysoup-tiny-vit': none" in str(err.value)
    assert "shipped with raysoup: raysoup:tiny-rn-web" in str(err.value)
    with pytest.raises(ModelLoadError, match="laion2b_s34b_b79k") as err:
        resolve_weights(ModelCfg(name="ViT-B-32", pretrained="no-such-tag"))
    assert "openai" in str(err.value) and "no-such-tag" in str(err.value)
    assert resolve_weights(ModelCfg(name="ViT-B-32", pretrained="openai")).kind == "open_clip_tag"
    with pytest.raises(ModelLoadError, match="unknown open_clip model 'ViT-Nope'"):
        resolve_weights(ModelCfg(name="ViT-Nope", pretrained="openai"))
    with pytest.raises(ModelLoadError, match="no base checkpoint"):
        resolve_weights(_cfg(pretrain=PretrainCfg()))


def test_load_pt_with_weights_only_and_safetensors(clip, tmp_path):
    state = clip.state_dict()
    pt = tmp_path / "clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, pt)
    loaded = load_clip(_cfg(pretrained=str(pt)))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())

    st = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    base = load_clip(_cfg(pretrain=PretrainCfg()), base_checkpoint=st)
    assert torch.equal(base.visual.conv1.weight, clip.visual.conv1.weight)

    # A pickle with arbitrary objects is refused, never unpickled.
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "obj": SimpleNamespace(x=1)}, evil)
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        load_clip(_cfg(pretrained=str(evil)))

    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items() if k != "logit_scale"}, str(bad))
    with pytest.raises(ModelLoadError, match=r"bad.safetensors.*missing \['logit_scale'\]"):
        load_clip(_cfg(pretrained=str(bad)))
    shape = tmp_path / "shape.safetensors"
    save_file({**{k: v.contiguous() for k, v in state.items()},
               "visual.proj": torch.zeros(64, 8)}, str(shape))
    with pytest.raises(ModelLoadError, match="visual.proj has shape"):
        load_clip(_cfg(pretrained=str(shape)))


def test_ensure_base_clip_trains_once_and_caches(tmp_path):
    train = build_split(WORLD, "train")
    splits = SimpleNamespace(train=train, classnames=train.classnames, templates=TEMPLATES)
    cfg = _cfg(pretrain=PretrainCfg(steps=3, batch_size=16, warmup_steps=1, threads=1))
    path = ensure_base_clip(cfg, splits, tmp_path / "base", progress=False)
    manifest = read_base_manifest(path)
    assert manifest["pretrain"]["steps"] == 3 and manifest["model_name"] == TINY
    vocab = base_vocab(path)
    assert set(vocab) <= set(vocabulary(WORLD)) and "cross" in vocab
    stamp = path.stat().st_mtime_ns
    assert ensure_base_clip(cfg, splits, tmp_path / "base", progress=False) == path
    assert path.stat().st_mtime_ns == stamp  # cache hit: not retrained
    clip = load_clip(cfg, base_checkpoint=path)
    tok = get_tokenizer(cfg, vocab)
    head = zero_shot_head(clip, tok, train.classnames, TEMPLATES)
    assert torch.isfinite(head).all() and head.shape == (4, 64)

    # Same config, fresh cache: the same bytes (the seed fixes the random init too).
    torch.manual_seed(12345)  # global RNG state must not leak into the base model
    again = ensure_base_clip(cfg, splits, tmp_path / "base2", progress=False)
    assert again.read_bytes() == path.read_bytes()

    # A corrupted cache entry is reported, not silently used.
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        ensure_base_clip(cfg, splits, tmp_path / "base", progress=False)
    json.loads((tmp_path / "base" / "manifest.json").read_text())  # still valid JSON
    assert np.isfinite(manifest["metrics"]["loss"])
