"""Data-parallel trials the cluster cannot place are refused before the sweep starts (issue 30
item 9): by the run on a real local Ray of known size, and by `--dry-run` on this machine."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raysoup.config import load_experiment

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny.yaml"


def _cfg(workers: int, cpu: float = 1, gpu: float = 0):
    return load_experiment(TINY, [f"sweep.workers_per_trial={workers}",
                                  f"sweep.resources_per_worker.cpu={cpu}",
                                  f"sweep.resources_per_worker.gpu={gpu}"])


def test_placement_counts_workers_over_nodes_and_the_trial_process():
    from raysoup.dryrun.cluster import placement_error

    # 2 x 1 CPU + the trial's 0.01 CPU do not fit 2 CPUs; they fit 3, or two 2-CPU nodes.
    error = placement_error(_cfg(2), [(2.0, 0.0)], "the local cluster")
    assert "a trial needs 2 workers x (1 CPU + 0 GPU)" in error
    assert "2.01 CPU + 0 GPU in all; the local cluster has 2 CPU + 0 GPU" in error
    assert placement_error(_cfg(2), [(3.0, 0.0)], "x") is None
    assert placement_error(_cfg(2), [(2.0, 0.0), (2.0, 0.0)], "x") is None
    # GPUs: one per worker, one per node: two nodes are needed.
    assert "1 CPU + 1 GPU" in placement_error(_cfg(2, 1, 1), [(8.0, 1.0)], "x")
    assert placement_error(_cfg(2, 1, 1), [(8.0, 1.0), (8.0, 1.0)], "x") is None
    assert placement_error(_cfg(1, 64), [(2.0, 0.0)], "x") is None  # not data-parallel


def test_an_infeasible_data_parallel_sweep_is_refused_before_it_starts(tmp_path, ray_session):
    # Ray Train waited for the workers forever ("worker group startup timed out" again and
    # again); now the run refuses before anything is written.
    from raysoup.orchestration.pipeline import run_pipeline
    from raysoup.orchestration.sweep import SweepError
    from raysoup.workdir import CONFIG_SNAPSHOT

    assert ray_session.cluster_resources()["CPU"] == 2
    work = tmp_path / "work"
    with pytest.raises(SweepError) as err:
        run_pipeline(_cfg(2), work)
    assert "the local cluster has 2 CPU + 0 GPU" in str(err.value)
    assert "2 workers x (1 CPU + 0 GPU)" in str(err.value)
    assert not (work / CONFIG_SNAPSHOT).exists()


def test_dry_run_says_a_local_run_refuses_it(tmp_path):
    cpus = len(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "raysoup.cli", "run", str(TINY), "--dry-run", "--workdir",
         str(tmp_path / "w"), "--set", "sweep.workers_per_trial=2",
         "--set", f"sweep.resources_per_worker.cpu={cpus:g}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"local        this machine: {cpus:g} CPU" in proc.stdout
    assert "a run on a local cluster refuses this: sweep.workers_per_trial=2" in proc.stdout
    assert f"this machine has {cpus:g} CPU" in proc.stdout
