"""How a sweep ends, on a real local Ray Tune sweep with real MLflow (SQLite): a diverging
trial is a finished trial with status diverged (recorded, no ingredient, counted in
num_samples), and a resumed sweep applies a changed max_failures and refuses the execution
settings Tune would silently keep."""

import json
import logging
import shutil

import pytest
from small import small_config

from raysoup.checkpoints import list_ingredients
from raysoup.config import ExperimentCfg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A workdir with the small experiment's data, base model and zero-shot ingredient."""
    from raysoup.prepare import prepare

    workdir = tmp_path_factory.mktemp("prepared") / "work"
    prepare(ExperimentCfg.model_validate(small_config()), workdir)
    return workdir


def sweep(cfg_dict, workdir):
    from raysoup.orchestration.sweep import run_sweep
    from raysoup.tracking import Tracker, default_uri

    cfg = ExperimentCfg.model_validate(cfg_dict)
    tracker = Tracker(default_uri(workdir), cfg.name)
    return run_sweep(cfg, workdir, tracker, tracker.sweep_run()), tracker


def test_diverged_trial_finishes_the_sweep_without_an_ingredient(ray_session, prepared, tmp_path):
    from raysoup.orchestration.sweep import diverged_trials, finished_trials

    workdir = tmp_path / "work"
    shutil.copytree(prepared, workdir)
    # The repro; the small config's 1-epoch trials diverge within that epoch.
    cfg = small_config(sweep={"num_samples": 2, "seed": 1})  # seed 1 draws 1e4, then 1e-3
    cfg["sweep"]["space"] = {"lr": {"choice": [1.0e4, 1.0e-3]}}
    done, tracker = sweep(cfg, workdir)  # before: SweepError "0/2 ingredients", on every re-run

    diverged = diverged_trials(workdir)
    assert len(done) == len(diverged) == 1, (done, diverged)
    assert done == finished_trials(workdir)
    for name in diverged:
        record = json.loads((workdir / "ingredients" / name / "manifest.json").read_text())
        assert record["kind"] == record["status"] == "diverged"
        assert record["hparams"]["lr"] == 1.0e4 and "loss became" in record["error"]
    # Not an ingredient: evaluation and soups list ingredients only.
    assert sorted(p.name for p in list_ingredients(workdir / "ingredients")) == sorted(
        [*done, "zeroshot"])

    runs = {r.info.run_name: r for r in tracker.runs()}
    for name in diverged:
        assert runs[name].info.status == "FAILED"
        assert runs[name].data.tags["raysoup.status"] == "diverged"
    for name in done:
        assert runs[name].info.status == "FINISHED"
    assert runs["sweep"].data.tags["raysoup.diverged"] == ",".join(diverged)

    # A re-run counts the diverged trial: nothing is retrained, nothing fails.
    assert sweep(cfg, workdir)[0] == done


def test_resume_applies_max_failures_and_refuses_kept_settings(ray_session, prepared, tmp_path,
                                                               caplog, capsys):
    from raysoup.cli import main
    from raysoup.orchestration.pipeline import CONFIG_SNAPSHOT, snapshot_config
    from raysoup.orchestration.sweep import SweepError, SweepSettingsChanged

    workdir = tmp_path / "work"
    shutil.copytree(prepared, workdir)
    # An odd batch with mixup fails in every attempt (TrainError), before any training.
    cfg = small_config(sweep={"num_samples": 1, "max_failures": 0,
                              "base": {"mixup": 0.2, "batch_size": 31}})
    cfg["sweep"]["space"] = {}
    snapshot = workdir / CONFIG_SNAPSHOT
    # No sweep state yet: every execution setting may still change.
    snapshot_config(ExperimentCfg.model_validate(
        {**cfg, "sweep": {**cfg["sweep"], "max_concurrent": 1}}), workdir)
    snapshot_config(ExperimentCfg.model_validate(cfg), workdir)  # as run_pipeline does
    saved = snapshot.read_text()
    retries = "failed (worker or node lost?); retrying"
    with caplog.at_level(logging.WARNING, logger="raysoup.orchestration.sweep"):
        with pytest.raises(SweepError, match="0/1 ingredients"):
            sweep(cfg, workdir)
        assert caplog.text.count(retries) == 0
        caplog.clear()

        for field, value in (("max_concurrent", 1), ("reuse_actors", False)):
            changed = {**cfg, "sweep": {**cfg["sweep"], field: value}}
            refused = rf"sweep\.{field}: .* when the sweep started"
            # Refused before the snapshot is written (before: the new value was saved, so
            # `raysoup resume` refused forever) ...
            with pytest.raises(SweepSettingsChanged, match=refused):
                snapshot_config(ExperimentCfg.model_validate(changed), workdir)
            assert snapshot.read_text() == saved
            # ... and by the restored Tuner itself, for callers that skip the snapshot.
            with pytest.raises(SweepSettingsChanged, match=refused):
                sweep(changed, workdir)

        # `raysoup resume` after the refusals: the saved settings pass the check and the sweep
        # runs again (its trial still fails: exit 1, not the settings refusal's 2).
        capsys.readouterr()
        assert main(["resume", str(workdir)]) == 1
        err = capsys.readouterr().err
        assert "0/1 ingredients" in err and "cannot change" not in err, err
        assert snapshot.read_text() == saved

        # The trial has failed twice (run, resume); Tune counts failures across resumes.
        cfg["sweep"]["max_failures"] = 3
        caplog.clear()
        snapshot_config(ExperimentCfg.model_validate(cfg), workdir)  # applied: saved
        assert "max_failures: 3" in snapshot.read_text()
        with pytest.raises(SweepError, match="0/1 ingredients"):
            sweep(cfg, workdir)
    # The restored trial is retried under the new limit (before: the old 0, no retry).
    assert caplog.text.count(retries) >= 1, caplog.text


def test_asha_stops_a_trial_and_the_anytime_soup_takes_every_trial_in_order(
        ray_session, prepared, tmp_path):
    """sweep.scheduler: asha on the held-out accuracy trials report each epoch. A stopped
    trial is a finished trial without an ingredient (a record, counted in num_samples, not in
    any soup); the anytime soup offers every trial in trial order, the stopped one as
    "no ingredient", and logs its curve to the sweep's MLflow run."""
    from raysoup.orchestration.anytime import read_offers
    from raysoup.orchestration.evaluation import build_eval_cache
    from raysoup.orchestration.sweep import ended_without_ingredient, finished_trials
    from raysoup.prepare import prepare

    workdir = tmp_path / "work"
    shutil.copytree(prepared, workdir)
    # One trial at a time, so ASHA's rung sees trial-000 (lr 1e-8: the 30-step base, held-out
    # 0.30) before trial-001 (lr 1e-3: this tiny ViT first gets worse, 0.18 after an epoch,
    # below the rung's median: stopped). trial-002 (1e-3 again) ties the rung's median of
    # three and runs on.
    cfg = small_config(sweep={"num_samples": 3, "seed": 1, "max_concurrent": 1,
                              "base": {"epochs": 2}, "scheduler": "asha",
                              "asha": {"grace_period": 1, "reduction_factor": 2}})
    cfg["sweep"]["space"] = {"lr": {"choice": [1.0e-8, 1.0e-3]}}
    experiment = ExperimentCfg.model_validate(cfg)
    data, zeroshot = prepare(experiment, workdir)
    heldout = build_eval_cache({"heldout": data.heldout}, workdir, zeroshot["preprocess"],
                               experiment.data.eval_cache_shard)["heldout"]
    with pytest.raises(ValueError, match="needs the held-out split"):
        sweep(cfg, workdir)
    from raysoup.orchestration.sweep import run_sweep
    from raysoup.tracking import Tracker, default_uri

    tracker = Tracker(default_uri(workdir), experiment.name)
    parent = tracker.sweep_run()
    done = run_sweep(experiment, workdir, tracker, parent, heldout)

    stopped = ended_without_ingredient(workdir)
    assert stopped and all(how == "stopped at epoch 1" for how in stopped.values()), stopped
    assert len(done) + len(stopped) == 3 and done == finished_trials(workdir)
    for name in stopped:
        record = json.loads((workdir / "ingredients" / name / "manifest.json").read_text())
        assert record["kind"] == "stopped" and record["hparams"]["lr"] == 1.0e-3
        assert record["epoch"] == 1 and 0 <= record["heldout_acc"] <= 1
    assert sorted(p.name for p in list_ingredients(workdir / "ingredients")) == sorted(
        [*done, "zeroshot"])

    offers = read_offers(workdir)
    assert [o.trial for o in offers] == ["trial-000", "trial-001", "trial-002"]
    for o in offers:
        if o.trial in stopped:
            assert o.outcome == "no ingredient" and o.reason == "stopped at epoch 1"
        else:
            assert o.outcome in ("joined", "restarted", "rejected") and o.heldout is not None
    assert offers[0].outcome == "restarted" and offers[-1].soup  # the soup holds a trial
    history = tracker.client.get_metric_history(parent, "soup/heldout")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == [o.soup_heldout for o in offers]
    # A re-run counts the stopped trial: nothing is retrained, nothing is offered twice.
    assert run_sweep(experiment, workdir, tracker, parent, heldout) == done
    assert read_offers(workdir) == offers
