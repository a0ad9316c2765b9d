"""How a sweep ends, on a real local Ray Tune sweep with real MLflow (SQLite): a diverging
trial is a finished trial with status diverged (recorded, no ingredient, counted in
num_samples), and so is a trial ASHA stops; a resumed sweep applies a changed max_failures and
refuses the execution settings Tune would silently keep; the anytime soup takes every trial in
order and survives its actor and its driver."""

import json
import logging
import shutil

import pytest
import ray
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
    from raysoup.orchestration.trial_records import diverged_trials, finished_trials

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

    # Grown in place to 3 trials (issue 30, item 10): trial-002 is what a fresh 3-trial sweep
    # draws as its third trial (Tune's own generator, as a fresh run uses it), and the two
    # earlier trials are not touched.
    before = {p: (p.stat().st_mtime_ns, p.read_bytes())
              for p in (workdir / "ingredients").rglob("*") if p.is_file()}
    cfg["sweep"]["num_samples"] = 3
    sweep(cfg, workdir)
    assert fresh_configs(cfg)[2] == trial_hparams(workdir, "trial-002", ["lr"])
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before} == before
    assert sorted(r.info.run_name for r in tracker.runs()) == [
        "sweep", "trial-000", "trial-001", "trial-002"]


def fresh_configs(cfg_dict) -> list[dict]:
    """The trial configs of a fresh random sweep of `cfg_dict`, from Tune's
    BasicVariantGenerator exactly as a fresh `run_sweep` builds it."""
    from ray.tune.experiment import Experiment
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from raysoup.orchestration.space import tune_space

    cfg = ExperimentCfg.model_validate(cfg_dict)
    gen = BasicVariantGenerator(random_state=cfg.sweep.seed)
    gen.add_configurations([Experiment("fresh", run=lambda config: None,
                                       config=tune_space(cfg), num_samples=cfg.sweep.num_samples)])
    return [gen.next_trial().config for _ in range(cfg.sweep.trials)]


def trial_hparams(workdir, name: str, keys: list[str]) -> dict:
    """The sampled hyper-parameters a trial recorded (ingredient or diverged record)."""
    record = json.loads((workdir / "ingredients" / name / "manifest.json").read_text())
    return {k: record["hparams"][k] for k in keys}


def test_resume_applies_max_failures_and_refuses_kept_settings(ray_session, prepared, tmp_path,
                                                               caplog, capsys):
    from raysoup.cli import main
    from raysoup.orchestration.pipeline import snapshot_config
    from raysoup.orchestration.resume import SweepSettingsChanged
    from raysoup.orchestration.sweep import SweepError
    from raysoup.workdir import CONFIG_SNAPSHOT

    workdir = tmp_path / "work"
    shutil.copytree(prepared, workdir)
    # An odd batch with mixup fails in every attempt (TrainError), before any training.
    cfg = small_config(sweep={"num_samples": 1, "max_failures": 0,
                              "base": {"mixup": 0.2, "batch_size": 31}})
    cfg["sweep"]["space"] = {}
    snapshot = workdir / CONFIG_SNAPSHOT
    # No sweep state yet: every execution setting may still change.
    snapshot_config(ExperimentCfg.model_validate(
        {**cfg, "sweep": {**cfg["sweep"], "max_concurrent": 2}}), workdir)
    snapshot_config(ExperimentCfg.model_validate(cfg), workdir)  # as run_pipeline does
    saved = snapshot.read_text()
    retries = "failed (worker or node lost?); retrying"
    with caplog.at_level(logging.WARNING, logger="raysoup.orchestration.callbacks"):
        with pytest.raises(SweepError, match="0/1 ingredients"):
            sweep(cfg, workdir)
        assert caplog.text.count(retries) == 0
        caplog.clear()

        for field, value in (("max_concurrent", 2), ("reuse_actors", False)):
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
    from raysoup.orchestration.evaluation import build_eval_cache
    from raysoup.orchestration.trial_records import ended_without_ingredient, finished_trials
    from raysoup.prepare import prepare
    from raysoup.soup.anytime import read_offers

    workdir = tmp_path / "work"
    shutil.copytree(prepared, workdir)
    # One trial at a time, so ASHA's rung sees trial-000 (lr 1e-8: the 30-step base, held-out
    # 0.30) before trial-001 (lr 1e-3: this tiny ViT first gets worse, 0.18 after an epoch,
    # below the rung's median: stopped). trial-002 (1e-3 again) ties the rung's median of
    # three and runs on.
    cfg = small_config(sweep={"num_samples": 3, "seed": 1, "max_concurrent": 1,
                              "base": {"epochs": 2}, "scheduler": "asha",
                              "anytime": {"enabled": True},
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


def test_anytime_soup_survives_its_actor_and_resumes_from_its_journal(ray_session, prepared,
                                                                      tmp_path):
    """The anytime soup's actor holds the running soup in memory: a killed actor is replaced
    and rebuilt from the journal (adds only), and so is a new driver's; either way the
    decisions equal those of an undisturbed soup."""
    import torch

    from raysoup.checkpoints import load_state_dict, read_manifest, write_ingredient
    from raysoup.orchestration.anytime import AnytimeSoup
    from raysoup.orchestration.evaluation import build_eval_cache
    from raysoup.prepare import prepare
    from raysoup.soup.anytime import read_offers

    cfg = ExperimentCfg.model_validate(small_config())
    workdirs = [tmp_path / "calm", tmp_path / "killed"]
    for workdir in workdirs:
        shutil.copytree(prepared, workdir)
    data, zeroshot = prepare(cfg, workdirs[0])
    zs = load_state_dict(workdirs[0] / "ingredients" / "zeroshot")
    meta = read_manifest(workdirs[0] / "ingredients" / "zeroshot")
    for workdir in workdirs:  # three ingredients: the zero-shot weights, perturbed
        for i in range(3):
            g = torch.Generator().manual_seed(i)
            state = {k: v + 0.02 * torch.randn(v.shape, generator=g)
                     if v.is_floating_point() else v for k, v in zs.items()}
            write_ingredient(workdir / "ingredients" / f"trial-{i:03d}", state,
                             {"kind": "ingredient", "model_name": meta["model_name"],
                              "num_classes": meta["num_classes"], "hparams": {"lr": 0.1 * i}})

    def soup_of(workdir):
        heldout = build_eval_cache({"heldout": data.heldout}, workdir, zeroshot["preprocess"],
                                   cfg.data.eval_cache_shard)["heldout"]
        return AnytimeSoup(cfg, workdir, None, None, heldout, meta["model_name"],
                           meta["num_classes"])

    calm = soup_of(workdirs[0])
    for i in range(3):
        calm.trial_ended(f"trial-{i:03d}")
    calm.pump(wait=True)
    calm.stop()
    expected = read_offers(workdirs[0])
    assert [o.trial for o in expected] == ["trial-000", "trial-001", "trial-002"]

    killed = soup_of(workdirs[1])
    killed.trial_ended("trial-000")
    killed.trial_ended("trial-001")
    killed.pump(wait=True)
    ray.kill(killed.actor)  # mid-sweep: the next offer goes to a replacement
    killed.trial_ended("trial-002")
    killed.pump(wait=True)
    assert killed.restarts == 1
    killed.stop()
    assert read_offers(workdirs[1]) == expected

    # A new driver (a resumed sweep): the journal is replayed, a missing offer is made again.
    journal = workdirs[1] / "anytime.jsonl"
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:2]))
    resumed = soup_of(workdirs[1])
    resumed.scan([f"trial-{i:03d}" for i in range(3)], {})
    resumed.pump(wait=True)
    resumed.stop()
    assert read_offers(workdirs[1]) == expected
