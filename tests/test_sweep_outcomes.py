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
