"""Task arithmetic, TIES and DARE: the element-wise merges against dense references that hold
every task vector at once, by-hand cases, shard-layout invariance, and λ picked on held-out by
a real evaluator over real safetensors files (no Ray: the Ray kitchen is in
test_recipes_on_ray.py)."""

import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from raysoup.evaluate.evaluator import EvalSplit, Evaluator
from raysoup.reduce import (
    Blend,
    ReductionError,
    apply_task_vector,
    merge_shard,
    reduce_shard,
    task_vectors,
)
from raysoup.reduce.merge import tensor_generator
from raysoup.reduce.ties_kernel import Trim, kept_count, sample_runs
from raysoup.soup import Candidate, get_recipe
from raysoup.soup.dare import DareMerge, drop_
from raysoup.soup.task_arithmetic import SumOfTaskVectors
from raysoup.soup.task_vectors import pick_scale
from raysoup.soup.ties import TiesMerge, threshold
from raysoup.soup_settings import TiesSettings

# BatchNorm's step counter: fine-tuning advances it, so ingredients may differ in it (the first
# fine-tuned ingredient's is kept); any other integer tensor must agree.
STEPS = "bn.num_batches_tracked"


def _write(path: Path, tensors: dict) -> Path:
    path.mkdir(parents=True)
    save_file({k: torch.as_tensor(v).contiguous() for k, v in tensors.items()},
              str(path / "model.safetensors"))
    return path


def _kept(t: torch.Tensor, trim) -> torch.Tensor:
    """The entries of τ a given trim keeps: a bare magnitude keeps every entry at or above it;
    a Trim those above its magnitude and, of the ones equal to it, those before its cut."""
    a = t.abs().reshape(-1)
    if not isinstance(trim, Trim):
        return (a >= trim).reshape(t.shape)
    first = torch.arange(a.numel()) < trim.cut
    return ((a > trim.magnitude) | ((a == trim.magnitude) & first)).reshape(t.shape)


def top_k(t: np.ndarray, density: float) -> np.ndarray:
    """The definition's trim: the k = ⌈density·n⌉ largest |τ| (density as written, in exact
    arithmetic), ties in index order (a stable sort)."""
    k = math.ceil(Fraction(str(density)) * t.size)
    keep = np.zeros(t.size, bool)
    keep[np.argsort(-np.abs(t.reshape(-1)), kind="stable")[:k]] = True
    return keep.reshape(t.shape)


def dense_ties(taus: list[torch.Tensor], density: float, thresholds=None) -> torch.Tensor:
    """TIES with every trimmed task vector in memory (the paper's formulation); `thresholds`:
    trim each τ as given (a magnitude or a Trim) instead of at its exact top-k."""
    trimmed = []
    for i, t in enumerate(taus):
        if thresholds is not None:
            trimmed.append(t * _kept(t, thresholds[i]))
            continue
        trimmed.append(t * torch.from_numpy(top_k(t.numpy(), density)))
    stack = torch.stack(trimmed)
    sign = torch.sign(stack.sum(0))
    agree = (torch.sign(stack) == sign) & (sign != 0)
    return (stack * agree).sum(0) / agree.sum(0).clamp(min=1)


def reference_ties_soup(base: np.ndarray, thetas: list[np.ndarray], density: float,
                        lam: float) -> np.ndarray:
    """θ_0 + λ·TIES(τ) by the definition, dense, in float32 in the kernel's order of operations
    (so the comparison can be bitwise): τ_i = θ_i − θ_0 trimmed to its exact top k
    (`top_k`); per entry the kept positive τ_i summed in ingredient order and counted, the
    negative likewise; the elected sign is that of the two sums' total; the disjoint mean is
    the elected side's sum over its count (0 where the total is 0); then one multiply by λ and
    one add, rounded apart."""
    zero = np.float32(0)
    p, q = np.zeros_like(base), np.zeros_like(base)
    cp, cn = np.zeros(base.shape, np.int64), np.zeros(base.shape, np.int64)
    for theta in thetas:
        tau = theta.astype(np.float32) - base
        kept = top_k(tau, density)
        up, down = kept & (tau > 0), kept & (tau < 0)
        p, q = p + np.where(up, tau, zero), q + np.where(down, tau, zero)
        cp, cn = cp + up, cn + down
    total = p + q
    pos = p / np.maximum(cp, 1).astype(np.float32)
    neg = q / np.maximum(cn, 1).astype(np.float32)
    mean = np.where(total > 0, pos, np.where(total < 0, neg, zero))
    return base + np.float32(lam) * mean


@pytest.fixture
def population(tmp_path):
    torch.manual_seed(0)
    base = {"w": torch.randn(6, 5), "b": torch.randn(7), STEPS: torch.tensor([3])}
    paths = [_write(tmp_path / "base", base)]
    for i in range(4):
        paths.append(_write(tmp_path / f"m{i}", {
            "w": base["w"] + 0.1 * torch.randn(6, 5), "b": base["b"] + 0.1 * torch.randn(7),
            STEPS: torch.tensor([10 + i])}))
    return base, paths


def load(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path / "model.safetensors"))


def test_ties_by_hand_and_against_the_dense_reference(population):
    # By hand: τ1 = [3, -1, 0.5], τ2 = [-2, -2, 1]; density 2/3 keeps [3, -1, .] and [-2, -2, .]
    # sum [1, -3, 0] -> signs [+, -, 0]: entry 0 keeps τ1's 3, entry 1 averages -1, -2.
    tau = TiesMerge(2 / 3)("x", torch.zeros(3),
                           lambda: iter([torch.tensor([3.0, -1.0, 0.5]),
                                         torch.tensor([-2.0, -2.0, 1.0])]))
    torch.testing.assert_close(tau, torch.tensor([3.0, -1.5, 0.0]))

    base, paths = population
    got = task_vectors(paths[1:], paths[0], ["w", "b", STEPS], TiesMerge(0.3))
    states = [load(p) for p in paths[1:]]
    for name in ("w", "b"):
        ref = dense_ties([s[name] - base[name] for s in states], 0.3)
        torch.testing.assert_close(torch.from_numpy(got[name]), ref, rtol=1e-6, atol=1e-7)
    assert got[STEPS].tolist() == [10]  # integer buffers: the first fine-tuned ingredient's


def test_trim_keeps_the_top_fraction():
    t = torch.tensor([0.1, -5.0, 2.0, 0.0, -0.3])
    thr = threshold(t, torch.zeros(5), 0.4)
    assert (t * _kept(t, thr)).tolist() == [0.0, -5.0, 2.0, 0.0, 0.0]
    assert threshold(t, torch.zeros(5), 1.0) is None  # density 1 keeps everything


def test_kept_count_rounds_up_in_exact_arithmetic():
    """k = ⌈density·n⌉ on the density as written: 0.3 × 10 is 3, not the float product's 4."""
    assert kept_count(10, 0.3) == 3
    assert [kept_count(n, 0.2) for n in (1, 4, 5, 6, 10, 11)] == [1, 1, 1, 2, 2, 3]
    assert kept_count(7, 1.0) == 7 and kept_count(3, 1e-9) == 1
    t = torch.arange(1.0, 11.0)
    assert int(_kept(t, threshold(t, torch.zeros(10), 0.3)).sum()) == 3


def test_ties_at_the_threshold_keep_exactly_k_first_in_index_order():
    """Magnitudes equal to the k-th largest: the first ones in index order are kept, exactly k
    in all (a stable sort by descending magnitude)."""
    t = torch.tensor([1.0, -2.0, 2.0, 0.5, 2.0, -2.0, 3.0, 0.0, 2.0, 1.0])
    trim = threshold(t, torch.zeros(10), 0.3)  # 3: the 3.0 and the first two 2.0s
    assert trim == Trim(2.0, 3)
    assert (t * _kept(t, trim)).tolist() == [0, -2, 2, 0, 0, 0, 3, 0, 0, 0]


def test_task_arithmetic_at_one_over_n_is_the_uniform_soup(population):
    _, paths = population
    names = ["w", "b", STEPS]
    soup = merge_shard(paths[1:], paths[0], names, SumOfTaskVectors(), 0.25)
    uniform = reduce_shard(paths[1:], [0.25] * 4, names[:2])
    for n in ("w", "b"):
        np.testing.assert_allclose(soup[n], uniform[n], rtol=1e-5, atol=1e-6)
    # The blend the writer runs is exactly the merge (paths[0] is the base).
    blend = Blend(merge=SumOfTaskVectors(), scale=0.25).shard(paths, names)
    for n in names:
        assert np.array_equal(blend[n], soup[n])


def test_dare_masks_are_seeded_per_tensor_and_keep_the_expectation():
    tau = torch.ones(200_000)
    a = drop_(tau.clone(), 0.5, tensor_generator(7, "w", 0))
    b = drop_(tau.clone(), 0.5, tensor_generator(7, "w", 0))
    c = drop_(tau.clone(), 0.5, tensor_generator(7, "w", 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, 2.0}
    assert a.mean().item() == pytest.approx(1.0, abs=0.01)  # rescaled by 1/(1 - p)
    assert torch.equal(drop_(tau.clone(), 0.0, tensor_generator(7, "w", 0)), tau)


def test_dare_linear_and_ties_against_references(population):
    base, paths = population
    states = [load(p) for p in paths[1:]]
    for combine in ("linear", "ties"):
        merge = DareMerge(0.3, combine, seed=5)
        got = task_vectors(paths[1:], paths[0], ["w"], merge)["w"]
        dropped = [drop_(s["w"] - base["w"], 0.3, tensor_generator(5, "w", i))
                   for i, s in enumerate(states)]
        ref = sum(dropped) if combine == "linear" else dense_ties(dropped, 1.0)
        torch.testing.assert_close(torch.from_numpy(got), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("merge", [SumOfTaskVectors(), TiesMerge(0.2), DareMerge(0.5, "ties", 1)],
                         ids=["task_arithmetic", "ties", "dare"])
def test_merge_is_the_same_bits_for_any_shard_layout(population, merge):
    _, paths = population
    whole = merge_shard(paths[1:], paths[0], ["w", "b", STEPS], merge, 0.7)
    parts = {**merge_shard(paths[1:], paths[0], ["b"], merge, 0.7),
             **merge_shard(paths[1:], paths[0], [STEPS, "w"], merge, 0.7)}
    for name, value in whole.items():
        assert np.array_equal(value, parts[name]), name
    # Scored from cached task vectors (the Ray kitchen) == written from scratch.
    taus = task_vectors(paths[1:], paths[0], ["w", "b", STEPS], merge)
    cached = apply_task_vector(paths[0], taus, 0.7, ["w", "b", STEPS])
    for name, value in whole.items():
        assert np.array_equal(value, cached[name]), name


class MergeKitchen:
    """The Kitchen's task-vector part in-process: real files, a real evaluator."""

    def __init__(self, anchor, model, heldout, names):
        self.anchor, self.model, self.heldout, self.names = anchor, model, heldout, names
        self.scored = {}

    def score_merge(self, base, paths, merge, scales):
        evaluator = Evaluator(self.model, {"heldout": self.heldout})
        taus = task_vectors(paths, base, self.names, merge)
        out = []
        for s in scales:
            correct, n = evaluator.score(apply_task_vector(base, taus, s, self.names),
                                         ["heldout"])["heldout"]
            self.scored[s] = correct / n
            out.append(correct / n)
        return out


def test_recipes_pick_lambda_on_heldout_ties_to_smaller(tmp_path):
    assert pick_scale({0.5: 0.8, 0.25: 0.8, 1.0: 0.7}) == 0.25
    # A linear model whose zero-shot weights are wrong and whose fine-tunes are right: the
    # held-out accuracy rises with λ until the merged model classifies every sample.
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    zs = _write(tmp_path / "zeroshot", {"1.weight": -torch.eye(2), "1.bias": torch.zeros(2)})
    tuned = [_write(tmp_path / f"t{i}", {"1.weight": torch.eye(2) * (1 + i), "1.bias": torch.zeros(2)})
             for i in range(2)]
    images = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32).reshape(2, 1, 1, 2)
    heldout = EvalSplit(images, np.array([0, 1]))
    cands = [Candidate("t0", 0.9, tuned[0]), Candidate("t1", 0.8, tuned[1])]
    # TIES at density 0.5: both diagonal entries of each τ (its default 0.2 keeps exactly one
    # of the four, the first of the two equal magnitudes, and one class stays wrong).
    settings = {"ties": TiesSettings(density=0.5)}
    for name in ("task_arithmetic", "ties", "dare"):
        kitchen = MergeKitchen(Candidate("zeroshot", 0.0, zs), model, heldout,
                               ["1.weight", "1.bias"])
        result = get_recipe(name, settings.get(name)).cook(cands, kitchen)
        assert result.ingredients == ["zeroshot", "t0", "t1"] and result.merge is not None
        best = max(kitchen.scored.values())
        assert best == 1.0 and result.scale == min(s for s, a in kitchen.scored.items()
                                                   if a == best)
        assert [t["lambda"] for t in result.trace] == sorted(kitchen.scored)
        assert result.info["lambda"] == result.scale
    with pytest.raises(ValueError, match="ties needs the zero-shot ingredient"):
        get_recipe("ties").cook(cands, None)


def test_chunked_merges_match_the_dense_reference_across_chunk_boundaries():
    from raysoup.soup.task_vectors import CHUNK, elect_and_average, sum_of

    g = torch.Generator().manual_seed(3)
    n = 2 * CHUNK + 12_345  # three chunks, the last one short
    base = torch.randn(n, generator=g)
    thetas = [base + torch.randn(n, generator=g) for _ in range(3)]
    def stream():
        return iter(thetas)
    torch.testing.assert_close(sum_of(stream, base), sum(t - base for t in thetas),
                               rtol=1e-5, atol=1e-5)
    # The election and the disjoint mean must match the dense formulation at those trims.
    thresholds = [threshold(t, base, 0.2) for t in thetas]
    def trim(i, theta, b):  # a Sparsifier trimming by the i-th ingredient's trim
        return lambda tau: tau.mul_(_kept(tau, thresholds[i]))
    torch.testing.assert_close(elect_and_average(stream, base, trim),
                               dense_ties([t - base for t in thetas], 0.2, thresholds),
                               rtol=1e-6, atol=1e-6)
    # TIES' fused one-pass kernel (reduce/ties_kernel.py): the same merge at those thresholds.
    from raysoup.reduce.ties_kernel import ties_merge
    fused = ties_merge(stream, base, thresholds)
    torch.testing.assert_close(fused, dense_ties([t - base for t in thetas], 0.2, thresholds),
                               rtol=1e-6, atol=1e-6)
    # The kernel's own slices (each a re-drawn stream): boundaries do not change the result.
    from raysoup.reduce import ties_kernel
    chunk, ties_kernel.CHUNK = ties_kernel.CHUNK, 4096 + 7
    try:
        assert torch.equal(ties_merge(stream, base, thresholds), fused)
    finally:
        ties_kernel.CHUNK = chunk
    # bf16 ingredients are read as float32, as the torch path does.
    half = [t.to(torch.bfloat16) for t in thetas]
    torch.testing.assert_close(
        ties_merge(lambda: iter(half), base, thresholds),
        dense_ties([t.float() - base for t in half], 0.2, thresholds), rtol=1e-6, atol=1e-6)
    # The trims keep exactly k entries, the top k of the definition.
    for t in thetas:
        assert torch.equal(_kept(t - base, threshold(t, base, 0.2)),
                           torch.from_numpy(top_k((t - base).numpy(), 0.2)))


def test_fused_ties_counts_past_255_ingredients():
    """The kernel's per-entry counts start as bytes and widen at the 256th ingredient."""
    from raysoup.reduce.ties_kernel import ties_merge

    g = torch.Generator().manual_seed(5)
    base = torch.zeros(40)
    # Entry 0 is positive in all 300 ingredients: its mean needs a count of 300.
    thetas = [torch.randn(40, generator=g).abs() * (1 if j % 3 else -1) for j in range(300)]
    for t in thetas:
        t[0] = 1.0
    got = ties_merge(lambda: iter(thetas), base, [None] * 300)
    ref = dense_ties(thetas, 1.0, [float("-inf")] * 300)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert got[0].item() == 1.0


def test_ties_from_files_reads_slices_like_the_in_memory_stream(tmp_path, monkeypatch):
    """The shard path reads each slice of every ingredient's file into reused rows (positioned
    reads, bf16 converted) and writes the merged τ into a reused buffer: the soup must be the
    bits of the same merge over in-memory tensors, across slice boundaries and tensors of
    different sizes sharing that buffer."""
    from raysoup.reduce import ties_kernel
    from raysoup.reduce.ties_kernel import ties_merge, trim_thresholds

    monkeypatch.setattr(ties_kernel, "ROWS_BYTES", 3 * 4 * 1000 + 4)  # 1000-entry slices
    g = torch.Generator().manual_seed(11)
    base = {"big": torch.randn(70, 51, generator=g), "small": torch.randn(9, generator=g)}
    paths = [_write(tmp_path / "base", base)]
    states = []
    for i in range(3):
        state = {k: v + torch.randn(v.shape, generator=g) for k, v in base.items()}
        if i == 1:  # a bf16 ingredient
            state = {k: v.to(torch.bfloat16) for k, v in state.items()}
        states.append(state)
        paths.append(_write(tmp_path / f"m{i}", state))
    names = ["big", "small"]  # the big tensor first: the small one reuses its buffer
    got = merge_shard(paths[1:], paths[0], names, TiesMerge(0.3), 1.0)
    for name in names:
        def stream(name=name):
            return iter([s[name] for s in states])
        trims = trim_thresholds(stream, base[name], 0.3)
        ref = base[name] + ties_merge(stream, base[name], trims)
        assert torch.equal(torch.from_numpy(got[name]), ref), name
        # and the merge is TIES: the dense formulation at those thresholds
        torch.testing.assert_close(
            ties_merge(stream, base[name], trims),
            dense_ties([s[name].float() - base[name] for s in states], 0.3, trims),
            rtol=1e-6, atol=1e-6)


def test_radix_select_is_numpys_kth_smallest():
    """TIES' threshold select (three radix passes over the float bits) against np.partition,
    with repeated values, single entries and magnitudes far apart."""
    from raysoup.reduce.ties_kernel import _kth_smallest

    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 768, 4097, 65536):
        for scale in (1e-3, 1.0, 1e4):
            x = np.abs(rng.standard_normal(n).astype(np.float32)) * np.float32(scale)
            x[: n // 3] = x[0]  # ties
            for k in {0, n // 2, n - 1}:
                assert _kth_smallest(x, k) == np.partition(x, k)[k], (n, scale, k)


def test_bracket_pass_counts_and_gathers_like_numpy():
    """The trim's bracket pass (vector blocks of 16 entries, then a scalar tail) against numpy:
    the count past the bracket and the magnitudes inside it with their indices, in order — on
    lengths that end inside a block, appended after earlier candidates, with NaN and ∞."""
    from raysoup.reduce.ties_kernel import _bracket

    rng = np.random.default_rng(2)
    for n in (1, 15, 16, 17, 100, 4099):
        theta = rng.standard_normal(n).astype(np.float32)
        base = rng.standard_normal(n).astype(np.float32)
        theta[:: 7] = base[:: 7]  # zero τ
        theta[3 % n] = np.nan
        theta[5 % n] = np.inf
        mag = np.abs(theta - base)
        lo_t, hi_t = np.float32(0.5), np.float32(1.5)
        cand = np.full(n + 3, -1, np.float32)
        at = np.full(n + 3, -1, np.int64)
        c, above = _bracket(theta, base, 1000, lo_t, hi_t, cand, at, 3, 7)
        inside = np.flatnonzero((mag >= lo_t) & (mag <= hi_t))
        assert above == 7 + np.count_nonzero(mag > hi_t), n
        assert c == 3 + inside.size, n
        assert np.array_equal(cand[3:c], mag[inside]) and np.array_equal(at[3:c], 1000 + inside)
        assert (cand[:3] == -1).all() and (at[:3] == -1).all()


def test_compiled_ties_soup_is_the_bits_of_the_python_route(tmp_path, monkeypatch):
    """Float32 files on local disk: the shard makes each TIES tensor in one compiled call
    (thresholds from the sampled runs, reads, merge and θ_0 + λ·τ in place). Its soup must be
    the bits of the Python route (slices read through Python, τ, then `axpy`) and of the soup
    the Ray kitchen scores from cached task vectors — on a tensor of 70,000 entries, across slice
    boundaries, with five ingredients (a group of four and one), at a λ whose product rounds."""
    from raysoup.reduce import ties_kernel
    from raysoup.reduce.mapped import window

    WINDOW = window(6)  # entries per window of a pass over six files

    monkeypatch.setattr(ties_kernel, "ROWS_BYTES", 5 * 4 * 3000)  # 3000-entry slices
    g = torch.Generator().manual_seed(13)
    base = {"big": torch.randn(70_000, generator=g), "mat": torch.randn(60, 70, generator=g),
            "scalar": torch.tensor(2.5), "empty": torch.zeros(0), STEPS: torch.tensor([1]),
            # past WINDOW: the compiled pass releases mapped pages midway, then maps the next
            "huge": torch.randn(WINDOW + 777, generator=g)}
    paths = [_write(tmp_path / "base", base)]
    for i in range(5):
        paths.append(_write(tmp_path / f"m{i}", {
            k: (v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v + i)
            for k, v in base.items()}))
    names = list(base)
    calls = []
    real = TiesMerge.soup_files
    monkeypatch.setattr(TiesMerge, "soup_files",
                        lambda self, *a: calls.append(a[2]) or real(self, *a))
    fused = merge_shard(paths[1:], paths[0], names, TiesMerge(0.2), 0.75)
    # every floating tensor
    assert sorted(calls) == sorted([0, 1, 4200, 70_000, WINDOW + 777])
    monkeypatch.delattr(TiesMerge, "soup_files")
    python = merge_shard(paths[1:], paths[0], names, TiesMerge(0.2), 0.75)
    cached = apply_task_vector(paths[0], task_vectors(paths[1:], paths[0], names,
                                                      TiesMerge(0.2)), 0.75, names)
    for name in names:
        assert np.array_equal(fused[name], python[name]), name
        assert np.array_equal(fused[name], cached[name]), name
    assert fused[STEPS].tolist() == [1]  # integers: the first ingredient's
    # and it is TIES at those thresholds, with the multiply and the add rounded apart
    thetas = [load_file(str(p / "model.safetensors"))["big"] for p in paths[1:]]
    taus = [t - base["big"] for t in thetas]
    trims = ties_kernel.trim_thresholds(lambda: iter(thetas), base["big"], 0.2)
    tau = dense_ties(taus, 0.2, trims)
    torch.testing.assert_close(torch.from_numpy(fused["big"]), base["big"] + 0.75 * tau,
                               rtol=1e-6, atol=1e-6)


def test_compiled_ties_names_the_file_that_fails_to_read(tmp_path):
    """A file cut short after it was opened is refused before its mapping is read (a page past
    the end would be SIGBUS), naming it; a positioned read that fails inside the compiled call
    (one for a trim) reports which file."""
    from contextlib import ExitStack

    from raysoup.checkpoints.tensorfile import TensorFileError, open_tensors
    from raysoup.reduce.mapped import addresses
    from raysoup.reduce.merge import _soup_from_files
    from raysoup.reduce.ties_kernel import ties_soup

    g = torch.Generator().manual_seed(2)
    big = [_write(tmp_path / n, {"w": torch.randn(70_001, generator=g)}) / "model.safetensors"
           for n in ("base2", "c", "d")]
    with ExitStack() as stack:
        at, mappings = addresses([stack.enter_context(open_tensors(f)) for f in big], "w")
        out = np.empty(70_001, np.float32)
        assert ties_soup(at, mappings, out.size, 0.5, 1.0, out) == -1
        mappings[2, 2] = 987654  # not a descriptor: file 2's read for its trim fails
        assert ties_soup(at, mappings, out.size, 0.5, 1.0, out) == 2

    g = torch.Generator().manual_seed(2)
    files = [_write(tmp_path / n, {"w": torch.randn(5000, generator=g)}) / "model.safetensors"
             for n in ("base", "a", "b")]
    with ExitStack() as stack:
        handles = [stack.enter_context(open_tensors(f)) for f in files]
        soup = _soup_from_files("w", TiesMerge(0.5).soup_files, 1.0, (files[0], handles[0]),
                                list(zip(files[1:], handles[1:])))
        assert soup.shape == (5000,)
        os.truncate(files[2], files[2].stat().st_size - 100)
        with pytest.raises(TensorFileError, match=rf"{files[2]}.*(ends early|truncated)"):
            _soup_from_files("w", TiesMerge(0.5).soup_files, 1.0, (files[0], handles[0]),
                             list(zip(files[1:], handles[1:])))


@pytest.mark.parametrize("merge", [TiesMerge(0.3), SumOfTaskVectors(), DareMerge(0.5, "linear", 1)])
def test_non_floating_tensors_must_agree_across_ingredients(tmp_path, merge):
    """An integer tensor (not a step counter) the fine-tuned ingredients disagree on is an
    error naming it and both files, not the first ingredient's copied silently."""
    ids = {"w": torch.zeros(6, 5), "b": torch.zeros(7), STEPS: torch.tensor([3]),
           "ids": torch.arange(4)}
    base = _write(tmp_path / "ids-base", ids)
    same = [_write(tmp_path / f"ids-{i}", {**ids, STEPS: torch.tensor([i])}) for i in range(2)]
    other = _write(tmp_path / "ids-odd", {**ids, "ids": torch.arange(4).flip(0)})
    names = ["w", "b", STEPS, "ids"]
    assert merge_shard(same, base, names, merge, 0.5)["ids"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ReductionError, match=r"tensor 'ids': non-floating tensor differs "
                                             r"between .*ids-0.* and .*ids-odd"):
        merge_shard([*same, other], base, names, merge, 0.5)
    with pytest.raises(ReductionError, match="tensor 'ids'"):
        task_vectors([*same, other], base, names, merge)


@pytest.mark.parametrize("route", ["compiled", "python"])
@pytest.mark.parametrize("shards", [1, 3])
def test_written_ties_soup_is_the_definition_bit_for_bit(tmp_path, monkeypatch, route, shards):
    """The written soup against TIES computed directly from its definition (`top_k`,
    `reference_ties_soup`) on a tensor of over a million entries — with magnitudes that tie at
    the threshold, one ingredient's larger outside the runs its trim is bracketed from — and smaller
    ones, bit for bit (the reference rounds in the kernel's
    order), through the compiled route that reads the files' mappings and through the Python
    route, for the tensors made in one shard or split over three."""
    g = torch.Generator().manual_seed(17)
    base = {"big": torch.randn(1024, 1025, generator=g), "mat": torch.randn(300, 77, generator=g),
            "vec": torch.randn(10, generator=g), "one": torch.randn(1, generator=g)}
    states = []
    for i in range(3):
        step = 0.01 * torch.randn(base["big"].shape, generator=g)
        if i != 1:  # on a grid of 1/512: many magnitudes equal the k-th largest
            step = (step * 512).round() / 512
        if i == 2:  # larger outside the sampled runs: the sample's bracket misses its k-th
            flat = step.reshape(-1) * 16
            inside = torch.zeros(flat.numel(), dtype=torch.bool)
            for lo, hi in sample_runs(flat.numel()):
                inside[lo:hi] = True
            step = torch.where(inside, flat / 16, flat).reshape(step.shape)
        states.append({"big": base["big"] + step, **{k: v + 0.1 * torch.randn(v.shape, generator=g)
                                                    for k, v in base.items() if k != "big"}})
    paths = [_write(tmp_path / "base", base)]
    paths += [_write(tmp_path / f"m{i}", s) for i, s in enumerate(states)]
    if route == "python":
        monkeypatch.delattr(TiesMerge, "soup_files")
    names = list(base)
    parts = [names] if shards == 1 else [names[:1], names[1:3], names[3:]]
    soup = {}
    for part in parts:
        soup.update(merge_shard(paths[1:], paths[0], part, TiesMerge(0.3), 0.7))
    assert (base["big"] + states[0]["big"] - base["big"]).numel() >= 1_000_000
    for name in names:
        ref = reference_ties_soup(base[name].numpy(), [s[name].numpy() for s in states], 0.3, 0.7)
        assert soup[name].tobytes() == ref.tobytes(), name
