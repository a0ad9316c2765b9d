"""The paper-shaped drill (tests/drill72.py) at its reduced size, in the default suite: the
session's `drill_run` experiment (tests/small.py's DRILL: 3 trials, the soup-aware search, the
anytime soup, uniform, greedy and TIES soups) disturbed on a simulated 2-node cluster — a node
lost with a trial in flight, another after trial 1, the driver SIGKILLed after trial 2, an eval
actor's node lost mid-evaluation, a node lost in the soup stage — and compared with
`drill_run`, the same config run undisturbed on a local Ray (shared with test_kill_and_resume
and test_pipeline: the results must not depend on the layout, and the comparison costs no run
of its own). The full size (72 trials, 8 nodes, 2-epoch trials) is run by hand; docs/cluster.md
has its last result and what this test costs. The cluster runs in the drill's own process,
apart from the test session's local Ray."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from drill72 import EVENTS, checks
from driver import end_state

pytestmark = pytest.mark.slow

DRILL = Path(__file__).with_name("drill72.py")


def test_reduced_paper_shaped_drill(drill_run, tmp_path):
    experiment = yaml.safe_load(drill_run["config"].read_text())
    proc = subprocess.run([sys.executable, str(DRILL), "--config", str(drill_run["config"]),
                           "--nodes", "2", "--no-reference", "--out", str(tmp_path),
                           "--timeout", "900"],
                          capture_output=True, text=True, timeout=1800, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stderr[-4000:]
    report = json.loads(lines[-1])
    assert report["events"] == list(EVENTS), report
    assert report["returncode"] == 0, report.get("stderr_tail")
    work = tmp_path / "disturbed"
    got = checks(drill_run["end_state"], end_state(work, experiment["name"]), work,
                 experiment["sweep"]["num_samples"],
                 (tmp_path / "disturbed.stderr.log").read_text())
    failed = [name for name, ok in got.items() if not ok]
    assert not failed, {**report, "failed": failed}
    assert len(got) == 11
    assert proc.returncode == 0
