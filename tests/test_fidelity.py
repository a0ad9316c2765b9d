"""raysoup.fidelity: paired soup - best single differences over runs, on hand-made results;
raysoup.orchestration.seeds: the seed workdirs share what the sweep seed does not change."""

from __future__ import annotations

import json
import math

import pytest

from raysoup import fidelity
from raysoup.evaluate import results as res


def _workdir(tmp_path, name: str, models: dict[str, tuple[str, dict[str, int]]]):
    """models: name -> (kind, {split: correct out of 100})."""
    wd = tmp_path / name
    wd.mkdir()
    table = res.merge(res.empty(), [res.rows(m, kind, {s: (c, 100) for s, c in acc.items()})
                                    for m, (kind, acc) in models.items()])
    res.write_results(wd / "results.parquet", table)
    return wd


def test_paired_differences_and_criteria(tmp_path, capsys):
    # Run a: trial-b wins held-out (ties broken by the smaller name would pick trial-a only at
    # equal held-out). greedy +1 test over trial-b; uniform below on test, above on shift.
    a = _workdir(tmp_path, "a", {
        "trial-a": ("ingredient", {"heldout": 70, "test": 60, "s1": 40, "s2": 50}),
        "trial-b": ("ingredient", {"heldout": 72, "test": 62, "s1": 42, "s2": 44}),
        "greedy_soup": ("soup", {"heldout": 73, "test": 63, "s1": 42, "s2": 44}),
        "uniform_soup": ("soup", {"heldout": 71, "test": 61, "s1": 45, "s2": 47}),
    })
    # Run b: a held-out tie (trial-a, smaller name, is the best single); greedy loses on test.
    b = _workdir(tmp_path, "b", {
        "trial-a": ("ingredient", {"heldout": 70, "test": 65, "s1": 40, "s2": 40}),
        "trial-b": ("ingredient", {"heldout": 70, "test": 66, "s1": 41, "s2": 41}),
        "greedy_soup": ("soup", {"heldout": 71, "test": 64, "s1": 39, "s2": 39}),
        "uniform_soup": ("soup", {"heldout": 70, "test": 66, "s1": 39, "s2": 39}),
    })
    runs = [fidelity.summarize_run(a), fidelity.summarize_run(b)]
    assert [r.best.model for r in runs] == ["trial-b", "trial-a"]
    assert runs[0].shifts == ["s1", "s2"]

    # greedy - best on test: a: 63-62 = +1, b: 64-65 = -1 -> mean 0, sd sqrt(2), se 1.
    mean, se = fidelity.paired([1.0, -1.0])
    assert mean == 0.0 and se == pytest.approx(1.0)
    assert math.isnan(fidelity.paired([2.0])[1])

    text = fidelity.report(runs)
    assert "| greedy_soup |" in text and "+0.00 ± 1.00 [+1.00, -1.00]" in text
    # uniform mean shift: a: 46-43 = +3, b: 39-40 = -1 -> +1.00 ± 2.00.
    assert "+1.00 ± 2.00 [+3.00, -1.00]" in text
    # The paper's claims (no per-image bits here: across runs only, a t-interval with 1 degree
    # of freedom, 12.706 × SE): greedy - best test [+1, -1], nothing contradicts "≥";
    # uniform - best mean shift [+3, -1] is not distinguishable from 0.
    assert ("✓ greedy − best single, test ≥ 0: holds; across runs +0.00 [-12.71, +12.71]; "
            "per run +1.00, -1.00") in text
    assert ("~ uniform − best single, mean shift > 0: not distinguishable; across runs "
            "+1.00 [-24.41, +26.41]") in text
    assert "✓ greedy − uniform, test ≥ 0: holds; across runs +0.00 [-25.41, +25.41]" in text
    assert "✗ zero-shot → best single, test ≥ +10 points: n/a" in text  # no zero-shot

    assert fidelity.main([str(a), str(b)]) == 0
    assert "best single (trial-b)" in capsys.readouterr().out


def _bits_workdir(tmp_path, name: str, models: dict[str, tuple[str, dict[str, int]]]):
    """As `_workdir`, with per-image correctness: a model right on images 0..c-1 of 100 (so
    the better of two is right on a superset: every disagreement goes one way)."""
    import numpy as np

    wd = tmp_path / name
    wd.mkdir()
    table = res.merge(res.empty(), [
        res.rows(m, kind, {s: (c, 100, np.packbits(np.arange(100) < c).tobytes())
                           for s, c in acc.items()}) for m, (kind, acc) in models.items()])
    res.write_results(wd / "results.parquet", table)
    return wd


def test_criteria_in_interval_form_per_run_and_across_runs(tmp_path):
    from raysoup.evaluate.paired import interval

    runs = []
    for i, greedy in enumerate((50, 61, 61)):  # run 0: greedy 10 images below the best
        runs.append(fidelity.summarize_run(_bits_workdir(tmp_path, f"seed-{i}", {
            "zeroshot": ("zeroshot", {"heldout": 40, "test": 45, "s1": 30, "s2": 30}),
            "trial-a": ("ingredient", {"heldout": 70, "test": 60, "s1": 40, "s2": 40}),
            "greedy_soup": ("soup", {"heldout": 71, "test": greedy, "s1": 40, "s2": 40}),
            "uniform_soup": ("soup", {"heldout": 69, "test": 60, "s1": 40 + i, "s2": 40 + i}),
        })))
    checks = {c["criterion"]: c for c in fidelity.evaluate_criteria(runs)}
    greedy = checks["greedy − best single, test ≥ 0"]
    # Per run the exact paired interval: 10 images only the best gets right, 0 the other way.
    want = interval(0, 10, 100)
    assert greedy["intervals"][0] == pytest.approx((-10.0, 100 * want.lo, 100 * want.hi))
    assert greedy["intervals"][0][2] < 0 and greedy["verdict"] == "contradicted"
    # Uniform on the shifts: +0, +1, +2 images per split; no run tells it from 0, and neither
    # does the across-run interval (mean +1, sd 1, t(2) = 4.303): not distinguishable.
    uniform = checks["uniform − best single, mean shift > 0"]
    assert uniform["across_runs"] == pytest.approx([1.0, 1.0 - 4.303 / 3**0.5,
                                                    1.0 + 4.303 / 3**0.5])
    assert uniform["verdict"] == "not distinguishable" and not uniform["holds"]
    # The headroom: +15 on test in every run; each run's interval reaches above +10.
    assert checks["zero-shot → best single, test ≥ +10 points"]["verdict"] == "holds"
    text = fidelity.report(runs)
    assert "✗ greedy − best single, test ≥ 0: contradicted" in text
    assert f"per run -10.00 [{100 * want.lo:+.2f}, {100 * want.hi:+.2f}]" in text
    assert "| greedy_soup |" in text and "[-10.00*, +1.00, +1.00]" in text
    # The figure's bars are these intervals: per run the paired one, the mean's the t-interval.
    per_run, mean = fidelity.figure_bars(runs, "greedy_soup", "test")
    assert per_run[0] == pytest.approx((-10.0, 100 * want.lo, 100 * want.hi))
    assert mean == pytest.approx(tuple(fidelity.across_runs([-10.0, 1.0, 1.0],
                                                             greedy["intervals"])))
    fidelity.figure(runs, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_without_ingredients_is_named(tmp_path, capsys):
    wd = _workdir(tmp_path, "empty", {"greedy_soup": ("soup", {"heldout": 1, "test": 1})})
    with pytest.raises(ValueError, match="empty: results.parquet is missing or has no ingredient"):
        fidelity.summarize_run(wd)
    # The CLI names the workdir without a traceback, also for one that was never run.
    assert fidelity.main([str(tmp_path / "never-run")]) == 2
    assert "never-run: results.parquet is missing" in capsys.readouterr().err


def test_criteria_hold_and_results_are_written(tmp_path):
    runs = []
    for i in range(5):  # greedy +1 over best on test in 4 runs, 0 (a fallback) in one
        gain = 0 if i == 2 else 1
        runs.append(fidelity.summarize_run(_workdir(tmp_path, f"seed-{i}", {
            "zeroshot": ("zeroshot", {"heldout": 40, "test": 45, "s1": 30}),
            "trial-a": ("ingredient", {"heldout": 70, "test": 60, "s1": 40}),
            "greedy_soup": ("soup", {"heldout": 71, "test": 60 + gain, "s1": 41}),
            "uniform_soup": ("soup", {"heldout": 69, "test": 60, "s1": 42}),
        })))
    checks = {c["criterion"].split(":")[0]: c for c in fidelity.evaluate_criteria(runs)}
    assert all(c["holds"] for c in checks.values()), checks
    assert checks["zero-shot → best single, test ≥ +10 points"]["diffs"] == pytest.approx([15.0] * 5)
    text = fidelity.write(runs, tmp_path / "out")
    assert (tmp_path / "out" / "fidelity.md").read_text() == text + "\n"
    payload = json.loads((tmp_path / "out" / "fidelity.json").read_text())
    assert len(payload["runs"]) == 5 and all(c["holds"] for c in payload["criteria"])
    assert (tmp_path / "out" / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_workdirs_share_data_by_hard_links(tmp_path):
    first, other = tmp_path / "seed-0", tmp_path / "seed-1"
    (first / "data" / "world").mkdir(parents=True)
    (first / "data" / "world" / "part-0.parquet").write_bytes(b"rows")
    from raysoup.orchestration.seeds import share_prepared

    share_prepared(first, other)
    copy = other / "data" / "world" / "part-0.parquet"
    assert copy.read_bytes() == b"rows"
    assert copy.stat().st_ino == (first / "data" / "world" / "part-0.parquet").stat().st_ino
    share_prepared(first, other)  # already there: left alone


def test_cli_refuses_zero_seeds(capsys):
    from raysoup.cli import main

    assert main(["fidelity", "experiments/tiny.yaml", "--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


def _offers(workdir, curve):
    """An anytime journal whose soup reaches the given held-out accuracies in turn."""
    from raysoup.soup.anytime import JOINED, Offer

    lines = [json.dumps(Offer(i, f"trial-{i:03d}", JOINED, {}, heldout=h, soup_heldout=h,
                              best_single=h, soup=(f"trial-{i:03d}",)).to_json())
             for i, h in enumerate(curve)]
    (workdir / "anytime.jsonl").write_text("\n".join(lines) + "\n")


def test_soup_search_against_random_search_paired_by_seed(tmp_path):
    def run(name, greedy, best, curve):
        wd = _workdir(tmp_path, name, {
            "trial-a": ("ingredient", {"heldout": best, "test": best, "s1": best}),
            "greedy_soup": ("soup", {"heldout": greedy, "test": greedy, "s1": greedy - 1}),
        })
        _offers(wd, [c / 100 for c in curve])
        return fidelity.summarize_run(wd)

    runs = {"random": [run("r0", 70, 68, [60, 65, 70, 70]), run("r1", 72, 70, [60, 72, 72, 72])],
            "soup": [run("s0", 71, 68, [60, 70, 71, 71]), run("s1", 73, 71, [60, 61, 62, 73])]}
    assert fidelity.trials_to_reach(fidelity.anytime_offers(tmp_path / "s0"), 0.70) == 2
    assert fidelity.trials_to_reach(fidelity.anytime_offers(tmp_path / "s1"), 0.99) is None
    text, payload = fidelity.compare_searches(runs)
    # greedy soup: +1 and +1 on test and on shift; best single 0 and +1.
    assert payload["greedy soup/test"] == pytest.approx([1.0, 1.0])
    assert payload["greedy soup/mean shift"] == pytest.approx([1.0, 1.0])
    assert payload["best single/test"] == pytest.approx([0.0, 1.0])
    # s0 reaches r0's final greedy held-out (70) at trial 2 of 4, s1 reaches 72 at trial 4.
    assert payload["budget_fraction"] == [0.5, 1.0]
    assert payload["holds"] == {"points": True, "budget": False}
    assert "per seed: 50%, 100%" in text and "✓ greedy soup: ≥ +0.5 points" in text
    out = fidelity.write_searches(runs, tmp_path / "out")
    assert "# sweep.search: soup" in out
    assert (tmp_path / "out" / "anytime.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "searches.json").read_text())["budget_fraction"] == [
        0.5, 1.0]
