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
    Journal(tmp_path / "j.json").put(key, {"heldout": [1, 2, 3]})
    assert Journal(tmp_path / "j.json").get(key) == {"heldout": [1, 2, 3]}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not an analysis journal"):
        Journal(tmp_path / "bad.json")
    assert json.loads((tmp_path / "j.json").read_text())[key]["heldout"] == [1, 2, 3]


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
