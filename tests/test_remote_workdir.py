"""A workdir on S3, end to end: `raysoup run --workdir s3://…` against a real S3-compatible
server (moto, on 127.0.0.1), killed mid-sweep and mid-greedy and resumed each time by a
"new machine" (a fresh, empty local cache). Everything the final run needs — Tune's state,
ingredients, results, the greedy journal, MLflow's store — must come from the bucket."""

import io
import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml
from driver import finish
from small import small_config

from raysoup.faults import ENV
from raysoup.storage import CACHE_ENV
from raysoup.workdir.lock import SETTLE_ENV

pytestmark = pytest.mark.slow

CONFIG = small_config(
    name="remote",
    model={"pretrain": {"threads": 1}},
    # speculation 1: one greedy decision per round, so there is a decision to die after.
    soup={"greedy": {"speculation": 1}},
    sweep={"max_concurrent": 2},  # trials in flight when machine A dies
)


def raysoup(cfg, workdir: str, env: dict, cache, failpoints=None):
    """`raysoup run CFG --workdir URI`; cfg=None: `raysoup resume URI` (nothing but the URI)."""
    env = {**{k: v for k, v in os.environ.items() if k != ENV}, **env, CACHE_ENV: str(cache)}
    # One driver at a time here (no contender to wait out), and the moto store is read-after-
    # write consistent: a short settle keeps the lease path without 2 s per lock taken.
    env.setdefault(SETTLE_ENV, "0.2")
    if failpoints:
        env[ENV] = failpoints
    args = ["run", str(cfg), "--workdir", workdir] if cfg else ["resume", workdir]
    proc = subprocess.Popen([sys.executable, "-m", "raysoup.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    rc, out, err = finish(proc, timeout=900)
    return rc, err, out


def test_s3_workdir_resumes_on_fresh_machines(s3_server, tmp_path):
    cfg = tmp_path / "remote.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    uri = s3_server.uri("exp")

    # Machine A dies after the first trial finishes (the others are mid-training).
    rc, err, _ = raysoup(cfg, uri, s3_server.env, tmp_path / "cache-a", "sweep.trial_complete=1")
    assert rc == -signal.SIGKILL, err[-3000:]
    assert "failpoint sweep.trial_complete" in err
    # Machine B resumes the sweep from Tune's state in the bucket, then dies mid-greedy.
    rc, err, _ = raysoup(cfg, uri, s3_server.env, tmp_path / "cache-b", "greedy.decision=1")
    assert rc == -signal.SIGKILL, err[-3000:]
    assert f"sweep: resuming from {uri}/tune/sweep" in err
    soups = s3_server.files("exp/soups")
    assert "exp/soups/.greedy.journal.jsonl" in soups  # in the bucket
    assert not [f for f in soups if f.startswith("exp/soups/greedy/")]  # no half soup
    # Machine C finishes with `raysoup resume URI` (the config comes from the bucket): no
    # trial or evaluation is redone, the journaled decision is replayed.
    rc, err, out = raysoup(None, uri, s3_server.env, tmp_path / "cache-c")
    assert rc == 0, err[-3000:]
    assert "ingredients already present" in err and "'replayed': 1" in err, err[-3000:]
    assert f"workdir {uri}" in out and f"report: {uri}/report/README.md" in out

    files = s3_server.files("exp")
    ingredients = sorted({f.split("/")[2] for f in files if f.startswith("exp/ingredients/")})
    assert ingredients == ["trial-000", "trial-001", "trial-002", "zeroshot"]
    for name in ingredients:
        assert {f"exp/ingredients/{name}/manifest.json",
                f"exp/ingredients/{name}/model.safetensors"} <= set(files)
    for recipe in ("uniform", "greedy"):
        soup = {f.split("/")[-1] for f in files if f.startswith(f"exp/soups/{recipe}/")}
        assert soup == {"recipe.json", "model.safetensors.index.json",
                        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert "exp/soups/.greedy.journal.jsonl" not in files  # the soup is the record now
    assert "exp/report/figure.png" in files

    table = pq.read_table(io.BytesIO(s3_server.get("exp/results.parquet")))
    models = set(table["model"].to_pylist())
    assert models == {*ingredients, "uniform_soup", "greedy_soup"}
    pairs = list(zip(table["model"].to_pylist(), table["split"].to_pylist(), strict=True))
    assert len(pairs) == len(set(pairs)) == len(models) * len(set(table["split"].to_pylist()))

    # Machine C evaluated and souped ingredients it never held: every tensor was read from
    # the bucket (ranged reads for the reduction), none was downloaded into its cache.
    mirror_c = tmp_path / "cache-c" / "raysoup-mirror" / "s3" / s3_server.bucket / "exp"
    assert not list(mirror_c.glob("ingredients/*/model.safetensors"))

    # MLflow's SQLite store travelled through the bucket: one run per trial and soup, plus
    # the sweep, all finished.
    db = tmp_path / "mlflow.db"
    db.write_bytes(s3_server.get("exp/mlflow.db"))
    from raysoup.tracking import Tracker

    runs = Tracker(f"sqlite:///{db}", "remote").runs()
    assert sorted(r.info.run_name for r in runs) == [
        "soup-greedy", "soup-uniform", "sweep", "trial-000", "trial-001", "trial-002",
        "zeroshot"]
    # Their artifacts (report, soup recipes) were copied to the bucket too.
    artifacts = s3_server.files("exp/mlartifacts")
    assert any(f.endswith("/artifacts/report/figure.png") for f in artifacts), artifacts
    assert sum(f.endswith("/artifacts/recipe.json") for f in artifacts) == 2, artifacts
    assert {r.info.status for r in runs} == {"FINISHED"}, [
        (r.info.run_name, r.info.status) for r in runs]
