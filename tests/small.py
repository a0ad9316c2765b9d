"""The small experiment the end-to-end tests run: experiments/tiny.yaml's shape at a size
that trains in seconds (a 30-step pre-training, 4 classes, 1-epoch trials)."""

import copy

SMALL = {
    "name": "e2e",
    "model": {"name": "raysoup-tiny-vit", "tokenizer": "world",
              "pretrain": {"steps": 30, "batch_size": 64, "warmup_steps": 5}},
    "data": {"world": {"num_classes": 4, "train_per_class": 150, "test_per_class": 25,
                       "shift_per_class": 15},
             "heldout_fraction": 0.1, "templates": "world"},
    # The anytime soup (on by default) is tested where it is checked (test_pipeline,
    # test_kill_and_resume, test_sweep_outcomes); elsewhere its actor would only cost the suite
    # time.
    # One trial at a time: a second concurrent trial is one more process importing torch and
    # open_clip (~5 CPU-s of a ~45 CPU-s run). The drills that lose a machine or a node with
    # trials in flight (test_remote_workdir) run two.
    "sweep": {"num_samples": 3, "max_concurrent": 1, "anytime": {"enabled": False},
              "base": {"epochs": 1, "batch_size": 32, "warmup_steps": 2},
              "space": {"lr": {"loguniform": [1e-4, 1e-3]}, "seed": {"randint": [0, 100]}}},
    # One eval actor: a process importing torch and open_clip costs ~5 CPU-seconds here, and
    # these runs check the plumbing; the pool of several, its placement and its losses are
    # test_soup_cooking_on_ray's, test_soup_placement's and test_drill72's.
    "eval": {"num_actors": 1, "batch_size": 64},
    "soup": {"recipes": ["uniform", "greedy"], "num_shards": 2},
}


def small_config(**changes) -> dict:
    """SMALL with `changes` merged in: nested dicts merge, anything else replaces."""
    def merge(base: dict, new: dict) -> dict:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    return merge(copy.deepcopy(SMALL), changes)


def small_overrides(epochs: int) -> list[str]:
    """experiments/tiny.yaml shrunk by `--set` overrides (for CLI runs): its shipped base,
    a 4-class world, 2 one- or two-epoch trials over lr and seed."""
    return [
        "data.world.num_classes=4", "data.world.train_per_class=150",
        "data.world.test_per_class=25", "data.world.shift_per_class=15",
        "data.heldout_fraction=0.1",
        "sweep.num_samples=2", "sweep.max_concurrent=1", f"sweep.base.epochs={epochs}",
        "sweep.base.batch_size=32",
        "sweep.base.warmup_steps=2",
        # lr and seed only: these runs check the plumbing, not what the augmentation
        # search gains
        "sweep.space={lr: {loguniform: [1.0e-4, 1.0e-3]}, seed: {randint: [0, 100]}}",
        "eval.batch_size=64", "eval.num_actors=1",
        "soup.recipes=[uniform, greedy]", "soup.num_shards=2", "sweep.anytime.enabled=false",
    ]


# The run test_kill_and_resume interrupts and test_drill72 disturbs on a simulated cluster (both
# compare with one uninterrupted) and test_pipeline checks end to end: the session's `drill_run`
# (tests/conftest.py) runs it once, uninterrupted.
DRILL = small_config(
    name="drill",
    model={"pretrain": {"threads": 1}},
    # 3 trials + zero-shot: 3 greedy decisions, enough to die after the second. The soup-aware
    # search proposes trial-002 from the anytime soup's offers, so an interrupted sweep must
    # resume its proposals exactly to match the reference. One epoch (SMALL's): each kill
    # waits for a finished trial, an offer or a later stage; a trial resumed from its epoch
    # checkpoint is test_data_parallel's (and the full-size drill's, tests/drill72.py).
    sweep={"num_samples": 3, "search": "soup", "anytime": {"enabled": True},
           "soup_search": {"initial": 1}},
    # TIES: an element-wise merge, cooked by a run that resumes after the evaluation's kill.
    # (A kill mid-greedy, resumed from the journal in the bucket: test_remote_workdir.py; the
    # journal's replay: test_greedy.py.)
    soup={"recipes": ["uniform", "greedy", "ties"], "ties": {"lambdas": [1.0]},
          "include_zeroshot": True},
)
