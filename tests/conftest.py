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

ROOT = Path(__file__).parents[1]

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray cluster for the whole test session (start-up costs ~3 s)."""
    import ray

    if not ray.is_initialized():
        # "local": a fresh cluster, never one another process started on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A real moto S3 server with one bucket, for the module (tests/s3server.py)."""
    from s3server import s3_server

    with s3_server(tmp_path_factory.mktemp("s3-server")) as server:
        yield server


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch):
    """s3_server with an empty bucket, and this test's environment pointed at it: AWS_*
    variables, RAYSOUP_CACHE=tmp_path/cache, no raysoup filesystem cached for another endpoint."""
    from raysoup import storage

    s3_server.clear()
    s3_server.activate(monkeypatch, tmp_path / "cache")
    yield s3_server
    storage._filesystem.cache_clear()


@pytest.fixture(scope="session")
def imagenet_fixture(tmp_path_factory):
    """The ImageNet-shaped fixture (raysoup/fixture.py), generated once per session:
    {role: path}, with the root as "root"."""
    from raysoup.fixture import write_imagenet_fixture

    root = tmp_path_factory.mktemp("imagenet-fixture")
    return {**write_imagenet_fixture(root), "root": str(root)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """Ray's Prometheus endpoint, parsed: [(metric, labels, value)]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#") and (m := SAMPLE.match(line)):
            labels = dict(LABEL.findall(m["labels"] or ""))
            out.append((m["name"], labels, float(m["value"])))
    return out


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` as cluster.yaml starts it (SQLite under `root`, proxied artifacts),
    once it answers /health; its log in root/server.log."""
    with (root / "server.log").open("a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # own process group
            # No job-execution workers (MLflow 3's GenAI jobs, unused here): seven fewer processes.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_mlflow_server(proc)
            raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()}")
        time.sleep(0.3)


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    # The server forks workers: stop the whole group. SIGKILL: on SIGTERM they took 5-10 s to
    # exit, and a test server's SQLite store in a temp dir needs no clean shutdown.
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = start_mlflow_server(root, port)
    try:
        yield f"http://127.0.0.1:{port}", root
    finally:
        stop_mlflow_server(proc)


@pytest.fixture(scope="session")
def served_run(tmp_path_factory, mlflow_server):
    """One `raysoup run` (a subprocess, stderr a pipe as in CI) shared by the metrics, console
    and MLflow-server tests: experiments/tiny.yaml shrunk by tests/small.py, logging to a real
    `mlflow server`, with --metrics-export-port, scraped every second while it runs.

    Scraping: Ray's metrics agent keeps counters for the life of the node, but a gauge
    disappears ~2 export intervals after its process stops reporting it, and the endpoint
    goes away when the driver shuts Ray down; so the union of every scrape is kept."""
    from small import small_overrides

    url, server_root = mlflow_server
    tmp = tmp_path_factory.mktemp("metrics-run")
    port = free_port()
    env = {**os.environ, "RAY_metrics_report_interval_ms": "1000"}
    cmd = [sys.executable, "-m", "raysoup.cli", "run", str(ROOT / "experiments" / "tiny.yaml"),
           "--workdir", str(tmp / "work"), "--metrics-export-port", str(port)]
    overrides = [*small_overrides(epochs=2), f"tracking.uri={url}",
                 "tracking.experiment=server-e2e"]
    for override in overrides:
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
    return {"rc": proc.returncode, "seen": seen, "labels": labels, "workdir": tmp / "work",
            "url": url, "server_root": server_root,
            "stdout": (tmp / "stdout").read_text(), "stderr": (tmp / "stderr").read_text()}


@pytest.fixture(scope="session")
def drill_run(tmp_path_factory):
    """tests/small.py's DRILL, one uninterrupted `raysoup run` (a subprocess, its own local
    Ray), shared by test_kill_and_resume and test_drill72 (the reference their interrupted
    and disturbed runs must reproduce: the end state is taken right after the run, before any
    test touches the workdir) and test_pipeline (its checks, then re-runs in this process on
    the same workdir)."""
    import yaml
    from driver import end_state, finish, start_run
    from small import DRILL

    tmp = tmp_path_factory.mktemp("drill-run")
    cfg = tmp / "drill.yaml"
    cfg.write_text(yaml.safe_dump(DRILL))
    rc, out, err = finish(start_run(cfg, tmp / "work"), timeout=900)
    assert rc == 0, err[-3000:]
    return {"config": cfg, "workdir": tmp / "work", "stdout": out, "stderr": err,
            "end_state": end_state(tmp / "work", DRILL["name"])}


# Under pytest-xdist (pyproject's addopts: -n auto, at most 4) the tests of a group run on one
# worker, one after another, so that those sharing an expensive session fixture build it
# once. (xdist 3.8's `--dist loadgroup` does not group under pytest 9.2 — two
# `xdist_group`-marked modules run on two workers —, so its scope scheduler gets our scopes.)
XDIST_GROUPS = {
    "test_metrics": "served-run", "test_mlflow_server": "served-run",
    "test_published_models": "served-run", "test_analysis": "served-run",
    "test_fixture_pack": "imagenet-fixture", "test_paper_fixture": "imagenet-fixture",
    "test_plan_sizing": "imagenet-fixture",
    "test_kill_and_resume": "drill-run", "test_pipeline": "drill-run",
    "test_drill72": "drill-run",
    # a module-scoped pool of eval actors
    "test_soup_cooking_on_ray": "soup-cooking", "test_recipes_on_ray": "recipes-on-ray",
}


# The longest tests (about a minute or more each on 2 cores) start first, so that no worker
# picks one up when the other is nearly done (the suite's wall time is the later worker's);
# then the modules with a test of 10-30 s that file order puts in the second half. (xdist's
# loadscope hands out the XDIST_GROUPS first, most tests first; this order is the rest's.)
LONGEST_FIRST = ("test_drill72", "test_kill_and_resume", "test_paper_fixture",
                 "test_remote_workdir", "test_data_parallel", "test_bench", "test_metrics",
                 "test_mlflow_server", "test_published_models", "test_python_api",
                 "test_text_pipeline", "test_sweep_outcomes", "test_mlflow_server_down",
                 "test_heldout_soup", "test_soup_placement", "test_search",
                 "test_soup_cooking_on_ray", "test_recipes_on_ray")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))  # stable


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = Path(nodeid.split("::", 1)[0]).stem
            return XDIST_GROUPS.get(module, nodeid)  # ungrouped: each test its own scope

    return GroupScheduling(config, log)

