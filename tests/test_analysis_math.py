"""The analysis math on cases with known answers (raysoup/analysis: pure, no Ray)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from raysoup.analysis import ensembles, geometry, landscape, stats
from raysoup.analysis.journal import Journal, job_key
from raysoup.analysis.pairs import difference_label
from raysoup.search.distributions import Choice, LogUniform, RandInt


def _model(path, w, b, steps=3):
    save_file({"layer.weight": torch.tensor(w, dtype=torch.float32),
               "layer.bias": torch.tensor(b, dtype=torch.float32),
               "bn.running_var": torch.tensor([5.0 + steps]),
               "bn.num_batches_tracked": torch.tensor(steps)}, str(path))
    return path


def test_orthogonal_updates_are_at_90_degrees_and_parallel_ones_at_0(tmp_path):
    base = _model(tmp_path / "base.safetensors", [[1.0, 2.0], [3.0, 4.0]], [0.5, 0.5], 0)
    a = _model(tmp_path / "a.safetensors", [[2.0, 2.0], [3.0, 4.0]], [0.5, 0.5])  # +e1
    b = _model(tmp_path / "b.safetensors", [[1.0, 2.0], [3.0, 4.0]], [0.5, 1.5])  # +e_bias
    c = _model(tmp_path / "c.safetensors", [[4.0, 2.0], [3.0, 4.0]], [0.5, 0.5])  # 3·e1
    names = geometry.update_names({"layer.weight": {"dtype": "float32"},
                                   "layer.bias": {"dtype": "float32"},
                                   "bn.running_var": {"dtype": "float32"},
                                   "bn.num_batches_tracked": {"dtype": "int64"}})
    assert names == ["layer.weight", "layer.bias"]  # buffers are not updates
    gram = geometry.update_gram(base, [a, b, c], names)
    angles = geometry.angles_degrees(gram)
    assert angles[0, 1] == pytest.approx(90.0)
    assert angles[0, 2] == pytest.approx(0.0, abs=1e-6)
    assert gram[2, 2] == pytest.approx(9.0)
    # Streamed over disjoint name sets, the Gram sums to the whole model's.
    parts = sum(geometry.update_gram(base, [a, b, c], [n]) for n in names)
    np.testing.assert_array_equal(parts, gram)


def test_plane_positions_keep_the_weights_geometry():
    gram2 = np.array([[4.0, 0.0], [0.0, 9.0]])  # |u| = 2, |v| = 3, orthogonal
    xy = geometry.plane_positions(gram2, np.array([[0, 0], [1, 0], [0, 1], [0.5, 0.5]]))
    np.testing.assert_allclose(xy, [[0, 0], [2, 0], [0, 3], [1, 1.5]])
    sheared = geometry.plane_positions(np.array([[1.0, 1.0], [1.0, 2.0]]), np.array([[0, 1]]))
    np.testing.assert_allclose(sheared, [[1.0, 1.0]])  # v = u + w: 45° from u


def test_grid_holds_the_models_and_their_soup_and_vertices_weight_one_model():
    cells = landscape.grid(5)
    assert len(cells) == 25 and set(landscape.MARKED.values()) <= set(cells)
    assert landscape.weights(1.0, 0.0) == [0.0, 1.0, 0.0]
    assert landscape.weights(0.0, 0.0) == [1.0, 0.0, 0.0]
    assert len(landscape.grid(4)) == 16 + 4  # the marked points off a 4-point grid are added
    with pytest.raises(ValueError, match="at least 2 points"):
        landscape.grid(1)


def test_a_model_with_itself_has_no_confidence_term_and_no_gap():
    rng = np.random.default_rng(0)
    z, labels = rng.normal(size=(50, 4)), rng.integers(0, 4, 50)
    assert ensembles.confidence_term([z, z], [0.5, 0.5]) == pytest.approx(0.0, abs=1e-12)
    flat = ensembles.curvature([0, 0.25, 0.75, 1], [1.0, 1.0, 1.0, 1.0])
    assert flat == pytest.approx(0.0, abs=1e-9)
    assert ensembles.predicted_gap(0.5, flat, 0.0) == pytest.approx(0.0, abs=1e-9)
    loss, acc = ensembles.loss_and_accuracy(ensembles.ensemble_logits([z, z], [0.5, 0.5]),
                                            labels)
    assert (loss, acc) == pytest.approx(ensembles.loss_and_accuracy(z, labels))


def test_confidence_term_is_the_ensemble_losss_curvature():
    """For two models the term is α(1 − α)·ψ''(α) / (α(1 − α)) = ψ''(α): checked against a
    finite difference of the ensemble's loss along α."""
    rng = np.random.default_rng(1)
    z0, z1, y = rng.normal(size=(40, 5)), rng.normal(size=(40, 5)), rng.integers(0, 5, 40)

    def psi(a):
        return ensembles.loss_and_accuracy((1 - a) * z0 + a * z1, y)[0]

    h = 1e-3
    second = (psi(0.5 - h) - 2 * psi(0.5) + psi(0.5 + h)) / h**2
    assert ensembles.confidence_term([z0, z1], [0.5, 0.5]) == pytest.approx(0.25 * second,
                                                                            rel=1e-4)
    assert ensembles.curvature([0, 0.5, 1, 2], [0, 0.25, 1, 4]) == pytest.approx(2.0)


def test_uniform_flatness_term_is_the_loss_jensen_gap_of_a_quadratic():
    """On a quadratic loss the second-order expansion is exact: −½ Σ w_i d_iᵀ H d_i equals
    L(θ̄) − Σ w_i L(θ_i), from curvatures read on the lines (never at θ̄ itself); two models
    at (½, ½) give the pair's term −α(1 − α)/2 · L''(α)."""
    rng = np.random.default_rng(4)
    a = rng.normal(size=(6, 6))
    hess, b = a @ a.T, rng.normal(size=6)

    def loss(theta):
        return 0.5 * theta @ hess @ theta + b @ theta

    thetas = rng.normal(size=(4, 6))
    weights = [0.25] * 4
    assert ensembles.line_weights(weights, 2, 1.0) == [0, 0, 1, 0]
    assert ensembles.line_weights(weights, 2, 0.0) == weights

    def curves(models, w):
        return [ensembles.curvature(
            [*ensembles.LINE_POINTS, 1.0],
            [loss(np.asarray(ensembles.line_weights(w, i, t)) @ models)
             for t in [*ensembles.LINE_POINTS, 1.0]]) for i in range(len(models))]

    jensen = loss(np.mean(thetas, 0)) - np.mean([loss(t) for t in thetas])
    assert ensembles.flatness_term(weights, curves(thetas, weights)) == pytest.approx(jensen)
    pair = thetas[:2]
    along = ensembles.curvature([0, 0.25, 0.75, 1],
                                [loss((1 - t) * pair[0] + t * pair[1]) for t in (0, .25, .75, 1)])
    assert ensembles.flatness_term([0.5, 0.5], curves(pair, [0.5, 0.5])) == pytest.approx(
        -0.5 * 0.25 * along)


def test_uniform_soup_approximation_vanishes_for_a_model_linear_in_its_weights():
    """Logits linear in the weights: the soup is its ensemble (observed gap 0), so flatness
    and confidence must cancel to second order: the N-model formula's signs and factors."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(200, 3)), rng.integers(0, 4, 200)
    centre = rng.normal(size=(3, 4))
    models = [centre + 0.05 * rng.normal(size=(3, 4)) for _ in range(4)]
    weights = [0.25] * 4
    soup = sum(w * m for w, m in zip(weights, models))

    def loss(theta):
        return ensembles.loss_and_accuracy(x @ theta, y)[0]

    ts = [*ensembles.LINE_POINTS, 1.0]
    curves = [ensembles.curvature(ts, [loss(soup + t * (m - soup)) for t in ts]) for m in models]
    flatness = ensembles.flatness_term(weights, curves)
    confidence = ensembles.confidence_term([x @ m for m in models], weights)
    observed = loss(soup) - ensembles.loss_and_accuracy(
        ensembles.ensemble_logits([x @ m for m in models], weights), y)[0]
    assert observed == pytest.approx(0, abs=1e-12) and flatness < -1e-4
    assert abs(flatness + 0.5 * confidence) < 0.03 * abs(flatness)


def test_correlation_and_its_interval_are_seeded():
    x = np.arange(10.0)
    perfect = stats.correlation(x, 2 * x + 1)
    assert (perfect.r, perfect.lo, perfect.hi) == pytest.approx((1.0, 1.0, 1.0))
    noisy = np.random.default_rng(3).normal(size=10)
    assert stats.correlation(x, noisy) == stats.correlation(x, noisy)
    assert np.isnan(stats.correlation([1, 2], [3, 4]).r)


def test_pairs_are_labelled_by_what_differs():
    space = {"lr": LogUniform(loguniform=(1e-4, 1e-3)), "mixup": Choice(choice=[0.0, 0.2]),
             "seed": RandInt(randint=(0, 10))}
    base = {"lr": 1e-3, "mixup": 0.0, "seed": 1}
    assert difference_label(base, {**base, "seed": 2}, space) == "seed only"
    assert difference_label(base, {**base, "lr": 2e-4, "seed": 2}, space) == "lr"
    assert difference_label(base, {**base, "lr": 2e-4, "mixup": 0.2}, space) == "mixup"


def test_journal_keeps_results_across_instances_and_names_a_bad_file(tmp_path):
    key = job_key(kind="blend", weights=[0.5, 0.5])
    assert key == job_key(weights=[0.5, 0.5], kind="blend")
    Journal(tmp_path / "j.jsonl").put(key, {"heldout": [1, 2, 3]})
    assert Journal(tmp_path / "j.jsonl").get(key) == {"heldout": [1, 2, 3]}
    # A damaged line before the last is not a torn write: refused, naming the line.
    (tmp_path / "bad.jsonl").write_text('{"key": "a", "result": 1}\n{\n{"key": "b", '
                                        '"result": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not an analysis journal record"):
        Journal(tmp_path / "bad.jsonl")


def test_journal_appends_one_line_a_result(tmp_path):
    """Each result adds its own line and leaves the bytes before it as they were (a
    whole-file rewrite per result is quadratic in the number of grid points)."""
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    before = b""
    for i in range(5):
        journal.put(f"k{i}", [i, 2 * i])
        now = path.read_bytes()
        assert now.startswith(before) and now.count(b"\n") == i + 1
        assert json.loads(now[len(before):]) == {"key": f"k{i}", "result": [i, 2 * i]}
        before = now
    assert Journal(path).entries == {f"k{i}": [i, 2 * i] for i in range(5)}


def test_journal_ignores_a_torn_last_line_and_appends_after_it(tmp_path):
    """A kill mid-write leaves part of the last record: it is dropped (its job runs again),
    cut off the file, and the next result lands on a line of its own."""
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.put("done", 1)
    whole = path.read_bytes()
    for torn in (b'{"key":"lost","res', b'{"key":"lost","result":2}'):  # no newline: torn
        path.write_bytes(whole + torn)
        again = Journal(path)
        assert again.entries == {"done": 1} and path.read_bytes() == whole
    again.put("next", 3)
    assert Journal(path).entries == {"done": 1, "next": 3}


def test_journal_reads_the_old_one_object_journal_and_never_rewrites_it(tmp_path):
    legacy = tmp_path / "journal.json"
    legacy.write_text(json.dumps({"old": [1, 2]}))
    journal = Journal(tmp_path / "journal.jsonl", legacy=legacy)
    assert "old" in journal and journal.get("old") == [1, 2]
    journal.put("new", 3)
    assert json.loads(legacy.read_text()) == {"old": [1, 2]}
    assert Journal(tmp_path / "journal.jsonl", legacy=legacy).entries == {"old": [1, 2],
                                                                          "new": 3}
    legacy.write_text("{")
    with pytest.raises(ValueError, match="journal.json: not an analysis journal"):
        Journal(tmp_path / "journal.jsonl", legacy=legacy)


def test_analyze_refuses_a_workdir_without_results_and_unknown_analyses(tmp_path):
    """Bad input is named before anything starts (no Ray, nothing written)."""
    from raysoup.api import analyze

    config = Path(__file__).parents[1] / "experiments" / "tiny.yaml"
    with pytest.raises(RuntimeError, match="has no results.parquet: run `raysoup run`"):
        analyze(config, tmp_path / "work")
    with pytest.raises(ValueError, match="choose from"):
        analyze(config, tmp_path / "work", ["landscapes"])
    with pytest.raises(ValueError, match="pair_limit must be at least 2"):
        analyze(config, tmp_path / "work", pair_limit=1)
    assert not (tmp_path / "work").exists()


def test_transfer_is_refused_by_name_where_the_data_has_no_second_task(tmp_path):
    """A user's ImageFolder/Parquet sweep: asked for, transfer is refused before anything
    starts, saying why; all four by default, it is left out and the others go on (here they
    stop at the missing results, as nothing ran)."""
    import yaml

    from raysoup.analysis.transfer import transfer_unavailable
    from raysoup.api import analyze, load_config

    tiny = Path(__file__).parents[1] / "experiments" / "tiny.yaml"
    assert transfer_unavailable(load_config(tiny)) is None
    doc = yaml.safe_load(tiny.read_text())
    del doc["data"]["world"]
    doc["model"] = {"name": "ViT-B-32", "pretrained": "openai"}  # the world's need data.world
    doc["data"]["templates"] = "openai_imagenet"
    doc["data"] |= {"train": {"format": "imagefolder", "path": str(tmp_path / "train")},
                    "test": {"format": "imagefolder", "path": str(tmp_path / "test")}}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(doc))
    assert "set analysis.transfer" in transfer_unavailable(load_config(tmp_path / "mine.yaml"))
    with pytest.raises(ValueError, match="transfer: needs a task the sweep never trained on"):
        analyze(tmp_path / "mine.yaml", tmp_path / "work", ["landscape", "transfer"])
    with pytest.raises(RuntimeError, match="has no results.parquet"):
        analyze(tmp_path / "mine.yaml", tmp_path / "work")
    assert not (tmp_path / "work").exists()
    # With a second dataset of its own, the same sweep can run transfer.
    own = {"test": {"format": "parquet", "path": str(tmp_path / "other")}}
    assert transfer_unavailable(load_config(tmp_path / "mine.yaml", [
        f"analysis.transfer={json.dumps(own)}"])) is None


def _png(colour: str) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


def _with_transfer(**transfer):
    from raysoup.api import load_config

    tiny = Path(__file__).parents[1] / "experiments" / "tiny.yaml"
    return load_config(tiny, [f"analysis.transfer={json.dumps(transfer)}"])


def test_own_transfer_dataset_is_read_with_its_class_names_and_the_sweeps_templates(tmp_path):
    """`analysis.transfer`: an ImageFolder's classes are its directories, a Parquet split's
    its metadata's, or the names given; the templates default to data.templates'. Setting it
    changes nothing a workdir's snapshot pins (a finished sweep can be analysed with it)."""
    from raysoup.analysis.transfer import read_own_transfer
    from raysoup.data import LabeledImages, world, write_parquet_split
    from raysoup.workdir.snapshot import pinned_changes

    for colour in ("red", "blue"):
        (tmp_path / "folder" / colour).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "folder" / colour / f"{i}.png").write_bytes(_png(colour))
    cfg = _with_transfer(test={"format": "imagefolder", "path": str(tmp_path / "folder")})
    own = read_own_transfer(cfg)
    assert own.task.classnames == ["blue", "red"] and own.task.labels.tolist() == [0, 0, 1, 1]
    assert own.task.templates == world.TEMPLATES and own.task.name == "folder"
    assert len(own.data) == 4
    with_it = cfg.model_dump(mode="json")
    without = {k: v for k, v in with_it.items() if k != "analysis"}
    assert "analysis" not in type(cfg).model_validate(without).model_dump(mode="json")
    assert pinned_changes(without, with_it, ()) == {}

    data = LabeledImages(["a", "b", "c"], [_png("red"), _png("blue"), _png("red")], [0, 1, 0],
                         ["red", "blue"])
    write_parquet_split(tmp_path / "shards", data)
    cfg = _with_transfer(test={"format": "parquet", "path": str(tmp_path / "shards")},
                         classnames=["crimson", "navy"], templates=["a {} shape."],
                         name="renamed")
    own = read_own_transfer(cfg)
    assert own.task.classnames == ["crimson", "navy"] and own.task.labels.tolist() == [0, 1, 0]
    assert own.task.templates == ["a {} shape."] and own.task.name == "renamed"


def test_own_transfer_bad_input_is_named(tmp_path):
    """A missing path, class names that do not match the dataset's classes, a Parquet split
    without names, empty or unformattable templates, a text format: each an error naming
    the field, before anything starts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysoup.analysis.transfer import read_own_transfer
    from raysoup.config import ConfigError
    from raysoup.data import DataError, LabeledImages, write_parquet_split

    (tmp_path / "folder" / "red").mkdir(parents=True)
    (tmp_path / "folder" / "red" / "0.png").write_bytes(_png("red"))
    (tmp_path / "folder" / "blue").mkdir()
    (tmp_path / "folder" / "blue" / "0.png").write_bytes(_png("blue"))
    write_parquet_split(tmp_path / "shards", LabeledImages(
        ["a", "b"], [_png("red"), _png("blue")], [0, 1], ["red", "blue"]))
    (tmp_path / "bare").mkdir()
    pq.write_table(pa.table({"image": [_png("red")], "label": [2]}),
                   tmp_path / "bare" / "part-0.parquet")
    folder = {"format": "imagefolder", "path": str(tmp_path / "folder")}
    shards = {"format": "parquet", "path": str(tmp_path / "shards")}
    bare = {"format": "parquet", "path": str(tmp_path / "bare")}
    cases = [
        ({"test": {"format": "imagefolder", "path": str(tmp_path / "nope")}},
         ConfigError, f"analysis.transfer.test.path: {tmp_path / 'nope'} does not exist"),
        ({"test": folder, "classnames": ["red", "green", "blue"]}, DataError,
         "analysis.transfer.classnames: 3 names for the 2 class directories"),
        ({"test": shards, "classnames": ["red"]}, DataError,
         "analysis.transfer.classnames: 1 names for the 2 classes"),
        ({"test": bare}, DataError, "analysis.transfer.classnames: .* names no classes"),
        ({"test": bare, "classnames": ["a", "b"]}, DataError,
         r"analysis.transfer: .*labels must lie in \[0, 2\)"),
    ]
    for transfer, error, message in cases:
        with pytest.raises(error, match=message):
            read_own_transfer(_with_transfer(**transfer))
    for transfer, message in [
            ({"test": folder, "templates": []}, "analysis.transfer.templates: templates is empty"),
            ({"test": folder, "templates": ["a photo"]}, "must contain '{}'"),
            ({"test": folder, "templates": "openai_imagenet"}, "knows only the world's words"),
            ({"test": {"format": "csv", "path": "x"}}, "analysis.transfer.test.format"),
            ({"test": folder, "classnames": ["a", "a"]}, r"classnames repeat \['a'\]")]:
        with pytest.raises(ConfigError, match=message):
            _with_transfer(**transfer)


def test_scene_words_are_the_rendered_samples_words():
    """The transfer task's labels (world.scene_words) are drawn as the images were: the
    caption of every sample names the same shape, and the same colour where it names one."""
    from raysoup.config import WorldCfg
    from raysoup.data import world
    from raysoup.data.render import COLORS

    cfg = WorldCfg(num_classes=4, test_per_class=10, seed=3)
    named = 0
    for i in range(40):
        words = world.scene_words(cfg, "test", i)
        _, label, caption = world.render_sample(cfg, "test", i)
        assert words["shape"] == world.CLASSNAMES[label]
        colours = [c for c in COLORS if f" {c} " in f" {caption} "]
        if colours:
            assert colours == [words["color"]], caption
            named += 1
    assert named > 5
