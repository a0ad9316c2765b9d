"""The base CLIP shipped in the package (experiments/tiny.yaml's `model.pretrained`) and
`raysoup pretrain`, which produced it."""

import json
from pathlib import Path

import pytest

from raysoup.checkpoints.ingredient import file_sha256
from raysoup.cli import main
from raysoup.config import ModelCfg, load_experiment
from raysoup.models.base_models import BaseModelError, read_base_manifest, shipped_base, verify_base

ROOT = Path(__file__).parents[1]
SMALL_WORLD = ["data.world.num_classes=4", "data.world.train_per_class=40",
               "data.world.test_per_class=5", "data.world.shift_per_class=5",
               "model.pretrain.steps=4", "model.pretrain.batch_size=32",
               "model.pretrain.warmup_steps=1", "model.pretrain.threads=1",
               "model.pretrain.web_per_class=40"]


def test_tiny_yaml_starts_from_the_shipped_base_and_its_manifest_holds():
    cfg = load_experiment(ROOT / "experiments" / "tiny.yaml")
    assert cfg.model.pretrain is None and cfg.model.pretrained.startswith("raysoup:")
    weights = shipped_base(cfg.model.pretrained)
    manifest = read_base_manifest(weights)
    assert manifest["sha256"] == file_sha256(weights)
    assert manifest["model_name"] == cfg.model.name
    assert weights.stat().st_size < 8 << 20  # a few MB, shipped in the wheel
    # Its recipe is experiments/tiny_base.yaml, on tiny.yaml's world.
    recipe = load_experiment(ROOT / "experiments" / "tiny_base.yaml")
    assert manifest["recipe"]["command"].startswith("raysoup pretrain experiments/tiny_base.yaml")
    assert manifest["recipe"]["model"] == recipe.model.model_dump(mode="json")
    assert manifest["pretrain"] == recipe.model.pretrain.model_dump(mode="json")
    assert manifest["recipe"]["data"]["world"] == cfg.data.world.model_dump(mode="json")
    # Pre-trained on the broad web corpus: its vocabulary names the shift sets' styles too.
    assert manifest["pretrain"]["corpus"] == "web"
    assert {"sketch", "inverted", "greyscale", "blurry"} <= set(manifest["vocab"])


def test_a_base_is_checked_before_use(tmp_path):
    weights = shipped_base("raysoup:tiny-rn-web")
    model = ModelCfg(name="raysoup-tiny-rn", tokenizer="world", pretrained="raysoup:tiny-rn-web")
    verify_base(weights, model, {"square", "a"})
    with pytest.raises(BaseModelError, match="lacks \\['zebra'\\]"):
        verify_base(weights, model, {"square", "zebra"})
    with pytest.raises(BaseModelError, match="pre-trained for model 'raysoup-tiny-rn'"):
        verify_base(weights, model.model_copy(update={"name": "raysoup-tiny-vit"}), set())
    copy = tmp_path / "clip.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    (tmp_path / "manifest.json").write_text((weights.parent / "manifest.json").read_text())
    with pytest.raises(BaseModelError, match="sha256 does not match"):
        verify_base(copy, model, set())
    with pytest.raises(BaseModelError, match="no such base shipped.*raysoup:tiny-rn-web"):
        shipped_base("raysoup:nope")


def test_pretrain_is_deterministic_and_records_its_recipe(tmp_path, capsys):
    outs = []
    for run in ("a", "b"):
        args = ["pretrain", str(ROOT / "experiments" / "tiny_base.yaml"), "--out",
                str(tmp_path / f"base-{run}"), "--workdir", str(tmp_path / f"work-{run}")]
        assert main(args + [a for o in SMALL_WORLD for a in ("--set", o)]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    a, b = (Path(o["weights"]) for o in outs)
    assert a.read_bytes() == b.read_bytes()  # two runs, identical bytes
    manifest = read_base_manifest(a)
    assert manifest["sha256"] == outs[0]["sha256"] == file_sha256(a)
    assert "--set model.pretrain.steps=4" in manifest["recipe"]["command"]
    assert manifest["recipe"]["data"]["world"]["num_classes"] == 4


def test_pretrain_refuses_a_config_without_pretrain_section(capsys):
    assert main(["pretrain", str(ROOT / "experiments" / "tiny.yaml"), "--out", "/tmp/x"]) == 2
    assert "model.pretrain is not set" in capsys.readouterr().err
