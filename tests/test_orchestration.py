"""Distributed reduction and the greedy running sum on a real local Ray cluster."""

import json

import numpy as np
import pytest
import torch

from raysoup.checkpoints import write_ingredient
from raysoup.evaluate.evaluator import EvalSplit
from raysoup.models.classifier import classifier_skeleton
from raysoup.reduce import read_sharded, tensor_digest

MODEL, CLASSES = "raysoup-tiny-vit", 3


@pytest.fixture(scope="module")
def ingredients(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingredients")
    torch.manual_seed(0)
    base = classifier_skeleton(MODEL, CLASSES).state_dict()
    paths = []
    for i in range(4):
        state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.items()}
        paths.append(root / f"trial-{i:03d}")
        write_ingredient(paths[-1], state, {"kind": "ingredient", "model_name": MODEL, "num_classes": CLASSES})
    return paths


def test_soup_bytes_identical_for_any_shard_count(ray_session, ingredients, tmp_path):
    from raysoup.orchestration.reduction import shard_plan, write_soup

    weights = [0.1, 0.2, 0.3, 0.4]
    digests = set()
    for k in (1, 2, 3):
        out = write_soup(tmp_path / f"soup{k}", ingredients, weights, shard_plan(ingredients[0], k),
                         {"recipe": "test"})
        recipe = json.loads((out / "recipe.json").read_text())
        assert recipe["num_shards"] == k and len(recipe["shards_sha256"]) == k
        assert not list(tmp_path.glob(".tmp-*"))  # no half-written directory left behind
        digests.add(tensor_digest(read_sharded(out)))
    assert len(digests) == 1

    # ... and equals the float64 reference average within float32 rounding.
    soup = read_sharded(tmp_path / "soup2")
    states = [__import__("safetensors.torch").torch.load_file(p / "model.safetensors") for p in ingredients]
    for name, value in soup.items():
        ref = sum(w * s[name].double() for w, s in zip(weights, states))
        torch.testing.assert_close(value.double(), ref, rtol=1e-6, atol=1e-6)


def test_greedy_running_sum_scores_the_soup_it_writes(ray_session, ingredients, tmp_path):
    import ray

    from raysoup.orchestration.evaluation import EvalWorker
    from raysoup.orchestration.reduction import shard_plan, write_soup
    from raysoup.orchestration.souping import RunningSumScorer
    from raysoup.soup import Candidate

    rng = np.random.default_rng(0)
    splits = {"heldout": EvalSplit(rng.standard_normal((64, 3, 32, 32)).astype(np.float32),
                                   rng.integers(0, CLASSES, 64))}
    actor = ray.remote(EvalWorker).remote(MODEL, CLASSES, splits, 16)
    plan = shard_plan(ingredients[0], 3)
    scorer = RunningSumScorer(actor, plan)
    cands = [Candidate(p.name, 0.0, p) for p in ingredients]
    scorer.start(cands[0])
    scorer.try_add(cands[1])
    scorer.commit()
    acc = scorer.try_add(cands[2])

    # The running sum's candidate weights are bit-identical to the written uniform soup.
    shards = ray.get(scorer.pending)
    from raysoup.reduce import scaled

    candidate = {k: torch.from_numpy(v) for s in shards for k, v in scaled(s, 1 / 3).items()}
    soup_dir = write_soup(tmp_path / "greedy", ingredients[:3], [1 / 3] * 3, plan, {"recipe": "greedy"})
    assert tensor_digest(candidate) == tensor_digest(read_sharded(soup_dir))
    correct, n = ray.get(actor.evaluate_path.remote(str(soup_dir), ["heldout"]))["heldout"]
    assert acc == correct / n
