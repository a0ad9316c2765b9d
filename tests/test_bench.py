"""The benchmark harness (bench/, run as `python -m bench`): the smoke run writes every figure;
no timing or speed target is asserted."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import rounds

REPO = Path(__file__).resolve().parents[1]


def test_b6_rounds_respect_the_bound():
    out = rounds.run([False, True, False, False, True, False])
    for label in ("synthetic_n72", "recorded_B2"):
        seq = out[label]
        n, acc = seq["candidates"], seq["accepted"] - 1  # acceptances after the first
        for m, r in seq["rounds"].items():
            assert 1 <= r <= math.ceil((n - 1) / int(m)) + acc
    assert out["synthetic_n72"]["accepted"] == 5
    assert out["rounds"]["1"] == 71  # M=1 is the sequential loop: one round per candidate


def test_probe_measures_in_a_fresh_interpreter(tmp_path):
    from bench.probe import run_probe

    f = tmp_path / "blob"
    f.write_bytes(b"x" * 123_457)
    out = run_probe("raw_read", {"files": [str(f)]})
    assert out["bytes"] == 123_457
    assert out["seconds"] > 0 and out["peak_rss"] >= out["rss_after_imports"] > 0


def test_machine_facts_are_recorded():
    from bench.runner import machine

    m = machine()
    assert m["cpu_model"] and isinstance(m["cpu_flags"], list) and m["cpu_flags"]
    assert m["kernel"] and m["transparent_hugepages"] in (None, "always", "madvise", "never")


def test_probe_records_the_route_and_the_compiled_passes_that_ran(tmp_path):
    """The B1 contenders' records say which I/O route each tensor took and which compiled
    passes ran (and whether numba compiled them inside the timer)."""
    import torch
    from safetensors.torch import save_file

    from bench.probe import run_probe

    paths = []
    for i in range(3):
        (tmp_path / f"m{i}").mkdir()
        save_file({"w": torch.randn(300, 7), "b": torch.randn(5)},
                  str(tmp_path / f"m{i}" / "model.safetensors"))
        paths.append(str(tmp_path / f"m{i}"))
    plan = [["w", "b"]]
    ties = run_probe("raysoup_ties", {"paths": paths, "plan": plan}, route="mapping")
    assert ties["routes"] == {"mapping": 2}  # both tensors through the files' mappings
    assert ties["compiled"]["ties_files"]["ran"]
    assert not ties["compiled"]["ties_slices"]["ran"]  # the Python route's merge did not run
    assert ties["compile_in_timer_s"] >= 0
    # too small to measure the routes on: the positioned reads, which are never slow
    uniform = run_probe("raysoup_reduce", {"paths": paths, "plan": plan})
    assert uniform["routes"] == {"pread": 2} and uniform["compiled"]["uniform_files"]["ran"]
    assert uniform["io_calibration"] == {}


@pytest.mark.slow
def test_quick_bench_writes_every_figure(tmp_path):
    path = tmp_path / "bench.json"
    # bench is not installed: `python -m` finds it in the working directory, the checkout.
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(path),
                           "--only", "B1,B2,B3,B4,B6"], cwd=REPO, capture_output=True, text=True,
                          timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(path.read_text())
    for key in ("B1.floor_ratio", "B1.seed_speedup", "B1.rss_ratio", "B1.seed_rss_ratio",
                "B1.ties_floor_ratio", "B1.ties_rss_ratio",
                "B2.seed_speedup", "B3.pool_vs_bare", "B4.overhead_ratio"):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    assert result["B2.same_selection"] is True
    b6 = result["details"]["B6"]
    for label in ("synthetic_n72", "recorded_B2"):
        n, acc = b6[label]["candidates"], b6[label]["accepted"] - 1
        for m in (1, 4, 8):
            assert result[f"B6.rounds.M{m}"] == b6["synthetic_n72"]["rounds"][str(m)]
            assert b6[label]["rounds"][str(m)] <= math.ceil((n - 1) / m) + acc
    assert set(result["details"]["B1"]["pure_by_shards"]) == {"1", "2", "4"}
    assert result["details"]["B1"]["floor_with_output_s"] > 0
    # what ran, so a figure from another machine can be explained
    m = result["machine"]
    assert m["cpu_model"] and m["cpu_flags"] and m["kernel"] and "transparent_hugepages" in m
    b1 = result["details"]["B1"]
    for who in ("raysoup", "ties"):
        ran = b1["ran"][who]
        assert sum(ran["routes"].values()) > 0 and ran["compile_in_timer_s"] >= 0
    assert b1["ran"]["ties"]["compiled"]["ties_files"]["ran"]
    # each I/O route forced in the usual page cache (the full bench forces them in 4 KiB pages
    # too); the slow condition's figures with the route `auto` chose
    n = sum(b1["ran"]["ties"]["routes"].values())  # the floating tensors
    assert b1["by_route"]["mapping"]["routes"]["ties"] == {"mapping": n}
    assert b1["by_route"]["read"]["routes"]["raysoup"] == {"pread": n}
    small = b1["small_pages"]
    assert small["floor_s"] > 0 and small["ties_s"] > 0 and small["by_route"] == {}
    assert sum(small["routes"]["ties"].values()) == n
    assert "B1 routes:" in proc.stdout and "B1 in 4 KiB pages:" in proc.stdout
    for cpu in (b1["cpu"], small["cpu"]):  # CPU time beside the wall time
        assert cpu["floor_s"] > 0 and cpu["ties_floor_ratio"] > 0
    assert "B1 ran:" in proc.stdout and "machine:" in proc.stdout
    assert "B1 CPU time:" in proc.stdout
    assert "B1.floor_ratio" in proc.stdout  # the figures are printed too


def test_tree_pss_counts_a_child_process(tmp_path):
    """bench S's memory figure: a child holding 200 MiB shows up in its parent's tree."""
    from bench.streaming import peak_pss_of

    code = "import time; b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1)"
    small, _ = peak_pss_of([sys.executable, "-c", "import time; time.sleep(1)"])
    big, _ = peak_pss_of([sys.executable, "-c",
                          f"import subprocess, sys; subprocess.run([sys.executable, '-c', {code!r}])"])
    assert big - small > 150 << 20
