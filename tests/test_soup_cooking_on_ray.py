"""Distributed reduction and the greedy running sum on a real local Ray cluster."""

import json

import numpy as np
import pytest
import torch

from raysoup.checkpoints import write_ingredient
from raysoup.evaluate.evaluator import LOSS_UNIT, EvalSplit
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
    from raysoup.orchestration.reduce_tasks import ingredient_shards, write_soup

    weights = [0.1, 0.2, 0.3, 0.4]
    digests = set()
    for k in (1, 2, 3):
        out = write_soup(tmp_path / f"soup{k}", ingredients, weights, ingredient_shards(ingredients[0], k),
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


N = 256  # held-out images: enough that a killed actor dies mid-evaluation


def heldout_splits(n=N):
    rng = np.random.default_rng(0)
    return {"heldout": EvalSplit(rng.standard_normal((n, 3, 32, 32)).astype(np.float32),
                                 rng.integers(0, CLASSES, n))}


@pytest.fixture(scope="module")
def pool(ray_session):
    """Two half-CPU eval actors, shared by the module's tests (each actor is a process
    importing torch and open_clip, ~5 CPU-s; tests/conftest.py runs the module on one worker)."""
    from raysoup.orchestration.evaluation import EvalPool, EvalWorker

    splits = ray_session.put(heldout_splits())
    actor_cls = ray_session.remote(num_cpus=0.5)(EvalWorker)
    pool = EvalPool(lambda: actor_cls.remote(MODEL, CLASSES, splits, 16), 2)
    yield pool
    pool.stop()


def test_greedy_running_sum_scores_the_soup_it_writes(pool, ingredients, tmp_path):
    import ray

    from raysoup.orchestration.kitchen import RunningSumScorer
    from raysoup.orchestration.reduce_tasks import ingredient_shards, write_soup
    from raysoup.reduce import scaled
    from raysoup.soup import Candidate

    plan = ingredient_shards(ingredients[0], 3)
    scorer = RunningSumScorer(pool, plan)
    cands = [Candidate(p.name, 0.0, p) for p in ingredients]
    def whole(refs, scale):  # one actor, the whole split: (correct, n, mean loss)
        correct, n, units = ray.get(pool.actors[0].evaluate_sum.remote(
            refs, scale, ["heldout"], None, loss=True))["heldout"]
        return correct, n, units * LOSS_UNIT / n

    scorer.start(cands[0])
    # One candidate: both actors score half of held-out each; accuracy and loss (fixed point)
    # are exactly the whole split's.
    [(acc1, loss1)] = scorer.score_with_loss([cands[1]])
    assert whole(scorer.pending[cands[1].name], 1 / 2) == (round(acc1 * N), N, loss1)
    scorer.commit(cands[1])
    assert scorer.current_loss() == loss1  # the committed soup is the one scored
    acc, acc_other = scorer.score([cands[2], cands[3]])  # two side by side, one actor each
    pending = dict(scorer.pending)
    scorer.commit(cands[2])

    # The running sum's candidate weights are bit-identical to the written uniform soup, and
    # the data-parallel / speculative scores equal a whole-split evaluation of that soup.
    for cand, score in ((cands[2], acc), (cands[3], acc_other)):
        shards = ray.get(pending[cand.name])
        candidate = {k: torch.from_numpy(v) for s in shards for k, v in scaled(s, 1 / 3).items()}
        members = [*ingredients[:2], cand.path]
        soup_dir = write_soup(tmp_path / cand.name, members, [1 / 3] * 3, plan, {"recipe": "greedy"})
        assert tensor_digest(candidate) == tensor_digest(read_sharded(soup_dir))
        whole = ray.get(pool.actors[0].evaluate_path.remote(str(soup_dir), ["heldout"]))
        assert whole["heldout"][:2] == (round(score * N), N)


def test_eval_pool_replaces_a_killed_actor(pool, ingredients):
    """An actor killed mid-evaluation: the pool starts a replacement, resubmits the lost call,
    and every evaluation lands with the same scores as an undisturbed run."""
    import ray

    from raysoup.orchestration.evaluation import evaluate_models

    replaced = pool.replaced
    jobs = [(p.name, "ingredient", p, ["heldout"]) for p in ingredients * 3]
    expected = evaluate_models(pool, jobs)
    victims = []

    def kill_once(model, kind, scores):
        if not victims:  # the first result is in: kill the other actor while it is busy
            victims.append(pool.actors[1])
            ray.kill(victims[0])

    got = evaluate_models(pool, jobs, progress=kill_once)
    assert got == expected
    assert pool.replaced >= replaced + 1 and victims[0] not in pool.actors


def test_reduction_task_killed_mid_flight_is_retried(ray_session, ingredients, tmp_path):
    """The worker process running a shard reduction is SIGKILLed (failpoint, once); Ray retries
    the task in a fresh worker and the shard equals an undisturbed one bit for bit."""
    import ray
    from safetensors.torch import load_file

    from raysoup.checkpoints import read_manifest
    from raysoup.faults import ENV
    from raysoup.orchestration.reduce_tasks import _reduce_to_file, ingredient_shards

    names = ingredient_shards(ingredients[0], 1)[0]
    dtypes = {n: t["dtype"] for n, t in read_manifest(ingredients[0])["tensors"].items()}
    from raysoup.reduce import Blend

    paths, weights = [str(p) for p in ingredients], Blend((0.25,) * 4)
    marker = tmp_path / "killed-once"
    env = {"env_vars": {ENV: f"reduce.shard=1:once={marker}"}}
    killed = _reduce_to_file.options(runtime_env=env).remote(
        paths, weights, names, str(tmp_path / "killed.safetensors"), dtypes)
    clean = _reduce_to_file.remote(paths, weights, names, str(tmp_path / "clean.safetensors"), dtypes)
    ray.get([killed, clean])
    assert marker.exists()  # the failpoint really fired (and killed the first attempt)
    a, b = load_file(tmp_path / "killed.safetensors"), load_file(tmp_path / "clean.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob(".tmp-*"))


def test_soups_are_cooked_again_when_their_candidate_set_changes(ray_session, ingredients,
                                                                 tmp_path):
    """Two more ingredients (an import): every soup is cooked again from all of them, the old
    soup's result rows no longer count, and the new soup gets its own MLflow run."""
    from raysoup.evaluate import results as res
    from raysoup.orchestration.soup_stage import candidate_set, cook_soups
    from raysoup.soup import Candidate
    from raysoup.tracking import Tracker, default_uri
    from raysoup.workdir import SoupRecord, cooked_soup_id

    soups, recipes = tmp_path / "soups", ["uniform", "ensemble"]
    cands = [Candidate(p.name, 0.5, p) for p in ingredients]
    out = cook_soups(recipes, cands[:2], soups, 2, pool=None)
    old = {r: cooked_soup_id(d) for r, d in out.items()}
    table = res.merge(res.empty(), [res.rows(SoupRecord.read(d).name, "soup", {"test": (1, 2)}, old[r])
                                    for r, d in out.items()])
    stamp = (soups / "uniform" / "recipe.json").stat().st_mtime_ns
    cook_soups(recipes, cands[:2], soups, 2, pool=None)  # the same set: nothing to do
    assert (soups / "uniform" / "recipe.json").stat().st_mtime_ns == stamp

    out = cook_soups(recipes, cands, soups, 2, pool=None)
    names = sorted(c.name for c in cands)
    new = {}
    for recipe, soup_dir in out.items():
        record = SoupRecord.read(soup_dir)
        assert sorted(record.ingredients) == names
        assert sorted(record.cooked_from.candidates) == names
        assert record.soup_id != old[recipe]
        new[record.name] = record.soup_id
    assert res.done_pairs(table, new) == set()
    assert res.done_pairs(table, {"uniform_soup": old["uniform"], "ensemble": old["ensemble"]}) \
        == {("uniform_soup", "test"), ("ensemble", "test")}

    tracker = Tracker(default_uri(tmp_path), "exp", workdir=tmp_path)
    parent = tracker.sweep_run()
    runs = {tracker.soup_run(parent, "uniform", [], [], {}, [], identity=i)
            for i in (old["uniform"], new["uniform_soup"], old["uniform"])}
    assert len(runs) == 2

    # An ingredient replaced under the same name is another candidate set too.
    replaced = tmp_path / ingredients[0].name
    state = {k: v + 1 if v.is_floating_point() else v
             for k, v in __import__("safetensors.torch").torch.load_file(
                 ingredients[0] / "model.safetensors").items()}
    write_ingredient(replaced, state, read_manifest_meta(ingredients[0]))
    swapped = [Candidate(replaced.name, 0.5, replaced), *cands[1:2]]
    assert candidate_set(swapped, None).soup_id != old["uniform"]
    assert candidate_set(cands[:2], None).soup_id == old["uniform"]


def read_manifest_meta(path):
    from raysoup.checkpoints import read_manifest

    meta = read_manifest(path)
    return {k: v for k, v in meta.items() if k not in ("format", "sha256", "tensors", "bytes")}
