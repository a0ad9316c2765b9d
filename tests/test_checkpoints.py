"""Ingredient files (raysoup/checkpoints): written with a manifest, read back bit for bit,
verified (a flipped byte, a truncated file, a missing or bad manifest each an error naming
the file), listed only when complete, stale temporaries removed."""
import json
import re

import pytest
import torch

from raysoup.checkpoints import (
    FORMAT,
    IngredientError,
    list_ingredients,
    load_state_dict,
    read_manifest,
    verify_ingredient,
    write_ingredient,
)


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "visual.proj": torch.randn(8, 4, generator=g),
        "visual.ln.weight": torch.randn(4, generator=g).to(torch.bfloat16),
        "visual.positions": torch.arange(5),
        "head.weight": torch.randn(4, 3, generator=g).t(),  # non-contiguous on purpose
        "head.bias": torch.randn(3, generator=g),
    }


META = {"kind": "finetune", "hparams": {"lr": 1e-4}, "metrics": {"train_acc": 0.5},
        "base_model": "raysoup-tiny-vit", "model_name": "raysoup-tiny-vit", "num_classes": 3}


def test_round_trip_and_manifest(tmp_path):
    state = _state()
    manifest = write_ingredient(tmp_path / "trial_1", state, META)
    d = tmp_path / "trial_1"
    assert read_manifest(d) == manifest
    assert manifest["format"] == FORMAT and manifest["name"] == "trial_1"
    assert manifest["hparams"] == {"lr": 1e-4} and manifest["num_classes"] == 3
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["sha256"])
    assert manifest["bytes"] == (d / "model.safetensors").stat().st_size
    assert manifest["tensors"]["visual.proj"] == {"shape": [8, 4], "dtype": "float32"}
    assert manifest["tensors"]["visual.ln.weight"]["dtype"] == "bfloat16"
    assert manifest["tensors"]["visual.positions"]["dtype"] == "int64"
    loaded = load_state_dict(d, verify=True)
    assert set(loaded) == set(state)
    for name, t in state.items():
        assert loaded[name].dtype == t.dtype
        assert torch.equal(loaded[name], t), name
    assert verify_ingredient(d)["sha256"] == manifest["sha256"]
    # No temp directories left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["trial_1"]


def test_overwrite_replaces_existing(tmp_path):
    d = tmp_path / "trial_1"
    write_ingredient(d, _state(0), META)
    m2 = write_ingredient(d, _state(1), {**META, "kind": "retry"})
    assert read_manifest(d)["kind"] == "retry"
    assert torch.equal(load_state_dict(d)["visual.proj"], _state(1)["visual.proj"])
    assert read_manifest(d)["sha256"] == m2["sha256"]
    assert [p.name for p in tmp_path.iterdir()] == ["trial_1"]


def test_flipped_byte_is_detected(tmp_path):
    d = tmp_path / "ing"
    write_ingredient(d, _state(), META)
    weights = d / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside the tensor data: still a valid file, wrong content
    weights.write_bytes(bytes(data))
    with pytest.raises(IngredientError, match=re.escape(str(weights)) + ".*sha256"):
        verify_ingredient(d)
    with pytest.raises(IngredientError, match="sha256"):
        load_state_dict(d, verify=True)


def test_truncated_file_is_an_error_even_without_verify(tmp_path):
    d = tmp_path / "ing"
    write_ingredient(d, _state(), META)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    with pytest.raises(IngredientError, match=re.escape(str(weights)) + ".*truncated"):
        load_state_dict(d)


def test_missing_and_bad_manifest(tmp_path):
    with pytest.raises(IngredientError, match="no manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(IngredientError, match="other/9"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(IngredientError, match="invalid JSON"):
        read_manifest(tmp_path)


def test_meta_errors(tmp_path):
    with pytest.raises(IngredientError, match="sha256"):
        write_ingredient(tmp_path / "a", _state(), {"sha256": "x"})
    with pytest.raises(IngredientError, match="JSON"):
        write_ingredient(tmp_path / "b", _state(), {"obj": object()})
    assert list(tmp_path.iterdir()) == []  # failed writes leave nothing behind


def test_list_ingredients_only_complete(tmp_path):
    assert list_ingredients(tmp_path / "absent") == []
    for name in ["b", "a", "c"]:
        write_ingredient(tmp_path / name, _state(), META)
    (tmp_path / ".tmp-d-123").mkdir()  # an interrupted write
    (tmp_path / ".tmp-d-123" / "manifest.json").write_text("{}")
    (tmp_path / "e").mkdir()  # no manifest
    (tmp_path / "notes.txt").write_text("x")
    assert list_ingredients(tmp_path) == [tmp_path / "a", tmp_path / "b", tmp_path / "c"]


def test_remove_stale_tmp_leaves_complete_ingredients(tmp_path):
    from raysoup.checkpoints.ingredient import remove_stale_tmp

    write_ingredient(tmp_path / "trial-000", {"w": torch.ones(2)}, {"kind": "ingredient"})
    (tmp_path / ".tmp-trial-001-abc").mkdir()  # a writer killed mid-write
    (tmp_path / ".old-trial-000-def").mkdir()
    assert remove_stale_tmp(tmp_path) == [".old-trial-000-def", ".tmp-trial-001-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trial-000"]
