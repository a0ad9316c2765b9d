"""B4: sweep overhead — wall time of a small real sweep (`orchestration.sweep.run_sweep`)
against the trials' own time (`train_seconds` in each ingredient manifest) over the
concurrency: 1.0 would be a scheduler that costs nothing.

`overhead_ratio` includes Tune's start-up and teardown (what a user waits for);
`overhead_ratio_excl_startup` uses the span from the first trial's start (manifest time minus
its train_seconds) to the last ingredient written.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from bench.common import ratio
from raysoup.checkpoints import read_manifest
from raysoup.config import ExperimentCfg
from raysoup.workdir import MANIFEST_FILE, Workdir

log = logging.getLogger(__name__)


def config(quick: bool) -> ExperimentCfg:
    # quick: one trial, one at a time (each trial is a process importing torch and open_clip,
    # ~5 CPU-s: the smoke run checks that the figure is produced)
    per_class, samples, epochs = (40, 1, 1) if quick else (300, 6, 2)
    return ExperimentCfg.model_validate({
        "name": "bench-sweep",
        "model": {"name": "raysoup-tiny-rn", "tokenizer": "world",
                  "pretrain": {"steps": 5 if quick else 50, "batch_size": 32, "warmup_steps": 2,
                               "threads": 1}},
        "data": {"world": {"num_classes": 4, "train_per_class": per_class, "test_per_class": 10,
                           "shift_per_class": 5},
                 "heldout_fraction": 0.1, "templates": "world"},
        "sweep": {"num_samples": samples, "max_concurrent": 1 if quick else 2, "seed": 0,
                  "resources_per_trial": {"cpu": 1},
                  "base": {"epochs": epochs, "batch_size": 32, "warmup_steps": 2},
                  "space": {"lr": {"loguniform": [2e-4, 2e-3]}, "seed": {"randint": [0, 1000]}}},
    })


def run(root: Path, quick: bool, cpus: int) -> dict:
    from raysoup.orchestration.sweep import run_sweep
    from raysoup.orchestration.trial_records import finished_trials
    from raysoup.prepare import prepare
    from raysoup.tracking import Tracker, default_uri, quiet

    cfg = config(quick)
    workdir = root / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        prepare(cfg, workdir)
        quiet()
        tracker = Tracker(default_uri(workdir), cfg.name,
                          artifact_root=Workdir(workdir).mlartifacts)
        parent = tracker.sweep_run({"experiment": cfg.name})
        start_wall, start = time.time(), time.perf_counter()
        run_sweep(cfg, workdir, tracker, parent)
        wall = time.perf_counter() - start
        tracker.end(parent, ok=True)
        trials = []
        for name in finished_trials(workdir):
            manifest = Workdir(workdir).ingredient(name) / MANIFEST_FILE
            secs = read_manifest(manifest.parent).get("train_seconds")
            if secs is None:
                raise RuntimeError(f"{manifest}: no train_seconds (sweep.py records it)")
            end = manifest.stat().st_mtime
            trials.append((end - secs, end, secs))
        concurrency = min(cfg.sweep.max_concurrent,
                          max(1, int(cpus // cfg.sweep.resources_per_trial.cpu)))
        ideal = sum(t[2] for t in trials) / concurrency
        span = max(t[1] for t in trials) - min(t[0] for t in trials)
        out = {"trials": len(trials), "concurrency": concurrency, "sweep_wall_s": wall,
               "sum_trial_s": sum(t[2] for t in trials), "ideal_s": ideal,
               "overhead_ratio": ratio(wall, ideal),
               "trials_span_s": span, "overhead_ratio_excl_startup": ratio(span, ideal),
               "tune_startup_s": min(t[0] for t in trials) - start_wall}
        log.info("B4: sweep %.1fs for %d trials (Σ %.1fs / %d = %.1fs ideal); span %.1fs",
                 wall, len(trials), out["sum_trial_s"], concurrency, ideal, span)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)
