"""sweep.search and sweep.scheduler as Tune objects, on a real local Ray Tune (a trivial
trainable: what is tested is the proposing, not the training). The soup-aware search runs end
to end, killed and resumed, in test_kill_and_resume.py; ASHA in test_sweep_outcomes.py."""

import math

import pytest
from ray import tune
from small import small_config

from raysoup.config import ExperimentCfg


def experiment(**sweep):
    cfg = small_config(sweep={"num_samples": 3, "max_concurrent": 1, **sweep})
    cfg["sweep"]["space"] = {"lr": {"loguniform": [1e-5, 1e-2]},
                             "mixup": {"choice": [0.0, 0.2]}}
    return ExperimentCfg.model_validate(cfg)


def proposals(cfg, path):
    from raysoup.orchestration.search import scheduler, search_alg
    from raysoup.orchestration.space import tune_space
    from raysoup.orchestration.trial_records import trial_name

    def objective(config):  # nested: pickled by value (workers cannot import this module)
        tune.report({"heldout_acc": -abs(math.log10(config["lr"]) + 3.5), "epoch": 1})

    grid = tune.Tuner(
        objective, param_space=tune_space(cfg),
        # reuse_actors: the trials run one after another in one actor, as the sweep's do
        # (sweep.reuse_actors), not each in a new process
        tune_config=tune.TuneConfig(num_samples=cfg.sweep.num_samples,
                                    search_alg=search_alg(cfg), scheduler=scheduler(cfg),
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="s", storage_path=str(path), verbose=0)).fit()
    return sorted((trial_name(r.metrics["trial_id"]), r.config["lr"], r.config["mixup"])
                  for r in grid)


@pytest.mark.slow
def test_optuna_search_is_seeded_and_numbers_its_trials(ray_session, tmp_path):
    pytest.importorskip("optuna")
    cfg = experiment(search="optuna", seed=3)
    first = proposals(cfg, tmp_path / "a")
    # Trials are numbered like the random search's (their ingredients: trial-000 ...).
    assert [name for name, _, _ in first] == ["trial-000", "trial-001", "trial-002"]
    assert all(1e-5 <= lr < 1e-2 and mixup in (0.0, 0.2) for _, lr, mixup in first)
    assert proposals(cfg, tmp_path / "b") == first  # same seed, same proposals
    assert proposals(experiment(search="optuna", seed=4), tmp_path / "c") != first


@pytest.mark.slow
def test_grid_search_runs_every_choice(ray_session, tmp_path):
    cfg = experiment(search="grid", num_samples=2)
    assert cfg.sweep.trials == 4  # 2 draws of lr for each of the 2 mixup values
    trials = proposals(cfg, tmp_path / "g")
    assert [name for name, _, _ in trials] == ["trial-000", "trial-001", "trial-002", "trial-003"]
    assert sorted(mixup for _, _, mixup in trials) == [0.0, 0.0, 0.2, 0.2]
    assert len({lr for _, lr, _ in trials}) == 4


def test_config_names_what_is_wrong():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="sweep.search: soup needs the anytime soup"):
        experiment(search="soup", anytime={"enabled": False})
    with pytest.raises(ValidationError, match="search"):
        experiment(search="bayes")
    with pytest.raises(ValidationError, match="scheduler"):
        experiment(scheduler="hyperband")
    from raysoup.orchestration.search import reports_heldout

    assert not reports_heldout(experiment())
    assert reports_heldout(experiment(scheduler="asha"))
    assert reports_heldout(experiment(search="optuna"))
