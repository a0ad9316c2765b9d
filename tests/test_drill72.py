"""The paper-shaped drill (tests/drill72.py) at its reduced size, in the default suite: 4 trials
on 2 simulated nodes, so that each disturbance has a trial boundary of its own (a node lost
after trial 1 with a trial in flight, another after trial 2, the driver SIGKILLed after trial 3,
an eval actor's node lost mid-evaluation, a node lost in the soup stage), against the same
config run undisturbed on a local Ray, one trial at a time (`--local-reference`: the results
must not depend on the layout, and one Ray node instead of a cluster costs less). The full size
(72 trials, 8 nodes) is run by hand; docs/cluster.md has its last result and what this costs.
The cluster runs in the drill's own process, apart from the test session's local Ray."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from drill72 import EVENTS

pytestmark = pytest.mark.slow

DRILL = Path(__file__).with_name("drill72.py")


def test_reduced_paper_shaped_drill(tmp_path):
    proc = subprocess.run([sys.executable, str(DRILL), "--trials", "4", "--nodes", "2",
                           "--local-reference", "--out", str(tmp_path), "--timeout", "900"],
                          capture_output=True, text=True, timeout=1800, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stderr[-4000:]
    report = json.loads(lines[-1])
    assert "reference_failed" not in report, report
    assert report["events"] == list(EVENTS), report
    assert report["returncode"] == 0, report.get("stderr_tail")
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert not failed, report
    assert len(report["checks"]) == 10
    assert proc.returncode == 0
