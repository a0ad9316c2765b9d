"""The results table (raysoup/evaluate/results.py) and the report (raysoup/report.py): merge
and round trip, best single with greedy's tie rule, every recipe and diverged trial listed."""
from raysoup.evaluate import results as res
from raysoup.report import best_single, summarize, write_report


def table():
    t = res.empty()
    t = res.merge(t, [res.rows("zeroshot", "zeroshot", {"heldout": (5, 10), "test": (50, 100), "blur": (3, 10)})])
    t = res.merge(t, [res.rows("trial-000", "ingredient", {"heldout": (8, 10), "test": (80, 100), "blur": (4, 10)})])
    t = res.merge(t, [res.rows("trial-001", "ingredient", {"heldout": (9, 10), "test": (70, 100), "blur": (5, 10)})])
    return res.merge(t, [res.rows("greedy_soup", "soup", {"heldout": (9, 10), "test": (85, 100), "blur": (6, 10)})])


def test_results_merge_replaces_and_round_trips(tmp_path):
    t = table()
    assert t.num_rows == 12
    t = res.merge(t, [res.rows("trial-000", "ingredient", {"test": (81, 100)})])
    assert t.num_rows == 12
    assert res.accuracy_of(t, "test")["trial-000"] == 0.81
    path = tmp_path / "results.parquet"
    res.write_results(path, t)
    back = res.read_results(path)
    assert back.schema == res.SCHEMA and back.equals(t)
    assert ("greedy_soup", "blur") in res.done_pairs(back)
    assert res.accuracies_of_model(back, "greedy_soup") == {"blur": 0.6, "heldout": 0.9, "test": 0.85}


def test_report_files_and_best_single(tmp_path):
    rows, shifts = summarize(table())
    assert shifts == ["blur"]
    assert best_single(rows).model == "trial-001"  # selected by held-out, not by test
    files = write_report(table(), tmp_path, "demo")
    assert (tmp_path / "figure.png").read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "README.md").read_text()
    assert "| best single (trial-001) | 90.00 | 70.00 | 50.00 | 50.00 |" in text
    assert "| greedy_soup | 90.00 | 85.00 | 60.00 | 60.00 |" in text
    assert len(files) == 2


def test_report_lists_every_recipe_and_the_ensemble_cost(tmp_path):
    t = table()
    for name in ("uniform_soup", "learned_soup", "wiseft_soup", "model_stock_soup"):
        t = res.merge(t, [res.rows(name, "soup", {"heldout": (7, 10), "test": (75, 100),
                                                  "blur": (5, 10)})])
    t = res.merge(t, [res.rows("ensemble", "ensemble", {"heldout": (9, 10), "test": (88, 100),
                                                        "blur": (7, 10)})])
    write_report(t, tmp_path, "demo", {"ensemble": 2})
    text = (tmp_path / "README.md").read_text()
    summary = text.split("## Summary")[1].split("## Every model")[0]
    for name in ("greedy_soup", "uniform_soup", "learned_soup", "wiseft_soup", "model_stock_soup"):
        assert f"| {name} |" in summary
    assert "| ensemble (2× inference) | 90.00 | 88.00 | 70.00 | 70.00 |" in summary
    assert (tmp_path / "figure.png").stat().st_size > 0


def test_best_single_breaks_ties_like_greedy():
    from raysoup.evaluate import results as res
    from raysoup.report import best_single, summarize
    from raysoup.soup import Candidate
    from raysoup.soup.base import by_heldout

    table = res.merge(res.empty(), [
        res.rows("trial-004", "ingredient", {"heldout": (336, 500), "test": (90, 100)}),
        res.rows("trial-000", "ingredient", {"heldout": (336, 500), "test": (80, 100)}),
        res.rows("trial-001", "ingredient", {"heldout": (300, 500), "test": (99, 100)}),
    ])
    rows, _ = summarize(table)
    greedy_first = by_heldout([Candidate(r.model, r.acc["heldout"], None) for r in rows])[0]
    assert best_single(rows).model == greedy_first.name == "trial-000"


def test_results_written_before_soup_ids_read_with_null_ids(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = pa.table({"model": ["uniform_soup"], "kind": ["soup"], "split": ["test"],
                    "accuracy": [0.5], "correct": [1], "n": [2]})
    pq.write_table(old, tmp_path / "results.parquet")
    back = res.read_results(tmp_path / "results.parquet")
    assert back.schema == res.SCHEMA and back["soup_id"].to_pylist() == [None]
    # A cooked soup with an id: the old row measured some other soup.
    assert res.done_pairs(back, {"uniform_soup": "abc"}) == set()
    assert res.done_pairs(back) == {("uniform_soup", "test")}


def test_report_and_summary_list_diverged_trials(tmp_path):
    """A diverged trial (manifest kind diverged, no tensor file) is named with its sampled
    hyper-parameters in report/README.md and in the console summary; ingredients are not."""
    import json

    from small import small_config

    from raysoup.config import ExperimentCfg
    from raysoup.orchestration.cpu_time import TreeCpu
    from raysoup.orchestration.pipeline import Run
    from raysoup.orchestration.trial_records import diverged_trials
    from raysoup.report import diverged_line
    from raysoup.workdir import diverged_hparams

    work = tmp_path / "work"
    for name, kind in (("trial-000", "ingredient"), ("trial-001", "diverged")):
        (work / "ingredients" / name).mkdir(parents=True)
        hp = {"lr": 1.0e4 if kind == "diverged" else 1e-3, "seed": 7, "epochs": 1}
        (work / "ingredients" / name / "manifest.json").write_text(
            json.dumps({"kind": kind, "status": kind, "hparams": hp}))
    (work / "ingredients" / "trial-000" / "model.safetensors").write_bytes(b"")
    cfg = ExperimentCfg.model_validate(small_config())  # space: lr, seed

    diverged = diverged_hparams(work, diverged_trials(work), cfg.sweep.space)
    assert diverged == {"trial-001": {"lr": 1.0e4, "seed": 7}}
    line = "diverged (excluded from soups): trial-001 (lr 1e4, seed 7)"
    assert diverged_line(diverged) == line
    assert diverged_line({}) == ""

    write_report(table(), work / "report", "demo", diverged=diverged)
    text = (work / "report" / "README.md").read_text()
    assert "Diverged (excluded from soups): trial-001 (lr 1e4, seed 7)" in text
    assert "trial-000 (" not in text
    write_report(table(), tmp_path / "clean", "demo")
    assert "iverged" not in (tmp_path / "clean" / "README.md").read_text()

    res.write_results(work / "results.parquet", table())
    run = Run.__new__(Run)  # the summary reads only the workdir and the config
    run.cfg, run.workdir, run.timings, run.cpu = cfg, work, {}, {}
    run.cpu_meter = TreeCpu()
    assert f"\n{line}\n" in run.summary()


def test_report_states_the_intervals_of_its_own_run(tmp_path):
    import numpy as np

    from raysoup.evaluate.paired import paired

    def bits(right):
        return np.packbits(np.asarray(right, bool)).tobytes()

    best = [True] * 90 + [False] * 10
    soup = [True] * 80 + [False] * 10 + [True] * 10  # 10 images each way: a tie on test
    shift_best, shift_soup = [True] * 5 + [False] * 95, [True] * 25 + [False] * 75  # +20
    t = res.merge(res.empty(), [
        res.rows("trial-000", "ingredient", {"heldout": (9, 10), "test": (90, 100, bits(best)),
                                             "blur": (5, 100, bits(shift_best))}),
        res.rows("greedy_soup", "soup", {"heldout": (9, 10), "test": (90, 100, bits(soup)),
                                         "blur": (25, 100, bits(shift_soup))}),
    ])
    write_report(t, tmp_path, "demo")
    text = (tmp_path / "README.md").read_text()
    test = paired(np.array(soup), np.array(best))
    assert (test.b, test.c, test.diff) == (10, 10, 0.0)
    shift = paired(np.array(shift_soup), np.array(shift_best))
    assert shift.excludes_zero and shift.diff == 0.2
    want = (f"| greedy_soup | +0.00 [{100 * test.lo:+.2f}, {100 * test.hi:+.2f}] | "
            f"+20.00 [{100 * shift.lo:+.2f}, {100 * shift.hi:+.2f}]* |")
    assert want in text
    assert (f"- greedy_soup − best single on test: +0.00 [{100 * test.lo:+.2f}, "
            f"{100 * test.hi:+.2f}], not distinguishable; on the 1 shift: better on 1 (blur), "
            "worse on 0, not distinguishable on 0.") in text
