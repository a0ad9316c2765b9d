"""Fault injection: the driver is interrupted and killed at several points of a real run
(`raysoup run` in a subprocess: real Ray, Tune, MLflow) and each time the same command is
re-run. The end state must equal that of an uninterrupted run with the same seed."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml
from driver import finish
from small import small_config

from raysoup.faults import ENV

pytestmark = pytest.mark.slow

SMALL = small_config(
    name="faults",
    model={"pretrain": {"threads": 1}},
    # 3 trials + zero-shot: 3 greedy decisions, enough to die after the second. The
    # soup-aware search: trial-002 is proposed from the anytime soup's offer of trial-000, so
    # an interrupted sweep must resume its proposals exactly to match the reference.
    sweep={"num_samples": 3, "base": {"epochs": 2}, "search": "soup", "anytime": {"enabled": True},
           "soup_search": {"initial": 1}},
    # TIES: an element-wise merge, cooked by a run that resumes after the evaluation's kill.
    # (A kill mid-greedy, resumed from the journal in the bucket: test_remote_workdir.py; the
    # journal's replay: test_greedy.py.)
    soup={"recipes": ["uniform", "greedy", "ties"], "ties": {"lambdas": [1.0]},
          "include_zeroshot": True},
)


def raysoup(cfg, workdir, failpoints=None, log=None):
    """`raysoup run` in its own session; output to pipes, or to the open file `log` (a run
    nobody reads while it runs would block on a full pipe)."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if failpoints:
        env[ENV] = failpoints
    out = log or subprocess.PIPE
    return subprocess.Popen([sys.executable, "-m", "raysoup.cli", "run", str(cfg), "--workdir",
                             str(workdir)], env=env, stdout=out, stderr=out, text=True,
                            start_new_session=True)


def soup_files(workdir):
    out = {}
    for d in sorted((workdir / "soups").iterdir()):
        for f in sorted(d.iterdir()):
            out[f"{d.name}/{f.name}"] = f.read_bytes()
    return out


def mlflow_runs(workdir):
    from raysoup.tracking import Tracker, default_uri

    return Tracker(default_uri(workdir), "faults").runs()


def registry(workdir):
    """(recipe of each registered version, the champion's recipe) of the workdir's store."""
    from mlflow.tracking import MlflowClient

    from raysoup.tracking import CHAMPION, default_uri

    client = MlflowClient(default_uri(workdir))
    versions = client.search_model_versions("name = 'faults'")
    champion = client.get_model_version_by_alias("faults", CHAMPION)
    return (sorted(v.tags["raysoup.recipe"] for v in versions),
            champion.tags["raysoup.recipe"])


def test_killed_anywhere_resumes_to_the_same_result(tmp_path):
    cfg = tmp_path / "faults.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))

    # The uninterrupted reference runs beside the interrupted sequence (the machine is not
    # saturated by one small run); it is compared with at the end.
    ref = tmp_path / "ref"
    ref_log = open(tmp_path / "ref.log", "w+")  # noqa: SIM115 (closed below)
    ref_proc = raysoup(cfg, ref, log=ref_log)

    work = tmp_path / "work"
    log = []
    # 1. SIGINT (Ctrl-C) as soon as the first trial's ingredient exists: fit() returns a
    #    partial result, which must not pass for a finished sweep.
    proc = raysoup(cfg, work)
    deadline = time.time() + 600
    while not list((work / "ingredients").glob("trial-*")) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    rc, _, err = finish(proc)
    log.append(("SIGINT mid-sweep", rc))
    assert rc != 0 and not (work / "results.parquet").exists(), err[-3000:]
    assert "interrupted" in err or "sweep incomplete" in err

    # 2.-3. SIGKILL in the resumed sweep, right after its first anytime-soup decision is
    # journaled, and inside the evaluation (which resumes the sweep again). (A kill right
    # after a finished trial and one mid-greedy: test_remote_workdir.py.)
    for point in ("anytime.offer=1", "evaluate.model=3"):
        rc, _, err = finish(raysoup(cfg, work, failpoints=point))
        log.append((point, rc))
        assert rc == -signal.SIGKILL, (point, rc, err[-3000:])
        assert f"failpoint {point.split('=')[0]}" in err
    assert not list(work.glob("soups/*/recipe.json"))  # killed before any soup was cooked

    # 4. SIGKILL between logging a soup's MLflow Model and registering it (the second soup).
    rc, _, err = finish(raysoup(cfg, work, failpoints="publish.logged=2"))
    log.append(("publish.logged=2", rc))
    assert rc == -signal.SIGKILL, err[-3000:]

    rc, _, err = finish(raysoup(cfg, work))
    assert rc == 0, err[-3000:]

    rc, _, _ = finish(ref_proc)
    ref_log.seek(0)
    assert rc == 0, ref_log.read()[-3000:]
    ref_log.close()
    # Same rows, same accuracies, same soup bytes as the uninterrupted run.
    assert pq.read_table(work / "results.parquet").equals(pq.read_table(ref / "results.parquet"))
    assert soup_files(work) == soup_files(ref)
    # The same anytime soup, decision by decision, and so the same proposals.
    assert (work / "anytime.jsonl").read_text() == (ref / "anytime.jsonl").read_text()
    # Exactly one MLflow run per trial and per soup (plus the sweep), none left RUNNING.
    runs = mlflow_runs(work)
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(r.info.run_name for r in mlflow_runs(ref))
    assert names == ["soup-greedy", "soup-ties", "soup-uniform", "sweep", "trial-000",
                     "trial-001", "trial-002"]
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    # One registered version per weight soup, none twice (killed between logging the model
    # and registering it), and the same champion as the uninterrupted run.
    assert registry(work) == registry(ref)
    versions, _ = registry(work)
    assert sorted(versions) == ["greedy", "ties", "uniform"], versions
    print(json.dumps(log))
