"""The cluster file's node types: how many trials / eval actors each admits, and whether its
memory holds them.

The file is looked for where the command runs (`./cluster.yaml`, as `ray up cluster.yaml`
takes it), never beside the package: an installed raysoup has no repository around it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from raysoup.config import DATA_PARALLEL_DRIVER_CPU, ExperimentCfg
from raysoup.dryrun.sizing import GiB, MiB, Needs, gib

# Relative: resolved against the current directory when the plan is made.
CLUSTER_FILE = Path("cluster.yaml")
# Host memory of the instance types cluster.yaml uses (AWS specifications).
INSTANCE_MEMORY_GIB = {"m6i.2xlarge": 32, "g5.xlarge": 16, "p4d.24xlarge": 1152}


@dataclass(frozen=True)
class Node:
    """One node type: its resources and instance type (memory: None when unknown)."""

    name: str
    itype: str
    cpu: float
    gpu: float
    mem: int | None  # GiB

    @classmethod
    def parse(cls, name: str, node: dict) -> Node:
        res = node.get("resources") or {}
        itype = (node.get("node_config") or {}).get("InstanceType", "?")
        return cls(name, itype, float(res.get("CPU", 0)), float(res.get("GPU", 0)),
                   INSTANCE_MEMORY_GIB.get(itype))


def placement_error(cfg: ExperimentCfg, nodes: list[tuple[float, float]],
                    where: str) -> str | None:
    """Why a data-parallel trial (`sweep.workers_per_trial` > 1) cannot be placed on `nodes`
    ((CPUs, GPUs) of each), None when it can: its process (DATA_PARALLEL_DRIVER_CPU) on one
    node and its workers' bundles anywhere (Ray Train packs them where it can and spreads
    them where it must)."""
    s = cfg.sweep
    n, w = s.workers_per_trial, s.resources_per_worker
    if n == 1:
        return None

    def fits(cpu: float, gpu: float) -> int:
        by_cpu = int(cpu // w.cpu) if w.cpu else n
        return max(0, min(by_cpu, int(gpu // w.gpu) if w.gpu else n))

    for j, (cpu, gpu) in enumerate(nodes):
        if cpu < DATA_PARALLEL_DRIVER_CPU:
            continue
        placed = sum(fits(c - (DATA_PARALLEL_DRIVER_CPU if i == j else 0), g)
                     for i, (c, g) in enumerate(nodes))
        if placed >= n:
            return None
    have = ", ".join(f"{c:g} CPU + {g:g} GPU" for c, g in nodes) or "no node"
    return (f"sweep.workers_per_trial={n}: a trial needs {n} workers x ({w.cpu:g} CPU + "
            f"{w.gpu:g} GPU) (sweep.resources_per_worker) + {DATA_PARALLEL_DRIVER_CPU:g} CPU "
            f"for the trial's process, {n * w.cpu + DATA_PARALLEL_DRIVER_CPU:g} CPU + "
            f"{n * w.gpu:g} GPU in all; {where} has {have}, so no trial could start. Lower "
            "sweep.workers_per_trial or sweep.resources_per_worker, or run on a larger cluster")


def local_machine() -> tuple[float, float]:
    """(CPUs, GPUs) a fresh local Ray cluster would see here (GPUs: NVIDIA device files)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip()])
    else:
        gpus = sum(1 for p in Path("/dev").glob("nvidia[0-9]*"))
    return float(cpus or 1), float(gpus)


def local_lines(cfg: ExperimentCfg, warnings: list[str]) -> list[str]:
    """Where no cluster is named (no RAY_ADDRESS), the run starts a local cluster of this
    machine: a data-parallel request it cannot place is refused by the run, and said here."""
    if os.environ.get("RAY_ADDRESS") or cfg.sweep.workers_per_trial == 1:
        return []
    cpu, gpu = local_machine()
    error = placement_error(cfg, [(cpu, gpu)], "this machine")
    if error is not None:
        warnings.append(f"a run on a local cluster refuses this: {error}")
    return [f"local        this machine: {cpu:g} CPU, {gpu:g} GPU"
            + (" (cannot place a trial's workers)" if error else "")]


def cluster_lines(cfg: ExperimentCfg, needs: Needs, path: Path | None,
                  warnings: list[str]) -> list[str]:
    """The cluster section: where the file was looked for, then a line per node type
    (`path` None: no section)."""
    import yaml

    if path is None:
        return []
    path = Path(path).absolute()
    if not path.is_file():
        return [f"cluster      no {path.name} in {path.parent}: node types not checked"]
    try:
        types = (yaml.safe_load(path.read_text()) or {}).get("available_node_types") or {}
    except yaml.YAMLError as e:
        warnings.append(f"{path}: not valid YAML: {e}")
        return []
    lines = [f"cluster      {path}: node types"]
    for name, spec in types.items():
        lines.append(_node_line(cfg, needs, Node.parse(name, spec), warnings))
    return lines


def _node_line(cfg: ExperimentCfg, needs: Needs, node: Node, warnings: list[str]) -> str:
    if node.cpu == 0 and node.gpu == 0:
        return f"  {node.name:<12} {node.itype}: runs no tasks (driver, services)"
    trial = needs.trial
    if trial is not None and needs.train_decoded is not None and node.mem is not None:
        budget = cfg.data.train_budget_mb(node.mem * GiB) * MiB
        if needs.train_decoded <= budget:  # the trial holds the decoded split
            trial += needs.train_decoded
    s, e = cfg.sweep, cfg.eval
    # A data-parallel trial's unit of placement is one worker (Train may spread them over
    # nodes); its memory need is a worker's.
    unit = ("trial worker", s.resources_per_worker) if s.workers_per_trial > 1 \
        else ("trial", s.resources_per_trial)
    parts = [_fit(node, unit[0], unit[1].cpu, unit[1].gpu, trial, s.workers_per_trial, warnings),
             _fit(node, "eval actor", e.cpus_per_actor, e.gpus_per_actor, needs.actor,
                  s.workers_per_trial, warnings)]
    memory = f"{node.mem} GiB" if node.mem is not None else "memory unknown"
    return (f"  {node.name:<12} {node.itype} ({memory}, {node.cpu:g} CPU, {node.gpu:g} GPU): "
            + ", ".join(parts))


def _fit(node: Node, what: str, need_cpu: float, need_gpu: float, need: int | None,
         workers: int, warnings: list[str]) -> str:
    """How many of `what` the node's CPUs/GPUs admit; warns where they or its memory fall short."""
    fit = int(node.cpu // need_cpu) if need_cpu else 10**9
    if need_gpu:
        fit = min(fit, int(node.gpu // need_gpu))
    part = f"{fit} {what}(s)" + (f" = {fit // workers} whole {workers}-worker trial(s)"
                                 if what == "trial worker" else "")
    article = "an" if what[0] == "e" else "a"
    if fit == 0:
        warnings.append(f"cluster node type {node.name} ({node.itype}: {node.cpu:g} CPU, "
                        f"{node.gpu:g} GPU) cannot run {article} {what}: it needs {need_cpu:g} "
                        f"CPU + {need_gpu:g} GPU")
    elif node.mem is not None and need is not None:
        if need > node.mem * GiB:
            warnings.append(f"cluster node type {node.name} ({node.itype}, {node.mem} GiB) "
                            f"cannot hold {article} {what}: it needs ~{gib(need)}")
        elif fit * need > node.mem * GiB:
            warnings.append(f"cluster node type {node.name} ({node.itype}, {node.mem} GiB): "
                            f"{fit} {what}s fit its CPUs/GPUs but need ~{gib(fit * need)} of "
                            "memory")
    return part
