"""WiSE-FT, Model Stock, learned soup and the ensemble on small hand-computed cases (no Ray).

`LocalKitchen` implements the recipes' `Kitchen` interface in-process with the same pure pieces
the Ray kitchen fans out (reduce_shard, Evaluator, learn_coefficients): real files, real math.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from raysoup.evaluate.evaluator import EvalSplit, Evaluator
from raysoup.reduce import reduce_shard
from raysoup.soup import Candidate, get_recipe
from raysoup.soup.learned import learn_coefficients, peak_rss
from raysoup.soup.model_stock import interpolation_ratios, stock_ratio
from raysoup.soup.wiseft import WiseFT, pick_alpha


class LocalKitchen:
    def __init__(self, anchor=None, model=None, heldout=None, names=None):
        self.anchor, self.model, self.heldout, self.names = anchor, model, heldout, names

    def score(self, paths, weightings):
        evaluator = Evaluator(self.model, {"heldout": self.heldout})
        out = []
        for w in weightings:
            correct, n = evaluator.score(reduce_shard(paths, w, self.names), ["heldout"])["heldout"]
            out.append(correct / n)
        return out

    def per_tensor(self, fn, paths):
        return fn(paths, self.names)

    def learn(self, paths, **settings):
        mix = learn_coefficients(self.model, paths, self.heldout, **settings)
        return {"weights": mix.weights, "tensor_weights": mix.tensor_weights,
                "trace": mix.trace, "info": mix.info}


class TableKitchen:
    """Held-out accuracy per α from a table (the selection logic alone)."""

    def __init__(self, table):
        self.table = table
        self.anchor = Candidate("zeroshot", 0.5, Path("zeroshot"))
        self.calls = []
        self.alphas = []  # every α scored

    def score(self, paths, weightings):
        self.calls.append([p.name for p in paths])
        self.alphas += [round(w[1], 1) for w in weightings]
        return [self.table[round(w[1], 1)] for w in weightings]


def _write(path: Path, tensors: dict) -> Path:
    path.mkdir(parents=True)
    save_file({k: torch.as_tensor(v).contiguous() for k, v in tensors.items()},
              str(path / "model.safetensors"))
    return path


# --- WiSE-FT ----------------------------------------------------------------------------------


def test_wiseft_picks_best_alpha_ties_to_smaller():
    assert pick_alpha({0.0: 0.5, 0.3: 0.8, 0.6: 0.8, 1.0: 0.7}) == 0.3
    table = {round(0.1 * i, 1): acc for i, acc in
             enumerate([0.50, 0.60, 0.70, 0.78, 0.80, 0.80, 0.79, 0.75, 0.74, 0.73, 0.72])}
    kitchen = TableKitchen(table)
    cands = [Candidate("a", 0.70, Path("a")), Candidate("b", 0.72, Path("b"))]
    result = WiseFT(search="grid").cook(cands, kitchen)
    assert kitchen.calls == [["zeroshot", "b"]]  # the best fine-tuned by held-out
    # α = 0 and 1 are the zero-shot and the best model: their held-out accuracies (the table's
    # ends here) are the candidates', not scored again.
    assert sorted(kitchen.alphas) == pytest.approx([0.1 * i for i in range(1, 10)])
    assert result.ingredients == ["zeroshot", "b"]
    assert result.weights == pytest.approx([0.6, 0.4])  # 0.4 and 0.5 tie: the smaller α
    assert [t["alpha"] for t in result.trace] == pytest.approx([0.1 * i for i in range(11)])
    assert [t["heldout"] for t in result.trace] == list(table.values())
    assert [t["alpha"] for t in result.trace if t["chosen"]] == [0.4]
    # The default scores fewer α (one peak here) and chooses the same one.
    bracket = WiseFT().cook(cands, kitchen)
    assert bracket.weights == result.weights and len(bracket.trace) < 11
    assert all(table[t["alpha"]] == t["heldout"] for t in bracket.trace)
    with pytest.raises(ValueError, match="search must be one of"):
        WiseFT(search="golden")
    with pytest.raises(ValueError, match="zeroshot"):
        WiseFT().cook(cands, None)


def test_wiseft_through_real_files_finds_the_generating_alpha(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    w0, w1 = torch.randn(4, 12), torch.randn(4, 12)
    b0, b1 = torch.randn(4), torch.randn(4)
    zs = _write(tmp_path / "zeroshot", {"1.weight": w0, "1.bias": b0})
    ft = _write(tmp_path / "ft", {"1.weight": w1, "1.bias": b1})
    other = _write(tmp_path / "worse", {"1.weight": -w1, "1.bias": b1})
    # Labels from the interpolation at α = 0.3: only that grid point gets every one right.
    x = torch.randn(3000, 3, 2, 2)
    labels = (x.flatten(1) @ (0.7 * w0 + 0.3 * w1).T + 0.7 * b0 + 0.3 * b1).argmax(1)
    heldout = EvalSplit(x.numpy(), labels.numpy())

    def candidate(name: str, path: Path) -> Candidate:  # its held-out accuracy, as evaluated
        correct, n = Evaluator(model, {"heldout": heldout}).score(
            load_file(str(path / "model.safetensors")), ["heldout"])["heldout"]
        return Candidate(name, correct / n, path)

    kitchen = LocalKitchen(candidate("zeroshot", zs), model, heldout, ["1.weight", "1.bias"])
    cands = [candidate("ft", ft), candidate("worse", other)]
    result = get_recipe("wiseft").cook(cands, kitchen)
    accs = {t["alpha"]: t["heldout"] for t in result.trace}
    assert accs[0.3] == 1.0 and max(accs[0.2], accs[0.4]) < 1.0
    assert result.info["alpha"] == 0.3 and result.weights == pytest.approx([0.7, 0.3])


# --- Model Stock ------------------------------------------------------------------------------


def test_stock_ratio_by_hand():
    assert stock_ratio(1 / math.sqrt(2), 2) == pytest.approx(2 * (math.sqrt(2) - 1))
    assert stock_ratio(1.0, 5) == 1.0 and stock_ratio(0.0, 5) == 0.0
    assert stock_ratio(-0.4, 3) == 0.0  # negative cosine clamped: keep the anchor
    with pytest.raises(ValueError, match="at least 2"):
        stock_ratio(0.5, 1)


def test_model_stock_hand_computed(tmp_path):
    # Deltas from the anchor per tensor (k = 2):
    #   b: [1,0] and [1,1]   -> cos = 1/√2, t = 2(√2−1)
    #   c: [-1,0] and [1,0]  -> cos = −1, clamped -> t = 0 (anchor)
    #   d: [2,2] and [1,1]   -> cos = 1, t = 1 (the plain average)
    #   e: [0,0] and [1,0]   -> a zero delta counts as cos 0 -> t = 0
    anchor = {"b": [1.0, 1.0], "c": [0.0, 0.0], "d": [0.0, 0.0], "e": [5.0, 5.0], "n": [7]}
    m1 = {"b": [2.0, 1.0], "c": [-1.0, 0.0], "d": [2.0, 2.0], "e": [5.0, 5.0], "n": [7]}
    m2 = {"b": [2.0, 2.0], "c": [1.0, 0.0], "d": [1.0, 1.0], "e": [6.0, 5.0], "n": [7]}
    paths = [_write(tmp_path / n, s) for n, s in (("zeroshot", anchor), ("m1", m1), ("m2", m2))]
    names = ["b", "c", "d", "e", "n"]
    ratios = interpolation_ratios(paths, names)
    assert set(ratios) == {"b", "c", "d", "e"}  # the integer tensor is not averaged
    t_b = 2 * (math.sqrt(2) - 1)
    assert ratios["b"]["cos"] == pytest.approx(1 / math.sqrt(2))
    assert [ratios[n]["t"] for n in "bcde"] == pytest.approx([t_b, 0.0, 1.0, 0.0])

    kitchen = LocalKitchen(Candidate("zeroshot", 0.1, paths[0]), names=names)
    result = get_recipe("model_stock").cook(
        [Candidate("m2", 0.6, paths[2]), Candidate("m1", 0.5, paths[1])], kitchen)
    assert result.ingredients == ["zeroshot", "m1", "m2"]
    assert result.tensor_weights["b"] == pytest.approx([1 - t_b, t_b / 2, t_b / 2])
    soup = reduce_shard(paths, result.weights, names, result.tensor_weights)
    np.testing.assert_allclose(soup["b"], [1 + t_b, 1 + 0.5 * t_b], rtol=1e-6)
    np.testing.assert_array_equal(soup["c"], [0.0, 0.0])
    np.testing.assert_allclose(soup["d"], [1.5, 1.5])
    np.testing.assert_array_equal(soup["e"], [5.0, 5.0])
    np.testing.assert_array_equal(soup["n"], [7])


def test_model_stock_three_models_mean_pairwise_cosine(tmp_path):
    # cos12 = 1/√2, cos13 = cos23 = 0 -> mean 1/(3√2); t = 3c / (1 + 2c)
    deltas = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]]
    paths = [_write(tmp_path / "a", {"w": [0.0, 0.0, 0.0]})]
    paths += [_write(tmp_path / f"m{i}", {"w": d}) for i, d in enumerate(deltas)]
    c = 1 / (3 * math.sqrt(2))
    r = interpolation_ratios(paths, ["w"])["w"]
    assert r["cos"] == pytest.approx(c) and r["t"] == pytest.approx(3 * c / (1 + 2 * c))
    with pytest.raises(ValueError, match="at least 2"):
        interpolation_ratios(paths[:2], ["w"])


# --- ensemble ---------------------------------------------------------------------------------


def test_ensemble_averages_logits_by_hand():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    a = {"1.weight": torch.eye(2), "1.bias": torch.zeros(2)}
    b = {"1.weight": torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "1.bias": torch.tensor([1.0, 0.0])}
    images = np.array([[1.0, 0.0], [0.0, 3.0]], dtype=np.float32).reshape(2, 1, 1, 2)
    ev = Evaluator(model, {"heldout": EvalSplit(images, np.array([0, 1]))}, batch_size=1)
    # a: [1,0], [0,3]; b: [1,1], [4,0]; mean: [1,.5], [2,1.5]
    logits = ev.ensemble_logits([lambda: a, lambda: b])["heldout"]
    torch.testing.assert_close(logits, torch.tensor([[1.0, 0.5], [2.0, 1.5]]))
    assert ev.ensemble_score([lambda: a, lambda: b]) == {"heldout": (1, 2)}
    assert ev.score(a) == {"heldout": (2, 2)}  # the best member alone beats this ensemble

    result = get_recipe("ensemble").cook([Candidate("z", 0.1, Path("z")),
                                          Candidate("a", 0.2, Path("a"))])
    assert result.kind == "ensemble" and result.ingredients == ["a", "z"]
    assert result.info["inference_cost"] == 2


# --- learned soup -----------------------------------------------------------------------------


class TwoBranch(nn.Module):
    """logits = A·x[:6] + B·x[6:]: each layer's mixture is identifiable on its own."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 3, bias=False)
        self.b = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        x = x.flatten(1)
        return self.a(x[:, :6]) + self.b(x[:, 6:])


def _mixture_problem(tmp_path, mix_a, mix_b, n=6000):
    gen = torch.Generator().manual_seed(0)
    states = [{"a.weight": 2 * torch.randn(3, 6, generator=gen),
               "b.weight": 2 * torch.randn(3, 6, generator=gen)} for _ in range(3)]
    paths = [_write(tmp_path / f"ing{i}", s) for i, s in enumerate(states)]
    true_a = sum(w * s["a.weight"] for w, s in zip(mix_a, states))
    true_b = sum(w * s["b.weight"] for w, s in zip(mix_b, states))
    x = torch.randn(n, 3, 2, 2, generator=gen)
    logits = x.flatten(1)[:, :6] @ true_a.T + x.flatten(1)[:, 6:] @ true_b.T
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=gen).squeeze(1)
    return paths, EvalSplit(x.numpy(), labels.numpy())


@pytest.fixture
def one_thread():
    # Tiny tensors: a second thread adds synchronisation and, on a shared machine, contention,
    # and no speed.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_learned_recovers_known_per_layer_mixture(tmp_path, one_thread):
    mix_a, mix_b = [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]
    paths, heldout = _mixture_problem(tmp_path, mix_a, mix_b)
    mix = learn_coefficients(TwoBranch(), paths, heldout, per_layer=True, steps=100, lr=0.05,
                             batch_size=500, seed=0)
    assert mix.tensor_weights["a.weight"] == pytest.approx(mix_a, abs=0.05)
    assert mix.tensor_weights["b.weight"] == pytest.approx(mix_b, abs=0.05)
    assert mix.trace[-1]["loss"] < mix.trace[0]["loss"]
    assert mix.info["layers"] == 2


def test_learned_single_mixture_and_recipe(tmp_path, one_thread):
    mix_true = [0.2, 0.5, 0.3]
    paths, heldout = _mixture_problem(tmp_path, mix_true, mix_true)
    cands = [Candidate(p.name, 0.5, p) for p in reversed(paths)]
    recipe = get_recipe("learned")
    recipe.settings.update(per_layer=False, steps=100, batch_size=500)
    result = recipe.cook(cands, LocalKitchen(model=TwoBranch(), heldout=heldout))
    assert result.ingredients == ["ing0", "ing1", "ing2"]
    assert result.tensor_weights is None
    assert result.weights == pytest.approx(mix_true, abs=0.05)
    assert sum(result.weights) == pytest.approx(1.0)


def test_peak_rss_sees_an_allocation():
    import mmap

    with peak_rss() as mem:
        # Fresh anonymous pages, touched: a heap allocation could reuse memory a previous test
        # freed but the allocator kept resident, and the peak would not move.
        block = mmap.mmap(-1, 64 * 2**20)
        block.write(b"\x01" * len(block))
        block.close()
    assert mem["peak_rss_mib"] >= mem["rss_before_mib"] + 60 or not mem["reset"]
