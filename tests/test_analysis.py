"""`raysoup analyze` on a finished run (the session's `served_run`, copied: the analysis
writes into its workdir) with real Ray eval actors: the four analyses' outputs, a landscape
vertex against the model's own evaluation, a model souped with itself, resume, and 1 vs 2
actors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).parents[1]


def _cfg(served_run, actors: int):
    from small import small_overrides

    from raysoup.api import load_config

    return load_config(ROOT / "experiments" / "tiny.yaml", [
        *small_overrides(epochs=2), f"tracking.uri={served_run['url']}",
        "tracking.experiment=server-e2e", f"eval.num_actors={actors}"])


@pytest.fixture(scope="module")
def workdir(served_run, tmp_path_factory):
    assert served_run["rc"] == 0, served_run["stderr"][-3000:]
    copy = tmp_path_factory.mktemp("analysis") / "work"
    shutil.copytree(served_run["workdir"], copy, symlinks=True)  # mtimes kept: cache reused
    return copy


@pytest.fixture(scope="module")
def analyzed(workdir, served_run, ray_session):
    from raysoup.api import analyze

    # 3 × 3 points (with the 2-soup: 10): the vertices are what the tests check
    return analyze(_cfg(served_run, actors=2), workdir, points=3)


def test_every_analysis_writes_its_table_and_figure(analyzed, workdir):
    out = workdir / "report" / "analysis"
    for name in ("landscape", "angles", "soup_vs_ensemble", "transfer"):
        assert (out / f"{name}.parquet").is_file() and (out / f"{name}.png").stat().st_size > 0
    assert set(analyzed) == {"landscape", "angles", "soup-vs-ensemble", "transfer"}
    angles = pq.read_table(out / "angles.parquet").to_pylist()
    assert len(angles) == 1 and 0 < angles[0]["angle_deg"] < 180  # 2 trials: one pair
    transfer = {r["model"]: r for r in pq.read_table(out / "transfer.parquet").to_pylist()}
    assert {"zeroshot", "uniform_soup", "greedy_soup"} <= set(transfer)
    assert transfer["zeroshot"]["diff_vs_zeroshot"] == 0
    assert [r["diff_vs_best"] for r in transfer.values() if r["role"] == "best single"] == [0]
    assert all(0 <= r["accuracy"] <= 1 for r in transfer.values())
    gaps = pq.read_table(out / "soup_vs_ensemble.parquet").to_pylist()
    [uniform] = [r for r in gaps if r["kind"] == "uniform"]
    assert np.isfinite(uniform["flatness_term"])  # the uniform soup's flatness is measured
    assert uniform["predicted_loss_gap"] == pytest.approx(
        uniform["flatness_term"] + uniform["confidence_term"])


def test_a_landscape_vertex_is_that_models_own_evaluation(analyzed, workdir):
    rows = pq.read_table(workdir / "report" / "analysis" / "landscape.parquet").to_pylist()
    results = pq.read_table(workdir / "results.parquet").to_pylist()
    own = {(r["model"], r["split"]): r["accuracy"] for r in results}
    checked = 0
    for row in rows:
        vertex = {(0.0, 0.0): row["zeroshot"], (1.0, 0.0): row["first"],
                  (0.0, 1.0): row["second"]}.get((row["a"], row["b"]))
        if vertex is not None:
            assert row["accuracy"] == own[(vertex, row["split"])], (vertex, row["split"])
            checked += 1
    assert checked == 9  # three models × held-out, test, one shift


def test_resume_skips_finished_points_and_one_actor_gives_the_same_results(
        analyzed, workdir, served_run):
    from raysoup.analysis import landscape
    from raysoup.analysis.journal import Journal, record_line
    from raysoup.orchestration.actors import EvalActors
    from raysoup.orchestration.analysis import JOURNAL, AnalysisContext, blend, logits
    from raysoup.orchestration.analysis_ensembles import ALPHAS, pair_row, uniform_row
    from raysoup.orchestration.analysis_geometry import default_shift, run_landscape
    from raysoup.prepare import prepare

    cfg = _cfg(served_run, actors=1)
    data, zeroshot = prepare(cfg, workdir)
    actors = EvalActors(cfg, workdir, data, zeroshot)
    try:
        ctx = AnalysisContext(cfg, workdir, data, actors)
        tuned = ctx.fine_tuned()
        splits = ["heldout", "test", default_shift(ctx)]
        keys = [blend(ctx, [ctx.zeroshot, *tuned[:2]], landscape.weights(a, b), splits).key
                for a, b in landscape.grid(3)]
        two_actors = {k: ctx.journal.get(k) for k in keys}
        # A killed analysis: the journal as it stood when the first grid point had landed
        # (marked, so that a recomputation would show), the second one's record torn.
        path = workdir / "analysis" / JOURNAL
        others = [line + b"\n" for line in path.read_bytes().splitlines()
                  if json.loads(line)["key"] not in two_actors]
        first, second = keys[0], keys[1]
        mark = {**two_actors[first], "heldout": [0, two_actors[first]["heldout"][1], 0]}
        path.write_bytes(b"".join(others) + record_line(first, mark)
                         + record_line(second, two_actors[second])[:30])
        ctx.journal = Journal(path)
        run_landscape(ctx, points=3)
        again = Journal(path)
        assert again.get(first)["heldout"][0] == 0  # a finished point is not recomputed
        # Every other point of the grid, recomputed on 1 actor: the 2 actors' results.
        assert {k: again.get(k) for k in keys[1:]} == {k: two_actors[k] for k in keys[1:]}

        # A model souped with itself is the model, and its own ensemble: no gap, no terms.
        m = tuned[0]
        self_soup, alone = ctx.run([blend(ctx, [m, m], [0.5, 0.5], ["heldout"]),
                                    blend(ctx, [m], [1.0], ["heldout"])], "test")
        assert self_soup == alone
        [z] = logits(ctx, [m], "heldout")
        soups = ctx.run([blend(ctx, [m, m], [1 - a, a], ["heldout"]) for a in ALPHAS], "test")
        row = pair_row([m, m], np.asarray(data.heldout.labels),
                       lambda i: ctx.load_array(z), 0, 1, soups)
        assert row["accuracy_gap"] == 0 and abs(row["loss_gap"]) < 1e-6
        assert row["confidence_term"] == 0
        # The same of the uniform soup, its flatness read on the lines to each ingredient.
        u = uniform_row(ctx, [m, m], np.asarray(data.heldout.labels),
                        lambda i: ctx.load_array(z))
        assert u["accuracy_gap"] == 0 and u["confidence_term"] == 0
        assert abs(u["flatness_term"]) < 1e-5 and abs(u["predicted_loss_gap"]) < 1e-5
    finally:
        actors.release()


def test_transfer_on_the_users_own_dataset(analyzed, workdir, served_run, tmp_path):
    """`analysis.transfer` on a Parquet dataset of the world's test images labelled by their
    colour (a second dataset, decoded into the eval cache once): every model's result is the
    built-in colour task's, the zero-shot model's is a direct evaluation through open_clip of
    the same class names and templates, and a rerun computes nothing."""
    from dataclasses import replace

    from raysoup.analysis.transfer import colour_task
    from raysoup.api import analyze
    from raysoup.data import read_parquet_split, write_parquet_split
    from raysoup.data.render import COLORS

    colour = {r["model"]: r for r in pq.read_table(
        workdir / "report" / "analysis" / "transfer.parquet").to_pylist()}
    cfg = _cfg(served_run, actors=1)
    test = read_parquet_split(workdir / "data" / "world" / "test")
    task = colour_task(cfg.data.world, "test", list(test.keys))
    write_parquet_split(tmp_path / "colours", replace(
        test, labels=task.labels, classnames=list(COLORS), captions=None))
    own = {"test": {"format": "parquet", "path": str(tmp_path / "colours")},
           "templates": task.templates}
    overrides = [f"analysis.transfer={json.dumps(own)}",
                 "tracking.experiment=own-transfer"]  # not the shared sweep run
    analyze(cfg, workdir, ["transfer"], overrides)
    rows = {r["model"]: r for r in pq.read_table(
        workdir / "report" / "analysis" / "transfer.parquet").to_pylist()}
    assert {r["task"] for r in rows.values()} == {"colours"}
    assert set(rows) == set(colour)
    for name, row in rows.items():
        assert (row["accuracy"], row["n"], row["diff_vs_best"], row["best_lo"]) == (
            colour[name]["accuracy"], colour[name]["n"], colour[name]["diff_vs_best"],
            colour[name]["best_lo"]), name
    assert rows["zeroshot"]["accuracy"] == _open_clip_accuracy(cfg, test, task)
    assert len(list((workdir / "cache" / "eval").glob("analysis-transfer-*"))) == 1

    journal = (workdir / "analysis" / "journal.jsonl").read_bytes()
    analyze(cfg, workdir, ["transfer"], overrides)
    assert (workdir / "analysis" / "journal.jsonl").read_bytes() == journal
    # A shift of the transfer split's name cannot be shadowed by it.
    from types import SimpleNamespace

    from raysoup.analysis.transfer import TRANSFER_SPLIT
    from raysoup.orchestration.actors import EvalActors

    with pytest.raises(ValueError, match=f"eval splits \\['{TRANSFER_SPLIT}'\\] named twice"):
        EvalActors(cfg, workdir, SimpleNamespace(shifts={TRANSFER_SPLIT: test}), {},
                   extra={TRANSFER_SPLIT: test})


def _open_clip_accuracy(cfg, test, task) -> float:
    """The zero-shot model's accuracy on `task`, through open_clip itself: its base CLIP's
    image and text towers, the prompts averaged per class, batches of eval.batch_size."""
    import io

    import open_clip
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from raysoup.models import base_models, factory

    clip = factory.load_clip(cfg.model)
    tokenizer = factory.get_tokenizer(cfg.model, base_models.base_vocab(
        factory.resolve_weights(cfg.model).path))
    size, mean, std = factory.image_stats(clip)
    transform = open_clip.image_transform(size, is_train=False, mean=mean, std=std)
    correct = 0
    with torch.no_grad():
        text = [F.normalize(F.normalize(clip.encode_text(tokenizer(
            [t.format(c) for t in task.templates])), dim=-1).mean(0), dim=0)
            for c in task.classnames]
        head = clip.logit_scale.exp() * torch.stack(text)
        for lo in range(0, len(test), cfg.eval.batch_size):
            idx = range(lo, min(len(test), lo + cfg.eval.batch_size))
            x = torch.stack([transform(Image.open(io.BytesIO(b)).convert("RGB"))
                             for b in test.images.read(idx)])
            scores = F.normalize(clip.encode_image(x), dim=-1) @ head.T
            correct += int((scores.argmax(1).numpy() == task.labels[list(idx)]).sum())
    return correct / len(test)
