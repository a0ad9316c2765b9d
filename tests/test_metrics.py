"""Live metrics and console output of a real `raysoup run`: the session's `served_run`
(tests/conftest.py), a subprocess with its own Ray instance started with a metrics export port
(the session-wide `ray_session` fixture has none), its stderr a pipe, not a TTY, like CI or
`ray job submit`. It checks the union of every scrape made while the run went (export
interval lowered to 1 s with RAY_metrics_report_interval_ms)."""

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DASHBOARD = Path(__file__).parents[1] / "dashboards" / "raysoup.json"


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    variables = [v["query"]["query"] for v in dash["templating"]["list"]
                 if isinstance(v.get("query"), dict)]
    return exprs + variables


def test_dashboard_metrics_are_exported(served_run):
    assert served_run["rc"] == 0, served_run["stderr"][-3000:]
    seen = served_run["seen"]
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
    labels = served_run["labels"]
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


def test_console_is_line_oriented_without_a_tty(served_run):
    """stderr is a pipe: no carriage-return progress bars, plain progress lines instead."""
    assert served_run["rc"] == 0
    out, err = served_run["stdout"], served_run["stderr"]
    assert "\r" not in err and "\r" not in out
    for line in (r"raysoup: sweep: trial-00\d finished \(2/2\)",
                 r"raysoup: evaluate: 3/3 models \(\d+ s\).*",
                 r"raysoup: soup evaluation: 2/2 models \(\d+ s\).*",
                 r"raysoup: ── report done in [\d.]+ s \(CPU [\d.]+ s\)"):
        assert re.search(f"^{line}$", err, re.MULTILINE), (line, err[-3000:])
    assert re.search(r"^\| greedy.soup \|", out, re.MULTILINE), out  # the summary table
