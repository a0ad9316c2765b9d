"""Joining or starting the Ray cluster a run uses."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger("raysoup")


def connect(address: str | None, metrics_export_port: int | None = None,
            dashboard: bool = False) -> None:
    """Ray at `address` (None: a fresh local cluster), unless this process is connected."""
    if ray.is_initialized():
        return
    extra = {}
    if metrics_export_port and (address or os.environ.get("RAY_ADDRESS")):
        log.warning("--metrics-export-port ignored: a running cluster's nodes export metrics "
                    "on the port of `ray start --metrics-export-port` (see cluster.yaml)")
    elif metrics_export_port:
        extra["_metrics_export_port"] = metrics_export_port  # Prometheus endpoint of this node
    # Workers inherit the driver's environment; keep Tune's console output compact.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    # Tiny trials checkpoint every few seconds; Tune's snapshot-frequency warning is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # No --address: a fresh local cluster ("local"), never a `ray start` cluster that happens
    # to run on this machine (ray.init's default would silently join it). Inside `ray job
    # submit`, RAY_ADDRESS names the job's cluster.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        # Ray's dashboard on a local cluster is ~10 more processes (and ~5 CPU-seconds at
        # start on 2 cores) that a run does not need: started when asked, or with a metrics
        # port (it writes Ray's Grafana dashboards next to which ours sits).
        extra["include_dashboard"] = dashboard or bool(metrics_export_port)
    ray.init(address=address, log_to_driver=True, configure_logging=False, **extra)
