"""`soup_checkpoints(..., heldout=HeldOut(...))` cooks the scored methods in this process and
makes the soup stage's choices and bits: the same ingredients and held-out split go through
the stage's own path (real Ray: eval cache tasks, an eval actor, the Ray kitchen, the sharded
writer) and through the local one, and the soups must be equal tensor for tensor."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from raysoup.api import HeldOut, SoupCheckpointsError, soup_checkpoints
from raysoup.checkpoints.importer import preprocess_of
from raysoup.checkpoints.ingredient import write_ingredient
from raysoup.models.families import DEFAULT_FAMILY, get_family

MODEL = "raysoup-tiny-vit"  # a config shipped in raysoup/models/configs: Ray workers know it
CLASSES = 4
BATCH = 8
RECIPES = {"greedy": {}, "wiseft": {"alphas": [0.0, 0.5, 1.0]},
           "task_arithmetic": {"lambdas": [0.3, 1.0]}}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A zero-shot ingredient, three fine-tuned ones around it, and a held-out ImageFolder
    (4 classes × 5 random 32-px PNGs)."""
    return _write_case(tmp_path_factory.mktemp("heldout-soup"), CLASSES, 5)


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    """The same for a two-class task (2 classes × 12 PNGs): greedy by F1 or MCC. (Seed 1: a
    case where greedy by accuracy keeps other ingredients than by F1 and by MCC.)"""
    return _write_case(tmp_path_factory.mktemp("heldout-two-class"), 2, 12, seed=1)


def _write_case(root, classes: int, per_class: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    base = get_family(DEFAULT_FAMILY).skeleton(MODEL, classes).state_dict()
    meta = {"kind": "imported", "model_name": MODEL, "num_classes": classes,
            "preprocess": preprocess_of(MODEL)}
    write_ingredient(root / "ingredients" / "zeroshot", base, meta)
    for i in range(3):
        state = {k: v + 0.2 * torch.randn_like(v) if v.is_floating_point() else v
                 for k, v in base.items()}
        write_ingredient(root / "ingredients" / f"trial-{i}", state, meta)
    dirs = {d.name: d for d in (root / "ingredients").iterdir()}
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / "heldout" / f"class_{c}").mkdir(parents=True)
        for j in range(per_class):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "heldout" / f"class_{c}" / f"{j}.png")
    return {"root": root, "dirs": dirs, "heldout": root / "heldout"}


def _stage_soups(case, ray_session) -> dict:
    """The soup stage's path: eval cache by Ray tasks, the evaluate stage's accuracies, then
    `cook_soups` with the Ray kitchen and the sharded writer."""
    from raysoup.data.imagefolder import read_imagefolder
    from raysoup.orchestration.evaluation import EvalPool, build_eval_cache, evaluate_models
    from raysoup.orchestration.soup_stage import cook_soups
    from raysoup.reduce import read_sharded
    from raysoup.soup import Candidate, get_recipe

    work = case["root"] / "work"
    splits = build_eval_cache({"heldout": read_imagefolder(case["heldout"])}, work,
                              preprocess_of(MODEL), 1000)
    cfg = SimpleNamespace(eval=SimpleNamespace(cpus_per_actor=1, gpus_per_actor=0,
                                               batch_size=BATCH))
    pool = EvalPool.start(cfg, ray_session.put(splits), MODEL, CLASSES, 1)
    try:
        tuned = {n: p for n, p in case["dirs"].items() if n != "zeroshot"}
        scored = evaluate_models(pool, [(n, "trial", p, ["heldout"]) for n, p in tuned.items()])
        accs = {n: s["heldout"][0] / s["heldout"][1] for n, _, s in scored}
        candidates = [Candidate(n, accs[n], p) for n, p in tuned.items()]
        anchor = Candidate("zeroshot", float("nan"), case["dirs"]["zeroshot"])

        class Settings:  # the `soup` config section: each method's settings by name
            def __getattr__(self, name):
                return get_recipe(name).Settings(**RECIPES[name])

        soups = cook_soups(list(RECIPES), candidates, work / "soups", 2, pool, Settings(),
                           anchor)
    finally:
        pool.stop()
    return {name: (read_sharded(d), json.loads((d / "recipe.json").read_text()))
            for name, d in soups.items()}


def test_scored_methods_cook_the_soup_stages_bits(case, ray_session, tmp_path):
    stage = _stage_soups(case, ray_session)
    # The case makes greedy decide both ways (an acceptance after the first ingredient, and a
    # rejection), so a wrong ranking or score would change the soup's bytes.
    decisions = [d["accepted"] for d in stage["greedy"][1]["trace"][1:]]
    assert True in decisions and False in decisions, stage["greedy"][1]["trace"]
    tuned = [d for n, d in sorted(case["dirs"].items()) if n != "zeroshot"]
    held = HeldOut(case["heldout"], batch_size=BATCH)  # the model: from the manifests
    for recipe, settings in RECIPES.items():
        base = case["dirs"]["zeroshot"] if recipe != "greedy" else None
        local = load_file(str(soup_checkpoints(tuned, recipe, out=tmp_path / f"{recipe}"
                                               ".safetensors", heldout=held, base=base,
                                               **settings)))
        expected = stage[recipe][0]
        assert set(local) == set(expected), recipe
        for name, tensor in expected.items():
            want = torch.as_tensor(np.asarray(tensor))
            assert torch.equal(local[name], want.to(local[name].dtype)), (recipe, name)


def test_learned_soup_learns_locally(case, tmp_path):
    tuned = [d for n, d in sorted(case["dirs"].items()) if n != "zeroshot"]
    soup = soup_checkpoints(tuned, "learned", out=tmp_path / "l.safetensors", steps=2,
                            batch_size=8, per_layer=False,
                            heldout=HeldOut(case["heldout"], model=MODEL, batch_size=BATCH))
    weights = load_file(str(soup))
    theta = [load_file(str(d / "model.safetensors")) for d in tuned]
    # A convex mix the uniform start moved away from (2 steps of Adam at lr 0.05).
    name = "head.weight"
    uniform = sum(t[name] for t in theta) / len(theta)
    assert not torch.allclose(weights[name], uniform)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"method": "greedy"}, "pass heldout=raysoup.HeldOut"),
    ({"method": "ensemble"}, "no single checkpoint"),
    ({"method": "uniform", "heldout": "H"}, "scores nothing"),
    ({"method": "greedy", "heldout": "missing"}, "does not exist"),
    ({"method": "greedy", "heldout": "x.csv"}, "raysoup.HeldOut(<split path>"),
    ({"method": "greedy", "heldout": "model"}, "is a 'raysoup-tiny-vit'"),
    ({"method": "greedy", "heldout": "H", "metric": "f1"},
     ("metric: 'f1' needs a two-class task (F1 of class 1, Matthews correlation of two "
      "classes); this task has 4 classes")),
    ({"method": "greedy", "heldout": "H", "metric": "auc"}, "'accuracy', 'f1' or 'mcc'"),
])
def test_heldout_errors_name_the_problem(case, tmp_path, kwargs, words):
    kwargs = {"out": tmp_path / "x.safetensors", **kwargs}
    if kwargs.get("heldout") == "H":
        kwargs["heldout"] = HeldOut(case["heldout"])
    elif kwargs.get("heldout") == "missing":
        kwargs["heldout"] = HeldOut(tmp_path / "nowhere")
    elif kwargs.get("heldout") == "model":
        kwargs["heldout"] = HeldOut(case["heldout"], model="ViT-B-32")
    tuned = [d for n, d in sorted(case["dirs"].items()) if n != "zeroshot"]
    with pytest.raises(SoupCheckpointsError, match=re.escape(words)):
        soup_checkpoints(tuned, **kwargs)


@pytest.mark.parametrize("metric", ["f1", "mcc"])
def test_greedy_by_f1_or_mcc_ranks_and_decides_by_it(two_class, tmp_path, metric):
    """GLUE's criterion through the Python API: the soup is the one the definition gives —
    the checkpoints ranked by their held-out `metric`, each added when the uniform soup's
    held-out `metric` does not drop — computed here directly from the evaluator's counts."""
    from raysoup.api.heldout import evaluator_for, model_spec
    from raysoup.evaluate.task_metrics import from_counts

    tuned = [d for n, d in sorted(two_class["dirs"].items()) if n != "zeroshot"]
    held = HeldOut(two_class["heldout"], batch_size=BATCH)
    states = {d.name: load_file(str(d / "model.safetensors")) for d in tuned}
    with evaluator_for(held, model_spec(held, [d / "model.safetensors" for d in tuned])) as ev:
        def score(state):
            correct, n, *counts = ev.score(state, ["heldout"], counts=True)["heldout"]
            return from_counts(metric, correct, n, *counts)

        ranked = sorted(states, key=lambda name: (-score(states[name]), name))
        soup, best = [ranked[0]], score(states[ranked[0]])
        for name in ranked[1:]:
            trial = [*soup, name]
            mean = {k: sum(states[m][k] for m in trial) / len(trial) for k in states[name]}
            if (value := score(mean)) >= best:
                soup, best = trial, value
    local = load_file(str(soup_checkpoints(tuned, "greedy", out=tmp_path / "g.safetensors",
                                           heldout=held, metric=metric)))
    expected = load_file(str(soup_checkpoints([two_class["dirs"][n] for n in soup],
                                              out=tmp_path / "u.safetensors")))
    assert set(local) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(local[name], tensor), (metric, soup, name)
    by_accuracy = load_file(str(soup_checkpoints(tuned, "greedy", heldout=held,
                                                 out=tmp_path / "a.safetensors")))
    assert any(not torch.equal(local[k], by_accuracy[k]) for k in local)  # the metric decided
