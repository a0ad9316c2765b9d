"""Fault injection: the driver is interrupted and killed at several points of a real run
(`raysoup run` in a subprocess: real Ray, Tune, MLflow) and each time the same command is
re-run. The end state must equal that of an uninterrupted run with the same config: the
session's `drill_run` (tests/small.py's DRILL)."""

import json
import os
import signal
import time

import pytest
from driver import end_state, finish, start_run

pytestmark = pytest.mark.slow


def test_killed_anywhere_resumes_to_the_same_result(drill_run, tmp_path):
    cfg = drill_run["config"]
    work = tmp_path / "work"
    log = []
    # 1. SIGINT (Ctrl-C) as soon as the first trial's ingredient exists: fit() returns a
    #    partial result, which must not pass for a finished sweep.
    proc = start_run(cfg, work)
    deadline = time.time() + 600
    while not list((work / "ingredients").glob("trial-*")) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.2)
    if proc.poll() is not None:  # ended before its first ingredient: say why
        rc, _, err = finish(proc)
        pytest.fail(f"the run to interrupt ended first (rc {rc}):\n{err[-3000:]}")
    os.kill(proc.pid, signal.SIGINT)
    rc, _, err = finish(proc)
    log.append(("SIGINT mid-sweep", rc))
    assert rc != 0 and not (work / "results.parquet").exists(), err[-3000:]
    assert "interrupted" in err or "sweep incomplete" in err

    # 2.-3. SIGKILL in the resumed sweep, right after its first anytime-soup decision is
    # journaled, and inside the evaluation (which resumes the sweep again). (A kill right
    # after a finished trial and one mid-greedy: test_remote_workdir.py.)
    for point in ("anytime.offer=1", "evaluate.model=3"):
        rc, _, err = finish(start_run(cfg, work, failpoints=point))
        log.append((point, rc))
        assert rc == -signal.SIGKILL, (point, rc, err[-3000:])
        assert f"failpoint {point.split('=')[0]}" in err
    assert not list(work.glob("soups/*/recipe.json"))  # killed before any soup was cooked

    # 4. SIGKILL between logging a soup's MLflow Model and registering it (the second soup).
    rc, _, err = finish(start_run(cfg, work, failpoints="publish.logged=2"))
    log.append(("publish.logged=2", rc))
    assert rc == -signal.SIGKILL, err[-3000:]

    rc, _, err = finish(start_run(cfg, work))
    assert rc == 0, err[-3000:]

    # Same rows, same accuracies, same soup bytes as the uninterrupted run; the same anytime
    # soup, decision by decision, and so the same proposals.
    got, ref = end_state(work, "drill"), drill_run["end_state"]
    assert got["results"].equals(ref["results"])
    assert got["soups"] == ref["soups"]
    assert got["anytime"] == ref["anytime"]
    # Exactly one MLflow run per trial and per soup (plus the sweep), none left RUNNING.
    assert got["runs"] == ref["runs"] == [(name, "FINISHED") for name in (
        "soup-greedy", "soup-ties", "soup-uniform", "sweep", "trial-000", "trial-001",
        "trial-002", "zeroshot")]
    # One registered version per weight soup, none twice (killed between logging the model
    # and registering it), and the same champion as the uninterrupted run.
    assert got["registry"] == ref["registry"]
    assert sorted(got["registry"][0]) == ["greedy", "ties", "uniform"], got["registry"]
    print(json.dumps(log))
