"""WiSE-FT, Model Stock, learned soup and the ensemble cooked by the real soup driver on a real
local Ray cluster, from tiny real ingredients (open_clip ModifiedResNet with BatchNorm buffers)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from raysoup.checkpoints import write_ingredient
from raysoup.config import SoupCfg
from raysoup.evaluate.evaluator import EvalSplit
from raysoup.models.classifier import classifier_skeleton
from raysoup.reduce import read_sharded, tensor_digest
from raysoup.soup import Candidate

MODEL, CLASSES = "raysoup-tiny-rn", 3
RECIPES = ["wiseft", "model_stock", "learned", "ensemble"]


@pytest.fixture(scope="module")
def kitchen_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    torch.manual_seed(0)
    base = classifier_skeleton(MODEL, CLASSES).state_dict()
    meta = {"model_name": MODEL, "num_classes": CLASSES}
    write_ingredient(root / "ingredients" / "zeroshot", base, {"kind": "zeroshot", **meta})
    for i in range(3):
        # Fine-tuning moves every weight and advances BatchNorm's step counters.
        state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v + 100
                 for k, v in base.items()}
        write_ingredient(root / "ingredients" / f"trial-{i:03d}", state,
                         {"kind": "ingredient", **meta})
    rng = np.random.default_rng(0)
    splits = {"heldout": EvalSplit(rng.standard_normal((64, 3, 32, 32)).astype(np.float32),
                                   rng.integers(0, CLASSES, 64))}
    return root, splits


@pytest.fixture(scope="module")
def pool(ray_session, kitchen_setup):
    """Two half-CPU eval actors holding the held-out split, shared by the module's tests
    (each actor is a process importing torch and open_clip, ~5 CPU-s; tests/conftest.py runs
    the module on one worker)."""
    from raysoup.orchestration.evaluation import EvalPool, EvalWorker

    actor_cls = ray_session.remote(num_cpus=0.5)(EvalWorker)
    ref = ray_session.put(kitchen_setup[1])
    pool = EvalPool(lambda: actor_cls.remote(MODEL, CLASSES, ref, 16), 2)
    yield pool
    pool.stop()


def test_new_recipes_cooked_on_ray(pool, kitchen_setup):
    import ray

    from raysoup.orchestration.evaluation import EvalWorker
    from raysoup.orchestration.kitchen import RayKitchen
    from raysoup.orchestration.reduce_tasks import ingredient_shards
    from raysoup.orchestration.soup_stage import cook_soups
    from raysoup.soup.base import by_heldout
    from raysoup.workdir import SoupRecord

    root, splits = kitchen_setup
    ing = root / "ingredients"
    local = EvalWorker(MODEL, CLASSES, splits, 16)

    def candidate(name: str) -> Candidate:  # held-out accuracy as the evaluate stage has it
        correct, n, _ = local.evaluate_path(str(ing / name), ["heldout"])["heldout"]
        return Candidate(name, correct / n, ing / name)

    anchor = candidate("zeroshot")
    cands = [candidate(f"trial-{i:03d}") for i in range(3)]
    best = by_heldout(cands)[0]
    cfg = SoupCfg(recipes=RECIPES, learned={"steps": 3, "batch_size": 32},
                  wiseft={"alphas": [0.0, 0.5, 1.0], "curve": [0.25]})
    soups = cook_soups(RECIPES, cands, root / "soups", 2, pool, cfg=cfg, anchor=anchor)
    assert sorted(soups) == sorted(RECIPES)
    meta = {r: json.loads((d / "recipe.json").read_text()) for r, d in soups.items()}

    # WiSE-FT: [zeroshot, best by held-out]; the chosen α's held-out score is exactly that
    # of the soup written to disk (same reduction, same bits).
    w = meta["wiseft"]
    assert w["ingredients"] == ["zeroshot", best.name] and w["alpha"] in (0.0, 0.5, 1.0)
    assert [t["alpha"] for t in w["trace"]] == [0.0, 0.5, 1.0]
    chosen = next(t["heldout"] for t in w["trace"] if t["chosen"])
    correct, n, _ = local.evaluate_path(str(soups["wiseft"]), ["heldout"])["heldout"]
    assert correct / n == chosen
    if w["alpha"] == 1.0:
        assert tensor_digest(read_sharded(soups["wiseft"])) == tensor_digest(
            load_file(str(best.path / "model.safetensors")))
    # α = 0 and 1 are not scored again: the ends of the line, reduced and scored in the
    # kitchen, are the anchor's and the best model's own held-out accuracies.
    kitchen = RayKitchen(pool, ingredient_shards(best.path, 2), anchor)
    ends = kitchen.score([anchor.path, best.path], [[1.0, 0.0], [0.0, 1.0]])
    assert ends == [anchor.heldout, best.heldout]
    assert [w["trace"][0]["heldout"], w["trace"][-1]["heldout"]] == ends
    # The report's curve: α = 0.25 scored on every split the actors hold.
    [point] = w["curve"]
    assert point["alpha"] == 0.25 and set(point) == {"alpha", *splits}

    # Model Stock: per-tensor weights [1-t, t/k, ...] reproduce the float64 formula.
    m = meta["model_stock"]
    assert m["ingredients"] == ["zeroshot", "trial-000", "trial-001", "trial-002"]
    states = [load_file(str(ing / n / "model.safetensors")) for n in m["ingredients"]]
    soup = read_sharded(soups["model_stock"])
    name = "head.weight"
    t = next(e["t"] for e in m["trace"] if e["tensor"] == name)
    deltas = [(s[name].double() - states[0][name].double()).flatten() for s in states[1:]]
    cos = np.mean([float(torch.nn.functional.cosine_similarity(deltas[i], deltas[j], dim=0))
                   for i in range(3) for j in range(i + 1, 3)])
    assert t == pytest.approx(3 * cos / (1 + 2 * cos), rel=1e-9)
    expected = t * sum(s[name].double() for s in states[1:]) / 3 + (1 - t) * states[0][name]
    torch.testing.assert_close(soup[name].double(), expected, rtol=1e-5, atol=1e-6)
    # Integer buffers come from the first fine-tuned ingredient, not the anchor.
    assert torch.equal(soup["visual.bn1.num_batches_tracked"],
                       states[1]["visual.bn1.num_batches_tracked"])

    # Learned: per-layer coefficients on the simplex, learned in an eval actor.
    ln = meta["learned"]
    assert len(ln["trace"]) == 3 and ln["per_layer"] is True
    assert set(ln["tensor_weights"]) >= {"head.weight", "visual.bn1.running_mean"}
    for weights in ln["tensor_weights"].values():
        assert sum(weights) == pytest.approx(1.0, abs=1e-5) and min(weights) > 0
    assert ln["memory"]["peak_rss_mib"] > 0

    # Ensemble: no weights written; evaluated by loading members one at a time.
    e = meta["ensemble"]
    assert e["kind"] == "ensemble" and e["inference_cost"] == 3
    assert not list(soups["ensemble"].glob("*.safetensors"))
    assert (SoupRecord.read(soups["ensemble"]).name,
            SoupRecord.read(soups["ensemble"]).kind) == ("ensemble", "ensemble")
    assert (SoupRecord.read(soups["wiseft"]).name,
            SoupRecord.read(soups["wiseft"]).kind) == ("wiseft_soup", "soup")
    on_ray = ray.get(pool.actors[0].evaluate_path.remote(str(soups["ensemble"]), ["heldout"]))
    members = [lambda p=p: load_file(str(p / "model.safetensors")) for p in
               (c.path for c in cands)]
    assert on_ray == local.evaluator.ensemble_score(members, ["heldout"], bits=True)
    correct, n, bits = on_ray["heldout"]  # per-image correctness from the same pass
    assert int(np.unpackbits(np.frombuffer(bits, np.uint8), count=n).sum()) == correct


def test_every_method_same_bits_for_1_and_3_shards(pool, kitchen_setup):
    """Every registered method cooked by the driver on Ray with 1 and 3 shards writes the same
    soup bit for bit; a task-vector soup's chosen λ scored on held-out exactly what it writes."""
    from raysoup.orchestration.evaluation import EvalWorker
    from raysoup.orchestration.soup_stage import cook_soups
    from raysoup.soup.registry import METHODS

    root, splits = kitchen_setup
    ing = root / "ingredients"
    anchor = Candidate("zeroshot", 0.3, ing / "zeroshot")
    cands = [Candidate(f"trial-{i:03d}", 0.4 + 0.1 * i, ing / f"trial-{i:03d}") for i in range(3)]
    methods = sorted(METHODS)
    cfg = SoupCfg(recipes=methods, learned={"steps": 2, "batch_size": 32},
                  wiseft={"alphas": [0.0, 0.5, 1.0], "curve": []},
                  task_arithmetic={"lambdas": [0.2, 0.4]},
                  ties={"lambdas": [0.5, 1.0]}, dare={"lambdas": [0.2, 0.4]})
    local = EvalWorker(MODEL, CLASSES, splits, 16)
    cooked = {k: cook_soups(methods, cands, root / f"soups-{k}", k, pool, cfg=cfg,
                            anchor=anchor) for k in (1, 3)}
    for name in methods:
        one, three = cooked[1][name], cooked[3][name]
        meta = json.loads((three / "recipe.json").read_text())
        if meta["kind"] == "ensemble":
            continue
        assert meta["num_shards"] == 3
        assert tensor_digest(read_sharded(one)) == tensor_digest(read_sharded(three)), name
        if "merge" in meta:
            chosen = next(t["heldout"] for t in meta["trace"] if t["chosen"])
            correct, n, _ = local.evaluate_path(str(three), ["heldout"])["heldout"]
            assert correct / n == chosen, name
            assert meta["ingredients"][0] == "zeroshot" and meta["lambda"] == meta["merge"]["scale"]
