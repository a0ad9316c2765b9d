"""The workdir's records read and write exactly the bytes the pipeline has always written:
tests/data/workdir_records holds files of a real `raysoup run experiments/tiny.yaml` workdir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from raysoup.checkpoints import write_ingredient
from raysoup.config import load_experiment
from raysoup.workdir import (
    CandidateSet,
    IngredientManifest,
    SoupRecord,
    Workdir,
    ensemble_members,
    inference_costs,
    write_recipe_file,
)

DATA = Path(__file__).parent / "data" / "workdir_records"
SOUPS = sorted((DATA / "soups").glob("*.json"))
MANIFESTS = sorted((DATA / "ingredients").glob("*.json"))


@pytest.mark.parametrize("file", SOUPS, ids=lambda p: p.stem)
def test_soup_record_round_trips_byte_for_byte(file, tmp_path):
    text = file.read_text()
    record = SoupRecord.from_dict(json.loads(text), tmp_path / file.stem)
    assert write_recipe_file(tmp_path, record.as_dict()).read_text() == text
    assert record.name == json.loads(text)["model"]
    assert record.soup_id == json.loads(text)["soup_id"]
    # The id is the hash of the set it names.
    assert CandidateSet.of(record.cooked_from.candidates, record.cooked_from.anchor) \
        == record.cooked_from


@pytest.mark.parametrize("file", MANIFESTS, ids=lambda p: p.stem)
def test_manifest_round_trips_byte_for_byte(file):
    text = file.read_text()
    manifest = IngredientManifest.from_dict(json.loads(text))
    assert manifest.text() == text
    assert manifest.as_dict() == json.loads(text)
    assert manifest.kind in ("zeroshot", "ingredient") and manifest.num_classes > 0


def test_config_snapshot_round_trips_byte_for_byte(tmp_path):
    from raysoup.workdir.snapshot import snapshot_config

    text = (DATA / "experiment.yaml").read_text()
    (tmp_path / "experiment.yaml").write_text(text)
    cfg = load_experiment(tmp_path / "experiment.yaml")
    assert yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False) == text
    snapshot_config(cfg, tmp_path)  # an unchanged config leaves the file as it is
    assert (tmp_path / "experiment.yaml").read_text() == text


def test_manifest_writer_matches_the_format(tmp_path):
    """What write_ingredient wrote before the record existed, spelled out."""
    meta = {"kind": "ingredient", "name": "renamed", "metrics": {"acc": np.float32(0.5)},
            "path": tmp_path / "x"}
    written = write_ingredient(tmp_path / "trial-007", {"w": torch.ones(2, 3)}, meta)
    text = (tmp_path / "trial-007" / "manifest.json").read_text()
    expected = {"format": "raysoup.ingredient/1", "name": "trial-007", **meta,
                "metrics": {"acc": 0.5}, "path": str(tmp_path / "x"),
                "sha256": written["sha256"], "tensors": {"w": {"shape": [2, 3],
                                                               "dtype": "float32"}},
                "bytes": written["bytes"]}
    assert text == json.dumps(expected, indent=2) + "\n"
    assert IngredientManifest.read(tmp_path / "trial-007").text() == text


def test_ensemble_record_and_costs(tmp_path):
    from raysoup.orchestration.soup_stage import write_result
    from raysoup.soup import RecipeResult

    work = Workdir(tmp_path)
    ing = work.ingredient("a")
    write_ingredient(ing, {"w": torch.ones(2)}, {"kind": "ingredient"})
    result = RecipeResult(["a"], [1.0], kind="ensemble", info={"inference_cost": 2})
    write_result(work.soup("ensemble"), "ensemble", result, {"a": ing}, [])
    text = (work.soup("ensemble") / "recipe.json").read_text()
    assert text == json.dumps({"recipe": "ensemble", "model": "ensemble", "kind": "ensemble",
                               "ingredients": ["a"], "weights": [1.0], "trace": [],
                               "inference_cost": 2, "paths": ["../../ingredients/a"]}, indent=2)
    assert ensemble_members(work.soup("ensemble")) == [ing.resolve()]
    assert inference_costs(work.soups) == {"ensemble": 2}


def test_old_records_read():
    """A recipe.json from before soups recorded their model name and candidate set."""
    record = SoupRecord.from_dict({"recipe": "uniform", "ingredients": ["a"], "weights": [1.0]})
    assert (record.name, record.kind, record.soup_id, record.inference_cost) == (
        "uniform_soup", "soup", None, 1)


def test_workdir_records_and_export_import_no_ray_or_mlflow():
    code = ("import sys, raysoup.workdir, raysoup.export.command; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    # config.py still imports the merge registry (torch) until it is made lazy.
    assert "ray" not in out and "mlflow" not in out
