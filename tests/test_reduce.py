"""The sharded reduction (raysoup/reduce): the shard plan, soups bitwise identical for any
shard count and equal to a float64 reference, the running sum, streaming memory, and errors
naming the tensor and the files (shape mismatch, missing tensor, corrupt or stale shards)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from raysoup.checkpoints import read_manifest, write_ingredient
from raysoup.checkpoints.tensorfile import TensorFileError
from raysoup.reduce import (
    INDEX_FILE,
    ReductionError,
    ShardedCheckpointError,
    add_into,
    plan_shards,
    read_sharded,
    reduce_shard,
    scale_,
    scaled,
    shard_filename,
    tensor_digest,
    tensor_nbytes,
    write_sharded,
)


def _clip_like_state(seed: int) -> dict[str, torch.Tensor]:
    """An open_clip-style image classifier state dict (real nn modules, open_clip key names)."""
    torch.manual_seed(seed)
    visual = nn.Module()
    visual.conv1 = nn.Conv2d(3, 32, kernel_size=8, stride=8, bias=False)
    visual.class_embedding = nn.Parameter(torch.randn(32))
    visual.positional_embedding = nn.Parameter(torch.randn(17, 32))
    visual.ln_pre = nn.LayerNorm(32)
    block = nn.Module()
    block.attn = nn.MultiheadAttention(32, 2)
    block.mlp = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 32))
    visual.transformer = nn.Module()
    visual.transformer.resblocks = nn.ModuleList([block])
    visual.ln_post = nn.LayerNorm(32)
    visual.proj = nn.Parameter(torch.randn(32, 16))
    model = nn.Module()
    model.visual = visual
    model.head = nn.Linear(16, 10)
    # Fine-tuning moves every weight (zero-initialised biases too), so perturb them all.
    state = {k: v.detach() + 0.01 * torch.randn(v.shape) for k, v in model.state_dict().items()}
    state["visual.ln_pre.weight"] = state["visual.ln_pre.weight"].to(torch.bfloat16)
    state["visual.num_batches_tracked"] = torch.tensor(7)  # a 0-dim integer buffer
    state["visual.logit_scale"] = torch.tensor(4.6)  # a 0-dim float
    return state


K = 3


@pytest.fixture(scope="module")
def ingredients(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingredients")
    paths = []
    for i in range(K):
        d = root / f"trial_{i}"
        write_ingredient(d, _clip_like_state(i), {"kind": "finetune"})
        paths.append(d)
    return paths


def _names_and_bytes(path):
    return tensor_nbytes(read_manifest(path)["tensors"])


def _dtypes(path):
    return {n: info["dtype"] for n, info in read_manifest(path)["tensors"].items()}


def _f64_reference(paths, weights):
    states = [_clip_like_state(i) for i in range(len(paths))]
    return {
        n: sum(w * s[n].double() for w, s in zip(weights, states))
        for n in states[0]
        if states[0][n].is_floating_point()
    }


def _same_bits(a: dict, b: dict):
    assert list(a) == list(b)
    for n, value in a.items():
        assert value.dtype == b[n].dtype and value.shape == b[n].shape, n
        assert value.tobytes() == b[n].tobytes(), n


# --- plan -------------------------------------------------------------------------------------


def test_plan_exact_and_deterministic():
    sizes = {"a": 10, "b": 40, "c": 30, "d": 20, "e": 5}
    # b->0, c->1, d->1 (30<40), a->0 (40<50), e->0 (tie 50/50 -> lowest index)
    assert plan_shards(sizes, 2) == [["a", "b", "e"], ["c", "d"]]
    assert plan_shards(sizes, 2) == plan_shards(dict(sizes), 2)
    assert plan_shards(sizes, 1) == [list(sizes)]


def test_plan_balanced_by_bytes():
    rng = np.random.default_rng(0)
    sizes = {f"t{i}": int(s) for i, s in enumerate(rng.integers(1, 10_000, size=200))}
    plan = plan_shards(sizes, 7)
    assert len(plan) == 7
    assert sorted(n for shard in plan for n in shard) == sorted(sizes)
    order = list(sizes)
    for shard in plan:
        assert shard == sorted(shard, key=order.index)  # dict order inside a shard
    loads = [sum(sizes[n] for n in shard) for shard in plan]
    assert max(loads) - min(loads) <= max(sizes.values())


def test_plan_never_empty():
    assert plan_shards({"a": 4, "b": 8}, 5) == [["b"], ["a"]]
    assert plan_shards({"a": 0, "b": 0, "c": 0}, 3) == [["a", "b", "c"]]
    assert plan_shards({}, 3) == []
    with pytest.raises(ValueError, match="num_shards"):
        plan_shards({"a": 1}, 0)
    with pytest.raises(ValueError, match="'a'"):
        plan_shards({"a": -1}, 1)


def test_tensor_nbytes_from_manifest(ingredients):
    nbytes = _names_and_bytes(ingredients[0])
    state = _clip_like_state(0)
    assert nbytes == {n: t.numel() * t.element_size() for n, t in state.items()}


# --- reduction --------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [[1 / K] * K, [0.5, 0.3, 0.2]], ids=["uniform", "weighted"])
def test_soup_bitwise_identical_for_any_shard_count(ingredients, weights, tmp_path):
    nbytes = _names_and_bytes(ingredients[0])
    digests = set()
    for num_shards in (1, 2, 3):
        plan = plan_shards(nbytes, num_shards)
        shards = [reduce_shard(ingredients, weights, names) for names in plan]
        out = tmp_path / f"soup{num_shards}"
        index = write_sharded(out, shards, _dtypes(ingredients[0]), {"recipe": "test"})
        assert sorted(p.name for p in out.glob("model-*.safetensors")) == [
            shard_filename(k, num_shards) for k in range(1, num_shards + 1)
        ]
        assert set(index["weight_map"]) == set(nbytes)
        assert index["metadata"] == {"recipe": "test", "total_size": sum(nbytes.values())}
        soup = read_sharded(out)
        assert {n: list(t.shape) for n, t in soup.items()} == {
            n: info["shape"] for n, info in read_manifest(ingredients[0])["tensors"].items()
        }
        assert soup["visual.ln_pre.weight"].dtype == torch.bfloat16  # cast back on write
        assert soup["visual.num_batches_tracked"].item() == 7
        digests.add(tensor_digest(soup))
    assert len(digests) == 1


@pytest.mark.parametrize("weights", [[1 / K] * K, [0.5, 0.3, 0.2], [2.0, -1.0, 0.0]])
def test_soup_matches_float64_reference(ingredients, weights):
    names = list(_names_and_bytes(ingredients[0]))
    soup = reduce_shard(ingredients, weights, names)
    ref = _f64_reference(ingredients, weights)
    for n, expected in ref.items():
        got = torch.from_numpy(soup[n])
        assert got.dtype == torch.float32
        scale = max(float(_clip_like_state(i)[n].abs().max()) for i in range(K))
        atol = 2e-7 * scale * sum(abs(w) for w in weights) + 1e-30
        torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=atol, msg=n)
    assert soup["visual.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("k", [1, 2, 3])
def test_running_sum_equals_uniform_reduce_bit_for_bit(ingredients, k):
    names = list(_names_and_bytes(ingredients[0]))
    for shard in plan_shards(_names_and_bytes(ingredients[0]), 2):
        acc = None
        for path in ingredients[:k]:
            acc = add_into(acc, path, shard)
            for a in acc.values():
                a.flags.writeable = False  # as if it came back from Ray's object store
        _same_bits(scaled(acc, 1 / k), reduce_shard(ingredients[:k], [1 / k] * k, shard))
    # The whole model in one go agrees as well.
    acc = None
    for path in ingredients[:k]:
        acc = add_into(acc, path / "model.safetensors", names)
    _same_bits(scale_(acc, 1 / k), reduce_shard(ingredients[:k], [1 / k] * k, names))


@pytest.mark.parametrize(("k", "route"), [(6, "mapping"), (9, "mapping"), (9, "read")])
def test_compiled_uniform_sum_is_the_running_sum_bit_for_bit(tmp_path, monkeypatch, k, route):
    """Local float32 files: the uniform soup is one compiled pass over the files (ingredients
    four at a time; windows of each file mapped and released, or pieces read into reused rows).
    Its bits must be the running sum's (add_into, then scaled) — past a window or piece, across
    slices, with groups of four and single ingredients after them — on either I/O route."""
    from raysoup.reduce import mapped, shard_reduce

    monkeypatch.setenv("RAYSOUP_IO_ROUTE", route)
    calls = []
    real = shard_reduce.sum_files
    monkeypatch.setattr(shard_reduce, "sum_files",
                        lambda *a: calls.append((a[0], a[3])) or real(*a))
    n = max(mapped.window(k), mapped.read_window(k)) + 3 * mapped.SLICE + 17
    paths = []
    for i in range(k):
        g = torch.Generator().manual_seed(100 + i)
        paths.append(tmp_path / f"ing{i}")
        write_ingredient(paths[-1], {"big": torch.randn(n, generator=g) * 10 ** (i % 3),
                                     "mat": torch.randn(7, 5, generator=g),
                                     "scalar": torch.randn((), generator=g)}, {"kind": "x"})
    names = ["big", "mat", "scalar"]
    soup = reduce_shard(paths, [1 / k] * k, names)
    want = mapped.MAPPING if route == "mapping" else mapped.READ
    assert sorted(calls) == [(want, 1), (want, 35), (want, n)]  # every tensor, on the route
    acc = None
    for path in paths:
        acc = add_into(acc, path, names)
    _same_bits(scale_(acc, 1 / k), soup)


def test_every_io_route_gives_the_same_soups(tmp_path, monkeypatch):
    """The compiled passes read the files through their mappings or with positioned reads into
    reused rows, and reads through Python view the mapping or copy it, whichever
    `raysoup.reduce.route` measured cheaper (or RAYSOUP_IO_ROUTE forces): the uniform soup, a
    weighted soup, TIES and task arithmetic of real safetensors files are the same bits on
    every route — tensors past a mapping window and a read piece, small ones, integers."""
    from raysoup.reduce import mapped, merge_shard, route
    from raysoup.soup.task_arithmetic import SumOfTaskVectors
    from raysoup.soup.ties import TiesMerge

    n = max(mapped.window(4), mapped.read_window(4)) + mapped.SLICE + 5
    g = torch.Generator().manual_seed(3)
    base = {"big": torch.randn(n, generator=g), "mat": torch.randn(30, 7, generator=g),
            "steps": torch.tensor([4])}
    paths = []
    for i in range(4):  # the base, then three fine-tuned
        state = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                 for k, v in base.items()}
        paths.append(tmp_path / f"m{i}")
        write_ingredient(paths[-1], state if i else base, {"kind": "x"})
    names = list(base)

    def soups() -> dict:
        return {"uniform": reduce_shard(paths, [0.25] * 4, names),
                "weighted": reduce_shard(paths, [0.1, 0.2, 0.3, 0.4], names),
                "ties": merge_shard(paths[1:], paths[0], names, TiesMerge(0.2), 0.6),
                "task_arithmetic": merge_shard(paths[1:], paths[0], names, SumOfTaskVectors(),
                                               0.3)}

    routes = {}
    for forced in ("mapping", "read"):
        monkeypatch.setenv(route.ENV, forced)
        routes[forced] = soups()
    monkeypatch.setenv(route.ENV, "auto")  # measured here, on the base's file
    monkeypatch.setattr(route, "PROBE_BYTES", 16 * mapped.SLICE)
    monkeypatch.setattr(route, "_CHOSEN", {})
    routes["auto"] = soups()
    (measured,) = route.calibrations().values()
    assert measured.route in ("mapping", "read") and measured.read_ns_per_mib > 0
    for kind, soup in routes["mapping"].items():
        for other in ("read", "auto"):
            _same_bits(soup, routes[other][kind])
    monkeypatch.setenv(route.ENV, "mmap")
    with pytest.raises(ValueError, match="RAYSOUP_IO_ROUTE='mmap': expected auto, mapping or read"):
        reduce_shard(paths, [0.25] * 4, names)


def test_per_tensor_weights_reduce_each_tensor_as_its_own_whole_model_call(ingredients):
    names = list(_names_and_bytes(ingredients[0]))
    own = {"head.weight": [0.5, 0.3, 0.2], "visual.proj": [1 / K] * K,
           "visual.num_batches_tracked": [0.0, 0.0, 1.0]}  # ignored: integers are not averaged
    default = [0.2, 0.2, 0.6]
    for shard in plan_shards(_names_and_bytes(ingredients[0]), 2):
        soup = reduce_shard(ingredients, default, shard, own)
        for n in shard:
            alone = reduce_shard(ingredients, own.get(n, default), [n])
            _same_bits({n: soup[n]}, alone)  # same bits, uniform (add+scale) or axpy alike
    whole = reduce_shard(ingredients, default, names, {})
    _same_bits(whole, reduce_shard(ingredients, default, names))
    with pytest.raises(ReductionError, match=r"tensor_weights\['head\.bias'\]"):
        reduce_shard(ingredients, default, names, {"head.bias": [0.5, 0.5]})
    with pytest.raises(ReductionError, match="finite"):
        reduce_shard(ingredients, default, names, {"head.bias": [0.5, float("nan"), 0.5]})


def test_add_into_and_scaled_never_mutate_readonly_inputs(ingredients):
    names = list(_names_and_bytes(ingredients[0]))
    acc = add_into(None, ingredients[0], names)
    for a in acc.values():
        a.flags.writeable = False
    before = {n: a.copy() for n, a in acc.items()}
    summed = add_into(acc, ingredients[1], names)
    halved = scaled(acc, 0.5)
    _same_bits(acc, before)
    for n in names:
        if acc[n].dtype == np.float32:
            assert not np.shares_memory(summed[n], acc[n]) and summed[n].flags.writeable
            assert not np.shares_memory(halved[n], acc[n])
            assert not np.array_equal(summed[n], acc[n])
    with pytest.raises(ReductionError, match="read-only"):
        scale_(acc, 0.5)
    # scale_ works in place on a writable dict and returns it.
    assert scale_(summed, 0.5) is summed


def test_reduce_reads_do_not_leak_between_calls(ingredients):
    # Mutating a result must not change what the next read of the same file returns.
    names = ["head.weight", "visual.num_batches_tracked"]
    first = add_into(None, ingredients[0], names)
    first["head.weight"] += 1.0
    first["visual.num_batches_tracked"] += 1
    again = add_into(None, ingredients[0], names)
    assert torch.equal(torch.from_numpy(again["head.weight"]), _clip_like_state(0)["head.weight"])
    assert again["visual.num_batches_tracked"] == 7


PEAK_PROBE = """
import sys
from pathlib import Path
from numba.core.registry import cpu_target
from raysoup.reduce import reduce_shard

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024

paths = [Path(p) for p in sys.argv[1:]]
# numba's start-up (~60 MB: registries, LLVM) is the process's, not the reduction's
cpu_target.typing_context.refresh()
cpu_target.target_context.refresh()
base = hwm()
out = reduce_shard(paths, [1 / len(paths)] * len(paths), ["a", "b"])
print(hwm() - base)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM (Linux)")
def test_streaming_many_ingredients_holds_about_one_model(tmp_path):
    # 8 ingredients of 2 x 32 MiB. Kept mapped pages would count: 8 models (512 MiB) resident.
    # The compiled pass releases each file's pages a window at a time: the accumulators (1
    # model) plus, per file, its window and the page-cache folios around it (<= 2 MiB each
    # side here: a fault maps a whole folio), ~33 MiB in all for 8 files.
    model = 64 << 20
    paths = []
    for i in range(8):
        g = torch.Generator().manual_seed(i)
        paths.append(tmp_path / f"ing{i}")
        write_ingredient(paths[-1], {"a": torch.randn(8 << 20, generator=g),
                                     "b": torch.randn(8 << 20, generator=g)}, {"kind": "x"})
    for p in paths:  # warm page cache: the peak is the reduction's, not the first read's
        (p / "model.safetensors").read_bytes()
    proc = subprocess.run([sys.executable, "-c", PEAK_PROBE, *map(str, paths)], check=True,
                          capture_output=True, text=True)
    peak = int(proc.stdout.split()[-1])
    assert peak < 2 * model, f"peak {peak / 2**20:.0f} MiB for a {model / 2**20:.0f} MiB model"


# --- errors -----------------------------------------------------------------------------------


def _variant(root, name, **changes):
    state = _clip_like_state(0)
    state.update(changes)
    d = root / name
    write_ingredient(d, state, {"kind": "finetune"})
    return d


def test_shape_mismatch_names_tensor_and_both_files(ingredients, tmp_path):
    bad = _variant(tmp_path, "bad", **{"head.weight": torch.zeros(11, 16)})
    with pytest.raises(ReductionError) as err:
        reduce_shard([ingredients[0], bad], [0.5, 0.5], ["head.bias", "head.weight"])
    msg = str(err.value)
    assert "'head.weight'" in msg and "[10, 16]" in msg and "[11, 16]" in msg
    assert str(ingredients[0] / "model.safetensors") in msg
    assert str(bad / "model.safetensors") in msg
    acc = add_into(None, ingredients[0], ["head.weight"])
    with pytest.raises(ReductionError, match=r"'head\.weight'.*" + re.escape(str(bad))):
        add_into(acc, bad, ["head.weight"])


def test_missing_tensor_and_integer_mismatch(ingredients, tmp_path):
    missing = tmp_path / "missing"
    state = _clip_like_state(1)
    del state["head.bias"]
    write_ingredient(missing, state, {})
    with pytest.raises(ReductionError, match=r"'head\.bias'.*missing.*" + re.escape(str(missing))):
        reduce_shard([ingredients[0], missing], [0.5, 0.5], ["head.bias"])
    ids_a, ids_b = tmp_path / "ids_a", tmp_path / "ids_b"
    write_ingredient(ids_a, {"pos_ids": torch.arange(4)}, {})
    write_ingredient(ids_b, {"pos_ids": torch.arange(4).flip(0)}, {})
    with pytest.raises(ReductionError) as err:
        reduce_shard([ids_a, ids_b], [0.5, 0.5], ["pos_ids"])
    assert "non-floating" in str(err.value) and str(ids_b) in str(err.value)
    assert str(ids_a) in str(err.value)
    with pytest.raises(ReductionError, match="non-floating"):
        add_into(add_into(None, ids_a, ["pos_ids"]), ids_b, ["pos_ids"])
    # BatchNorm's step counter differs between the zero-shot model and fine-tunes: not an
    # error; the first ingredient's value is kept (also in the greedy running sum).
    counter = _variant(tmp_path, "counter", **{"visual.num_batches_tracked": torch.tensor(8)})
    mixed = reduce_shard([ingredients[0], counter], [0.5, 0.5], ["visual.num_batches_tracked"])
    assert mixed["visual.num_batches_tracked"] == 7
    running = add_into(add_into(None, ingredients[0], ["visual.num_batches_tracked"]), counter,
                       ["visual.num_batches_tracked"])
    assert running["visual.num_batches_tracked"] == 7
    # With an explicit source, integer buffers are taken from it and not compared.
    names = ["visual.num_batches_tracked", "head.bias"]
    kept = reduce_shard([ingredients[0], counter], [0.5, 0.5], names, integers_from=1)
    assert kept["visual.num_batches_tracked"] == 8
    _same_bits({"head.bias": kept["head.bias"]},
               reduce_shard([ingredients[0], counter], [0.5, 0.5], ["head.bias"]))
    with pytest.raises(ReductionError, match="one weight per ingredient"):
        reduce_shard(ingredients, [1.0], ["head.bias"])
    with pytest.raises(TensorFileError, match=re.escape(str(tmp_path / "nope"))):
        reduce_shard([tmp_path / "nope.safetensors"], [1.0], ["head.bias"])


# --- writer -----------------------------------------------------------------------------------


def test_read_sharded_detects_corruption(ingredients, tmp_path):
    names = list(_names_and_bytes(ingredients[0]))
    plan = plan_shards(_names_and_bytes(ingredients[0]), 2)
    write_sharded(tmp_path, [reduce_shard(ingredients, [1 / K] * K, n) for n in plan])
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert set(index["sha256"]) == {shard_filename(1, 2), shard_filename(2, 2)}
    assert set(read_sharded(tmp_path)) == set(names)
    victim = tmp_path / shard_filename(2, 2)
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0x10
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardedCheckpointError, match=re.escape(str(victim)) + ".*sha256"):
        read_sharded(tmp_path)
    with pytest.raises(ShardedCheckpointError, match="missing"):
        read_sharded(tmp_path / "absent")


def test_rewrite_with_fewer_shards_removes_stale_files(ingredients, tmp_path):
    nbytes = _names_and_bytes(ingredients[0])
    for num_shards in (3, 1):
        plan = plan_shards(nbytes, num_shards)
        shards = [reduce_shard(ingredients, [1 / K] * K, n) for n in plan]
        write_sharded(tmp_path, shards)
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard_filename(1, 1), INDEX_FILE]
    assert set(read_sharded(tmp_path)) == set(nbytes)


def test_tensor_digest_is_layout_independent_and_sensitive():
    state = _clip_like_state(0)
    reordered = dict(reversed(list(state.items())))
    assert tensor_digest(state) == tensor_digest(reordered)
    as_numpy = {n: t.numpy() for n, t in state.items() if t.dtype != torch.bfloat16}
    assert tensor_digest(as_numpy) == tensor_digest({n: state[n] for n in as_numpy})
    changed = dict(state)
    w = changed["head.bias"].clone()
    w.view(torch.int32)[0] ^= 1  # one bit
    changed["head.bias"] = w
    assert tensor_digest(changed) != tensor_digest(state)
    recast = dict(state, **{"head.bias": state["head.bias"].double()})
    assert tensor_digest(recast) != tensor_digest(state)


def test_shard_writer_killed_mid_write_leaves_no_temp_file_in_the_soup(ingredients, tmp_path):
    """A shard task SIGKILLed after writing its temp file (then retried, as Ray does): the
    finished soup directory holds only its shards and index."""
    from raysoup.faults import ENV

    plan = plan_shards(_names_and_bytes(ingredients[0]), 2)
    script = ("import sys; from pathlib import Path\n"
              "from raysoup.reduce import reduce_shard, write_shard\n"
              f"paths = [Path(p) for p in {[str(p) for p in ingredients]!r}]\n"
              f"write_shard(Path(sys.argv[1]), reduce_shard(paths, [1 / {K}] * {K}, {plan[0]!r}))\n")
    out = tmp_path / shard_filename(1, 2)
    killed = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                            text=True, env={**os.environ, ENV: "reduce.shard_file=1"},
                            check=False)
    assert killed.returncode == -9, killed.stderr
    [left] = [p.name for p in tmp_path.iterdir()]
    assert left.startswith(f".tmp-{out.name}-")
    shards = [reduce_shard(ingredients, [1 / K] * K, names) for names in plan]
    write_sharded(tmp_path, shards)  # the retry, then the index
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        INDEX_FILE, shard_filename(1, 2), shard_filename(2, 2)])


@pytest.mark.parametrize("blend", ["uniform", "weighted", "integers_from", "ties"])
def test_streamed_shard_files_are_write_shards_bytes(ingredients, tmp_path, blend):
    """A shard streamed into its file tensor by tensor (`Blend.write_shard`: one reused buffer,
    the sha256 hashed as written) is the file `write_shard` makes from the shard in memory, byte
    for byte, for every shard of every layout (bfloat16 cast back, 0-d and integer tensors)."""
    from raysoup.checkpoints.ingredient import file_sha256
    from raysoup.reduce import Blend, write_shard
    from raysoup.soup.ties import TiesMerge

    made = {"uniform": Blend((1 / K,) * K), "weighted": Blend((0.5, 0.3, 0.2)),
            "integers_from": Blend((1 / K,) * K, integers_from=1),
            "ties": Blend(merge=TiesMerge(0.2), scale=0.7)}[blend]
    dtypes = _dtypes(ingredients[0])
    for k in (1, 3):
        for names in plan_shards(_names_and_bytes(ingredients[0]), k):
            a, b = tmp_path / "in_memory.safetensors", tmp_path / "streamed.safetensors"
            write_shard(a, made.shard(ingredients, names), dtypes)
            digest = made.write_shard(ingredients, names, b, dtypes)
            assert a.read_bytes() == b.read_bytes(), (k, names)
            assert digest == file_sha256(b)


def test_streamed_shard_checks_its_header_against_safetensors(ingredients, tmp_path, monkeypatch):
    """Where the header the stream would write is not safetensors' own (here: made wrong on
    purpose), the shard is written from memory instead: the same bytes either way. A reduction
    that yields another shape than the header's is an error naming the tensor, and leaves no
    file."""
    from raysoup.reduce import Blend, shard_stream, write_shard

    names = plan_shards(_names_and_bytes(ingredients[0]), 1)[0]
    dtypes, blend = _dtypes(ingredients[0]), Blend((1 / K,) * K)
    write_shard(tmp_path / "a", blend.shard(ingredients, names), dtypes)
    right = shard_stream._header
    monkeypatch.setattr(shard_stream, "_header", lambda order, out: right(order, out) + b"  ")
    blend.write_shard(ingredients, names, tmp_path / "b", dtypes)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    monkeypatch.setattr(shard_stream, "_header", right)

    layout = {"head.bias": (torch.float32, (11,))}  # the tensor has 10 entries
    with pytest.raises(ShardedCheckpointError, match=r"'head.bias'.*\[10\].*\[11\]"):
        shard_stream.write_shard_stream(tmp_path / "c", layout, lambda order: reduce_shard(
            ingredients, [1 / K] * K, order).items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
