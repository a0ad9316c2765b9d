"""cluster.yaml passes Ray's own launcher schema and sets what raysoup relies on on a cluster."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def cluster():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config = prepare_config(raw)  # merges the AWS defaults, as `ray up` does
    validate_config(config)  # raises on anything ray-schema.json rejects
    return config


def pinned_dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [d for d in project["dependencies"] if "==" in d]


def test_node_types_have_integer_resources(cluster):
    types = cluster["available_node_types"]
    head = cluster["head_node_type"]
    assert head in types and len(types) >= 2
    for name, node in types.items():
        res = node["resources"]
        for key in ("CPU", "GPU"):
            assert type(res[key]) is int and res[key] >= 0, (name, key, res)
        if name != head:
            assert res["GPU"] >= 1 and res["CPU"] >= 1, name
            assert node["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
            assert 0 <= node["min_workers"] <= node["max_workers"] <= cluster["max_workers"]
    assert "InstanceMarketOptions" not in types[head]["node_config"]  # the driver is on-demand
    assert types[head]["resources"]["GPU"] == 0
    instance = {n["node_config"]["InstanceType"] for n in types.values()}
    assert {"g5.xlarge", "p4d.24xlarge"} <= instance
    # Spot nodes must be terminated, not stopped.
    assert cluster["provider"]["type"] == "aws" and cluster["provider"]["cache_stopped_nodes"] is False


def test_setup_installs_the_pinned_stack_not_a_nightly(cluster):
    setup = "\n".join(cluster["setup_commands"])
    everything = "\n".join(cluster["setup_commands"] + cluster["head_setup_commands"]
                           + cluster["worker_setup_commands"] + cluster["initialization_commands"])
    assert "ray-wheels" not in everything and "dev0" not in everything
    assert '"ray[default,tune]==2.60.0"' in setup
    # torch, torchvision and ray are installed first with pyproject's exact pins (a torch
    # resolved freely next to a pinned torchvision breaks); `-e ~/raysoup` (the repo, from
    # file_mounts) then installs the rest of pyproject's pins into the same venv.
    pins = {p.split("==")[0]: p for p in pinned_dependencies()}
    assert pins["ray[default,tune]"] == "ray[default,tune]==2.60.0"
    for name in ("torch", "torchvision", "ray[default,tune]"):
        assert re.search(rf"(^|[\s\"]){re.escape(pins[name])}\b", setup), pins[name]
    assert setup.index("torch==") < setup.index("-e ~/raysoup")
    assert cluster["file_mounts"] == {"~/raysoup": "."}
    assert {".venv", "runs", ".git"} <= set(cluster["rsync_exclude"])
    assert "--python 3.11" in setup  # pyproject: requires-python >= 3.11
    assert "/mnt/shared" in setup  # shared storage for workdirs


def test_every_node_exports_metrics_and_the_head_runs_mlflow(cluster):
    head = "\n".join(cluster["head_start_ray_commands"])
    worker = "\n".join(cluster["worker_start_ray_commands"])
    for commands in (head, worker):
        assert re.search(r"ray start .*--metrics-export-port[= ]8080\b", commands), commands
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "$RAY_HEAD_IP:6379" in worker
    assert re.search(r"mlflow server .*--backend-store-uri sqlite:///\S+ .*--port 5000", head)
    assert "--artifacts-destination" in head
    assert "cp ~/raysoup/dashboards/raysoup.json /tmp/ray/session_latest/metrics/grafana/dashboards/" \
        in head
