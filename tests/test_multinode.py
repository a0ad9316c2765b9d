"""Node loss on a simulated multi-node cluster (ray.cluster_utils.Cluster, fast health
checks): a worker node removed mid-sweep, an eval actor killed and its node removed
mid-evaluation; every trial finishes and every evaluation lands. The cluster runs in its own process (tests/multinode_drill.py),
apart from the test session's local Ray."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from small import small_config

pytestmark = pytest.mark.slow

CONFIG = small_config(
    name="multinode",
    model={"pretrain": {"threads": 1}},
    # Two eval actors: one is killed with its node while the other goes on.
    sweep={"max_failures": 3, "max_concurrent": 2, "base": {"epochs": 3}},
    eval={"num_actors": 2},
    soup={"recipes": ["uniform"]},
)


def test_node_loss_mid_sweep_and_mid_evaluation(tmp_path):
    cfg = tmp_path / "multinode.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    work = tmp_path / "work"
    drill = Path(__file__).with_name("multinode_drill.py")
    proc = subprocess.run([sys.executable, str(drill), str(cfg), str(work)], check=False,
                          capture_output=True,
                          text=True, timeout=1500)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stderr[-4000:]
    report = json.loads(lines[-1])
    assert report["events"] == ["removed a worker node mid-sweep",
                                "killed an eval actor and removed its node mid-evaluation"], report
    assert report["returncode"] == 0, report["stderr_tail"]
    # The node loss really hit work in flight: a trial was retried, an eval actor replaced.
    assert report["trial_retried"] and report["actor_replaced"], report["stderr_tail"]

    ingredients = sorted(p.name for p in (work / "ingredients").iterdir())
    assert ingredients == ["trial-000", "trial-001", "trial-002", "zeroshot"]
    table = pq.read_table(work / "results.parquet")
    models = set(table["model"].to_pylist())
    splits = set(table["split"].to_pylist())
    assert models == {*ingredients, "uniform_soup"}
    assert table.num_rows == len(models) * len(splits)  # every (model, split) landed once
