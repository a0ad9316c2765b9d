"""Data-parallel trials (sweep.workers_per_trial): a real `raysoup run` whose trial is Ray
Train's TorchTrainer with 2 gloo workers inside the Tune trial, one worker SIGKILLed
mid-epoch. (The workers' sample sets: test_batches.py.)

2 workers x 0.5 CPU: on a 2-core machine a trial's own process (0.01 CPU) and two 1-CPU
workers would not fit."""

import json
import os
import subprocess
import sys

import pytest
from small import small_overrides

from raysoup.faults import ENV

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 540 training images, global batch 32: 17 steps per epoch (the last of 28); hit 21 is
# step 4 of epoch 2.
KILL_AT = 21


def test_two_worker_trial_survives_a_killed_worker(tmp_path):
    from raysoup.tracking import Tracker, default_uri

    work = tmp_path / "work"
    once = tmp_path / "killed-once"
    overrides = [*small_overrides(epochs=2), "sweep.num_samples=1",
                 "sweep.workers_per_trial=2", "sweep.resources_per_worker.cpu=0.5"]
    # The sweep stage alone: evaluation and soups of its ingredient are the other tests'.
    cmd = [sys.executable, "-m", "raysoup.cli", "sweep", os.path.join(ROOT, "experiments",
                                                                      "tiny.yaml"),
           "--workdir", str(work)]
    for override in overrides:
        cmd += ["--set", override]
    env = {**os.environ, ENV: f"train.step={KILL_AT}:once={once}"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    # One worker died mid-epoch 2 (the failpoint fires in one process only)...
    assert once.exists() and "failpoint train.step hit" in done.stderr
    manifest = json.loads((work / "ingredients" / "trial-000" / "manifest.json").read_text())
    assert manifest["kind"] == "ingredient" and manifest["workers"] == 2
    assert manifest["hparams"]["batch_size"] == 32  # the global batch
    # ...and Train restarted the group from the epoch-1 checkpoint: each epoch reached Tune
    # and MLflow once (a restart from scratch would report epoch 1 twice).
    runs = {r.info.run_name: r for r in Tracker(default_uri(work), "tiny").runs()}
    assert sorted(runs) == ["sweep", "trial-000"]  # one run per trial, not per worker
    history = Tracker(default_uri(work), "tiny").client.get_metric_history(
        runs["trial-000"].info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2]
    assert (work / "tune" / "train" / "trial-000").is_dir()
