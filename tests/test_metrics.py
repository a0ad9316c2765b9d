"""Live metrics and console output of a real `raysoup run`.

The run is a subprocess: it needs its own Ray instance started with a metrics export port
(the session-wide `ray_session` fixture has none), and its stderr is a pipe, not a TTY, like
CI or `ray job submit`.

Scraping: Ray's metrics agent keeps counters for the life of the node, but a gauge disappears
~2 export intervals after its process stops reporting it (finished task, killed eval actor),
and the whole endpoint goes away when the driver shuts Ray down. So the test scrapes every
second while the run is going (export interval lowered to 1 s with
RAY_metrics_report_interval_ms) and checks the union of everything it saw.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from small import small_overrides

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
DASHBOARD = ROOT / "dashboards" / "raysoup.json"

# experiments/tiny.yaml shrunk to a ~1-minute run (tests/small.py).
SMALL = small_overrides(epochs=1)

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#") and (m := SAMPLE.match(line)):
            labels = dict(LABEL.findall(m["labels"] or ""))
            out.append((m["name"], labels, float(m["value"])))
    return out


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    variables = [v["query"]["query"] for v in dash["templating"]["list"]
                 if isinstance(v.get("query"), dict)]
    return exprs + variables


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`raysoup run` with --metrics-export-port; scraped every second while it runs."""
    tmp = tmp_path_factory.mktemp("metrics-run")
    port = free_port()
    env = {**os.environ, "RAY_metrics_report_interval_ms": "1000"}
    cmd = [sys.executable, "-m", "raysoup.cli", "run", str(ROOT / "experiments" / "tiny.yaml"),
           "--workdir", str(tmp / "work"), "--metrics-export-port", str(port)]
    for override in SMALL:
        cmd += ["--set", override]
    seen: dict[str, float] = {}  # metric name -> largest sum over its series in one scrape
    labels: dict[str, set[tuple[str, str]]] = defaultdict(set)
    with open(tmp / "stdout", "w") as out, open(tmp / "stderr", "w") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=ROOT,
                                env=env, start_new_session=True)
        deadline = time.monotonic() + 900
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("raysoup run did not finish in 900 s")
                try:
                    samples = scrape(port)
                except OSError:
                    samples = []  # Ray not up yet, or already shut down
                sums: dict[str, float] = defaultdict(float)
                for name, lab, value in samples:
                    sums[name] += value
                    labels[name].update(lab.items())
                for name, total in sums.items():
                    seen[name] = max(seen.get(name, total), total)
                time.sleep(1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {"rc": proc.returncode, "seen": seen, "labels": labels,
            "stdout": (tmp / "stdout").read_text(), "stderr": (tmp / "stderr").read_text()}


def test_dashboard_metrics_are_exported(cli_run):
    assert cli_run["rc"] == 0, cli_run["stderr"][-3000:]
    seen = cli_run["seen"]
    used = {n for q in dashboard_queries() for n in re.findall(r"\bray_\w+", q)}
    ours = {n for n in used if n.startswith("ray_raysoup_")}
    assert len(ours) >= 10
    missing = sorted(used - set(seen))
    assert not missing, f"dashboard queries metrics never exported: {missing}"

    # The values tell the run's story: 2 trials; zeroshot + 2 trials evaluated, then 2 soups.
    # (The soups' counts may land after the last scrape that still found the driver alive.)
    assert seen["ray_raysoup_trials_finished_total"] == 2
    assert seen["ray_raysoup_trials_failed_total"] == 0
    assert 3 <= seen["ray_raysoup_models_evaluated_total"] <= 5
    assert seen["ray_raysoup_eval_images_total"] > 0
    assert seen["ray_raysoup_eval_images_per_second"] > 0
    assert seen["ray_raysoup_soup_candidates_tried_total"] >= 2  # greedy considers both
    assert seen["ray_raysoup_reduction_bytes_total"] > 0
    labels = cli_run["labels"]
    # Values reach the endpoint at the next export (~1 s): the last stages (soup evaluation,
    # report: a few seconds on a loaded machine) may end together with the driver before their
    # durations are exported (seen once in CI for soup evaluation).
    finished = {v for k, v in labels["ray_raysoup_stage_seconds"] if k == "stage"}
    assert {"prepare", "sweep", "evaluate", "soup"} <= finished
    assert ("recipe", "greedy") in labels["ray_raysoup_soup_candidates_tried_total"]
    # Every series carries the SessionName label the dashboard filters on.
    for name in ours:
        assert "SessionName" in {k for k, _ in labels[name]}, name


def test_dashboard_uses_rays_template_variables():
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["SessionName"]["datasource"] == "${datasource}"
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == "${datasource}"
            for target in panel["targets"]:
                assert 'SessionName=~"$SessionName"' in target["expr"], target["expr"]


def test_console_is_line_oriented_without_a_tty(cli_run):
    """stderr is a pipe: no carriage-return progress bars, plain progress lines instead."""
    assert cli_run["rc"] == 0
    out, err = cli_run["stdout"], cli_run["stderr"]
    assert "\r" not in err and "\r" not in out
    for line in (r"raysoup: sweep: trial-00\d finished \(2/2\)",
                 r"raysoup: evaluate: 3/3 models \(\d+ s\).*",
                 r"raysoup: soup evaluation: 2/2 models \(\d+ s\).*",
                 r"raysoup: ── report done in [\d.]+ s"):
        assert re.search(f"^{line}$", err, re.MULTILINE), (line, err[-3000:])
    assert re.search(r"^\| greedy.soup \|", out, re.MULTILINE), out  # the summary table
