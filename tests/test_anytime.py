"""The anytime soup's rule and arithmetic (a real tiny open_clip classifier, real safetensors
ingredients, no Ray), and the soup-aware search's proposals."""

import math

import numpy as np
import pytest
import torch

from raysoup.checkpoints import write_ingredient
from raysoup.config import SoupSearchCfg
from raysoup.evaluate.evaluator import EvalSplit, Evaluator
from raysoup.models.classifier import classifier_skeleton
from raysoup.search.distributions import Choice, LogUniform, RandInt
from raysoup.search.proposer import distance, draw, propose
from raysoup.soup.anytime import (
    JOINED,
    NO_INGREDIENT,
    REJECTED,
    RESTARTED,
    Offer,
    RunningSoup,
    decide,
)


def test_rule_keeps_the_best_of_soup_soup_plus_trial_and_trial_alone():
    assert decide(None, 0.5, 0.5) == RESTARTED  # the first trial starts the soup
    assert decide(0.80, 0.70, 0.80) == JOINED  # a tie keeps the larger soup
    assert decide(0.80, 0.85, 0.85) == JOINED
    assert decide(0.80, 0.70, 0.79) == REJECTED
    assert decide(0.80, 0.90, 0.85) == RESTARTED  # better alone than in the soup
    assert decide(0.80, 0.79, 0.75) == REJECTED


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three perturbed copies of a tiny classifier as ingredients, and random images."""
    root = tmp_path_factory.mktemp("anytime")
    torch.manual_seed(0)
    model = classifier_skeleton("raysoup-tiny-vit", 4)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    paths = []
    for i in range(3):
        g = torch.Generator().manual_seed(i)
        state = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point()
                 else v for k, v in base.items()}
        write_ingredient(root / f"trial-{i:03d}", state, {"kind": "ingredient"})
        paths.append(root / f"trial-{i:03d}")
    rng = np.random.default_rng(0)
    split = EvalSplit(rng.standard_normal((40, 3, 32, 32)).astype(np.float32),
                      rng.integers(0, 4, 40))
    return model, split, paths


def test_running_soup_scores_the_uniform_average(world):
    model, split, paths = world
    evaluator = Evaluator(model, {"heldout": split}, batch_size=16)
    soup = RunningSoup(evaluator)
    first = soup.offer(paths[0])
    assert first["own"] == first["with_soup"]
    soup.restart()
    second = soup.offer(paths[1])
    soup.commit()
    third = soup.offer(paths[2])
    soup.reject()

    from raysoup.checkpoints import load_state_dict

    states = [load_state_dict(p) for p in paths]
    for members, scores in (([0, 1], second), ([0, 1, 2], third)):
        mean = {k: sum(states[i][k].float() for i in members) / len(members) for k in states[0]}
        assert scores["with_soup"] == Evaluator(model, {"heldout": split}, 16).score(
            mean, ["heldout"])["heldout"]
        assert scores["own"] == evaluator.score(states[members[-1]], ["heldout"])["heldout"]
    assert soup.k == 2
    # A resumed sweep rebuilds the soup by adds alone: the same sum.
    replayed = RunningSoup(evaluator)
    replayed.replay(paths[:2])
    assert all(torch.equal(replayed.sum[k], soup.sum[k]) for k in soup.sum)
    with pytest.raises(RuntimeError, match="no pending"):
        soup.commit()


SPACE = {"lr": LogUniform(loguniform=(1e-5, 1e-3)), "mixup": Choice(choice=[0.0, 0.2]),
         "seed": RandInt(randint=(0, 1000)), "epochs": 3}


def offer(i, outcome, soup=(), heldout=0.9, **hp):
    return Offer(i, f"trial-{i:03d}", outcome, hp, heldout=heldout, soup=soup)


def test_proposals_are_fixed_by_seed_and_index_and_stay_in_the_space():
    settings = SoupSearchCfg(initial=2)
    history = [offer(0, RESTARTED, ("trial-000",), lr=1e-4, mixup=0.0, seed=1, epochs=3),
               offer(1, REJECTED, ("trial-000",), lr=1e-3 * 0.99, mixup=0.2, seed=2, epochs=3)]
    a = [propose(SPACE, 7, i, history, settings) for i in range(2, 12)]
    assert a == [propose(SPACE, 7, i, history, settings) for i in range(2, 12)]
    assert a != [propose(SPACE, 8, i, history, settings) for i in range(2, 12)]
    for cfg in a:
        assert 1e-5 <= cfg["lr"] < 1e-3 and cfg["mixup"] in (0.0, 0.2)
        assert 0 <= cfg["seed"] < 1000 and cfg["epochs"] == 3
    # Seeds stay diverse: integers are redrawn, never copied from the parent.
    assert len({c["seed"] for c in a}) >= 8


def test_proposals_stay_near_the_soups_best_member_and_away_from_rejected_ones():
    settings = SoupSearchCfg(initial=2, explore=0.2)
    best = {"lr": 2e-5, "mixup": 0.0, "seed": 1, "epochs": 3}
    rejected = {"lr": 8e-4, "mixup": 0.2, "seed": 2, "epochs": 3}
    soup = ("trial-000", "trial-003")
    history = [offer(0, RESTARTED, soup[:1], heldout=0.92, **best),
               offer(1, REJECTED, soup[:1], **rejected),
               offer(2, NO_INGREDIENT, soup[:1], heldout=None, lr=5e-5, mixup=0.0, seed=3,
                     epochs=3),
               offer(3, JOINED, soup, heldout=0.90, lr=3e-4, mixup=0.2, seed=4, epochs=3),
               # strong alone, but the soup rejected it: no parent
               offer(4, REJECTED, soup, heldout=0.99, lr=1e-5, mixup=0.2, seed=5, epochs=3)]
    proposals = [propose(SPACE, 0, i, history, settings) for i in range(5, 45)]
    randoms = [draw(SPACE, np.random.default_rng([0, i])) for i in range(5, 45)]

    def mean_dist(cfgs, point):
        return sum(distance(SPACE, c, point) for c in cfgs) / len(cfgs)

    # Perturbations of the strongest member (trial-000), not of trial-003 or trial-004.
    assert mean_dist(proposals, best) < 0.7 * mean_dist(randoms, best)
    assert mean_dist(proposals, rejected) > mean_dist(randoms, rejected)
    # Augmentation stays diverse: the member's choice is redrawn, not always copied.
    assert 0 < sum(p["mixup"] == 0.2 for p in proposals) < len(proposals) / 2
    # Before `initial` trials, or with an empty soup, a proposal is a plain random draw.
    assert propose(SPACE, 0, 1, history, settings) == draw(SPACE, np.random.default_rng([0, 1]))
    empty = [offer(0, REJECTED, (), **rejected)]
    assert propose(SPACE, 0, 5, empty, settings) == draw(SPACE, np.random.default_rng([0, 5]))


def test_distance_ignores_integers_and_weighs_ranges():
    a = {"lr": 1e-5, "mixup": 0.0, "seed": 1}
    assert distance(SPACE, a, {**a, "seed": 999}) == 0.0
    assert math.isclose(distance(SPACE, a, {**a, "lr": 1e-3}), 1.0)
    assert math.isclose(distance(SPACE, a, {**a, "mixup": 0.2}), 0.5)
