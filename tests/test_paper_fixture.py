"""The paper's config, end to end, on the generated ImageNet-shaped fixture: the same code path
as the ViT-B/32 ImageNet run (ImageFolders, 1000 wnid classes, `classnames: imagenet`, OpenAI
templates (two of the 80), an ImageNetV2 folder of index dirs, R/A class subsets, ObjectNet's
class map), with `--set` overrides only: the tiny 224-px CLIP, the fixture's paths, 1 trial —
and a memory budget of 0, so the trial streams its input through DataLoader workers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from driver import finish

from raysoup.data.images import DECODE_LOG_ENV
from raysoup.data.sources import resolve_templates
from raysoup.fixture import fixture_overrides

OPENAI_TEMPLATES = resolve_templates("openai_imagenet")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"heldout", "test", "imagenet_v2", "imagenet_r", "imagenet_sketch", "imagenet_a",
          "objectnet"}


def test_paper_config_runs_on_the_imagenet_shaped_fixture(imagenet_fixture, tmp_path):
    work = tmp_path / "run"
    decodes = tmp_path / "decodes.log"  # every process appends the image it decodes
    sets = [*fixture_overrides(imagenet_fixture, num_samples=1), "data.memory_budget_mb=0",
            # greedy only: the soups' recipes are the other e2e tests' business; this one is
            # about the paper's data layout (each soup is one more 224-px evaluation here)
            "soup.recipes=[greedy]", "sweep.anytime.enabled=false",
            # One trial and one eval actor at a time: each more is a process importing torch
            # and open_clip (~5 CPU-s); their concurrency is the other e2e tests' business.
            "sweep.max_concurrent=1", "eval.num_actors=1",
            # Two of the 80 OpenAI templates: the head's code path is the same for any number
            # (that the set resolves to all 80: test_data.py); 80 x 1000 prompts cost ~15 CPU-s.
            f"data.templates={json.dumps(OPENAI_TEMPLATES[:2])}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "raysoup.cli", "run",
         str(REPO / "experiments" / "clip_vit_b32_imagenet.yaml"), "--workdir", str(work),
         *[a for s in sets for a in ("--set", s)]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, DECODE_LOG_ENV: str(decodes)})
    rc, out, err = finish(proc, timeout=900)
    assert rc == 0, err[-4000:]
    rows = pq.read_table(work / "results.parquet").to_pylist()
    models = {r["model"] for r in rows}
    assert {"zeroshot", "trial-000", "greedy_soup"} <= models
    for model in models:
        assert {r["split"] for r in rows if r["model"] == model} == SPLITS
    n = {r["split"]: r["n"] for r in rows if r["model"] == "zeroshot"}
    # Every image of every split was scored: ImageNetV2's index dirs map onto the wnids, the
    # 200-class subsets and the ObjectNet groups keep their own images.
    fx = imagenet_fixture
    count = {name: sum(1 for p in Path(fx[key]).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
             for name, key in [("test", "val"), ("imagenet_v2", "imagenet_v2"),
                               ("imagenet_r", "imagenet_r"), ("imagenet_a", "imagenet_a"),
                               ("imagenet_sketch", "imagenet_sketch")]}
    for name, c in count.items():
        assert n[name] == c, name
    mapped = json.loads(Path(fx["objectnet_class_map"]).read_text())
    assert n["objectnet"] == sum(1 for d in mapped for p in (Path(fx["objectnet"]) / d).iterdir())
    # One eval cache per split, each complete, at the model's 224-px input.
    manifests = [json.loads(m.read_text()) for m in (work / "cache" / "eval").glob("*/manifest.json")]
    assert sorted(m["split"] for m in manifests) == sorted(SPLITS)
    assert all(m["image_size"] == 224 for m in manifests)
    assert "zero-shot" in out and "greedy_soup" in out
    # No eval image was decoded twice: evaluating 3 models (ingredients and a soup) streams
    # the cache.
    seen: dict[str, int] = {}
    for line in decodes.read_text().splitlines():
        seen[line] = seen.get(line, 0) + 1
    eval_files = [str(p) for key in ("val", "imagenet_v2", "imagenet_r", "imagenet_a",
                                     "imagenet_sketch", "objectnet")
                  for p in Path(fx[key]).rglob("*") if p.is_file()]
    decoded = [f for f in eval_files if f in seen]
    assert len(decoded) == sum(n[s] for s in SPLITS - {"heldout"})
    assert all(seen[f] == 1 for f in decoded)
