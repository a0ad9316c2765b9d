"""Training input: the epoch plan, and cached vs streamed batches (real Parquet shards, real
DataLoader workers, real JPEG decoding)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from raysoup.data.images import LabeledImages
from raysoup.data.parquet import read_parquet_split, write_parquet_split
from raysoup.train.batches import Augment, LaneBatches, LoaderCfg, TrainInput, plan_epoch


def _jpegs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    n = 70
    data = LabeledImages([f"s/{i:03d}" for i in range(n)], _jpegs(n), np.arange(n) % 3,
                         ["a", "b", "c"])
    root = tmp_path_factory.mktemp("batches") / "split"
    write_parquet_split(root, data, rows_per_shard=30, rows_per_group=10)  # 3 files, 7 groups
    return root


@pytest.mark.parametrize("lanes", [1, 2, 4, 8])
def test_every_sample_once_per_epoch_in_the_same_batches_whatever_the_lanes(lanes):
    """1,000 samples, batch 128: eight batches, the last of 104, the same for any lane count
    (lanes only share out the making of the batches, in runs of about one window)."""
    units = np.repeat(np.arange(28), 37)[:1000]  # row groups of 37
    plan = plan_epoch(units, seed=1, epoch=2, batch_size=128, lanes=lanes, window=256)
    visits = np.bincount(np.concatenate([idx for _, idx in plan]), minlength=1000)
    assert visits.tolist() == [1] * 1000
    assert [len(idx) for _, idx in plan] == [128] * 7 + [104]
    one_lane = plan_epoch(units, seed=1, epoch=2, batch_size=128, lanes=1, window=256)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(plan, one_lane, strict=True))
    assert [lane for lane, _ in plan] == [(step // 2) % lanes for step in range(8)]
    # A run of two steps is one window: a row group is read by one lane, or two at a run's
    # edge (3 edges), not by every lane.
    assert len({(lane, int(units[i])) for lane, idx in plan for i in idx}) <= 28 + 3
    again = plan_epoch(units, seed=1, epoch=2, batch_size=128, lanes=lanes, window=256)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(plan, again, strict=True))
    other = plan_epoch(units, seed=1, epoch=3, batch_size=128, lanes=lanes, window=256)
    assert not all(np.array_equal(a, b) for (_, a), (_, b) in zip(plan, other, strict=True))


def test_one_lane_plan_keeps_the_batches_it_had():
    """The plan before the last batch was kept, restated for one lane: a one-lane trial (the
    default on a 1-CPU trial) trains on the same full batches, plus the remainder."""
    units, seed, epoch, batch, window = np.repeat(np.arange(9), 13), 4, 3, 16, 40
    rng = np.random.default_rng([seed, epoch])
    uniq, inverse = np.unique(units, return_inverse=True)
    members = np.split(np.argsort(inverse, kind="stable"),
                       np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1])
    samples = np.concatenate([members[u] for u in rng.permutation(len(uniq))])
    lane_rng = np.random.default_rng([seed, epoch, 1])
    for lo in range(0, len(samples), window):
        samples[lo:lo + window] = lane_rng.permutation(samples[lo:lo + window])
    earlier = [samples[i * batch:(i + 1) * batch] for i in range(len(samples) // batch)]
    plan = plan_epoch(units, seed, epoch, batch, lanes=1, window=window)
    assert len(plan) == len(earlier) + 1 and len(plan[-1][1]) == len(units) % batch
    assert all(np.array_equal(a, b) for (_, a), b in zip(plan, earlier, strict=False))


def test_plan_of_a_split_smaller_than_a_batch_is_one_batch():
    plan = plan_epoch(np.arange(5), seed=0, epoch=1, batch_size=8, lanes=2, window=4)
    assert len(plan) == 1 and sorted(plan[0][1].tolist()) == list(range(5))
    # A lone last sample joins the batch before it (BatchNorm cannot train on one image).
    plan = plan_epoch(np.arange(17), seed=0, epoch=1, batch_size=8, lanes=2, window=4)
    assert [len(idx) for _, idx in plan] == [8, 9]


def _epochs(data, crop: str, budget: float, lanes: int = 2, randaug: int = 1):
    aug = Augment(image_size=24, crop=crop, randaug_n=randaug, randaug_m=9)
    source = TrainInput(data, aug, LoaderCfg(lanes=lanes, window=16, memory_budget_mb=budget),
                        seed=5, batch_size=8)
    return source, [[(x.clone(), y.clone()) for x, y in source.epoch(e)] for e in (1, 2)]


@pytest.mark.parametrize("crop", ["shift_flip", "random_resized_crop"])
def test_streamed_batches_equal_cached_batches(shards, crop):
    """Pixels and labels alike, and whatever the lanes: one cached lane, three streamed."""
    cached, a = _epochs(read_parquet_split(shards), crop, budget=1e6, lanes=1)
    streamed, b = _epochs(read_parquet_split(shards), crop, budget=0, lanes=3)
    assert cached.cached and not streamed.cached
    assert len(a[0]) == cached.steps_per_epoch() == 9  # 70 images: 8 batches of 8, one of 6
    for ea, eb in zip(a, b, strict=True):
        assert len(ea) == len(eb)
        assert sum(len(y) for _, y in ea) == 70
        for (xa, ya), (xb, yb) in zip(ea, eb, strict=True):
            assert xa.dtype == torch.uint8 and xa.shape == (len(ya), 3, 24, 24)
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Epochs differ in order and augmentation; a re-run (a resumed trial) repeats them exactly.
    assert not torch.equal(a[0][0][0], a[1][0][0])
    _, again = _epochs(read_parquet_split(shards), crop, budget=0)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(b[1], again[1], strict=True))


@pytest.mark.parametrize("world", [2, 3])
def test_data_parallel_workers_see_the_single_workers_samples(shards, world):
    """sweep.workers_per_trial: per step, the workers' slices are the single-worker batch
    (same samples, same order), every sample once per epoch, in the streamed and the cached
    input alike. The last batch (6 of 70) leaves the fourth of 4 workers with nothing, never a
    sample out."""
    data = read_parquet_split(shards)
    aug = Augment(image_size=24, crop="shift_flip", randaug_n=0, randaug_m=9)

    def source(shard, budget=0.0):
        cfg = LoaderCfg(lanes=2, window=16, memory_budget_mb=budget)
        return TrainInput(data, aug, cfg, seed=5, batch_size=8, shard=shard)

    single = source((0, 1))
    workers = [source((rank, world)) for rank in range(world)]
    for epoch in (1, 2):
        whole = single.steps(epoch)
        parts = [w.steps(epoch) for w in workers]
        assert all(len(p) == len(whole) == 9 for p in parts)
        for step, (_, idx) in enumerate(whole):
            slices = [p[step][1] for p in parts]
            assert 1 not in map(len, slices)  # BatchNorm cannot train on one image
            assert np.array_equal(np.concatenate(slices), idx)
        visits = np.bincount(np.concatenate([i for p in parts for _, i in p]), minlength=70)
        assert visits.tolist() == [1] * 70
    assert [len(i) for _, i in source((3, 4)).steps(1)] == [2] * 8 + [0]
    # The labels each worker trains on (streamed, decoded by DataLoader workers; and cached)
    # add up to the single worker's, step by step.
    ys = [[y for _, y in w.epoch(2)] for w in workers]
    cached = [[y for _, y in source((r, world), budget=1e6).epoch(2)] for r in range(world)]
    assert all(torch.equal(a, b) for ra, rb in zip(ys, cached, strict=True)
               for a, b in zip(ra, rb, strict=True))
    for step, (_, y) in enumerate(single.epoch(2)):
        assert torch.equal(torch.cat([w[step] for w in ys]), y)


def test_streamed_input_reads_each_row_group_once_per_worker(shards, monkeypatch):
    """A lane reads only its own units, so row groups are fetched about once an epoch."""
    from raysoup.data import parquet

    shards = read_parquet_split(shards)
    reads = []
    original = parquet.ParquetImages._group

    def counting(self, f, g):
        if (f, g) not in self._cache:
            reads.append((f, g))
        return original(self, f, g)

    source = TrainInput(shards, Augment(24, "shift_flip"), LoaderCfg(lanes=1, window=16,
                                                                     memory_budget_mb=0), 5, 8)
    shards.images._cache.clear()  # the size probe's reads
    # Counted in this process: the lane's dataset iterated directly, as its worker would.
    monkeypatch.setattr(parquet.ParquetImages, "_group", counting)
    list(LaneBatches(shards, source.steps(1), source.aug, 5, 1, 16))
    groups = set(zip(shards.images.file_idx.tolist(), shards.images.group.tolist()))
    assert sorted(set(reads)) == sorted(groups) and len(reads) == len(groups)


def test_corrupt_image_is_named_or_left_out_of_its_batch(tmp_path):
    from raysoup.data.images import DataError

    images = _jpegs(24)
    images[5] = images[5][:40]  # cut short, as an interrupted download
    data = LabeledImages([f"c/{i:02d}" for i in range(24)], images, np.arange(24) % 3,
                         ["a", "b", "c"])
    write_parquet_split(tmp_path / "s", data, rows_per_group=8)
    split = read_parquet_split(tmp_path / "s")
    aug = Augment(16, "random_resized_crop")
    for budget in (1e6, 0):
        with pytest.raises(DataError, match=r"part-00000.parquet \(row group 0, row 5\)"):
            list(TrainInput(split, aug, LoaderCfg(lanes=2, memory_budget_mb=budget), 0,
                            8).epoch(1))
    got = []
    for budget in (1e6, 0):
        source = TrainInput(split, aug, LoaderCfg(lanes=2, memory_budget_mb=budget,
                                                  skip_corrupt=True), 0, 8)
        batches = list(source.epoch(1))
        assert source.skipped == {5}
        assert sum(len(y) for _, y in batches) == 24 - 1  # the corrupt one alone
        assert all(len(x) == len(y) for x, y in batches)
        got.append(batches)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(*got, strict=True))


def test_fast_decode_and_crop_match_pil(tmp_path):
    """decode_pixels (torchvision's JPEG decoder) gives PIL's pixels exactly, and falls back to
    PIL for what it does not take; the torch resized crop is PIL's bicubic within rounding."""
    from raysoup.data.images import DataError, decode_image, decode_pixels
    from raysoup.train.batches import random_resized_crop, random_resized_crop_box

    rng = np.random.default_rng(3)
    jpegs = _jpegs(12, seed=3)
    for b in jpegs:
        assert np.array_equal(decode_pixels(b, "x"), np.asarray(decode_image(b, "x")))
    png, grey = io.BytesIO(), io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (9, 7, 3), np.uint8)).save(png, "PNG")
    Image.fromarray(rng.integers(0, 255, (9, 7), np.uint8)).save(grey, "JPEG")
    for b in (png.getvalue(), grey.getvalue()):
        got = decode_pixels(b, "x")
        assert got.shape == (9, 7, 3) and np.array_equal(got, np.asarray(decode_image(b, "x")))
    with pytest.raises(DataError, match="cannot decode image shard-7/row-3"):
        decode_pixels(jpegs[0][:60], "shard-7/row-3")

    # Photo-like content (the benchmark harness's JPEGs); on pure noise PIL and torch round the
    # bicubic overshoot differently (mean 0.3 levels), which an augmentation does not notice.
    from bench.streaming import jpegs as photos

    diffs = []
    for b in photos(12, seed=3):
        hwc = decode_pixels(b, "x")
        seed = int(rng.integers(1 << 30))
        ours = random_resized_crop(hwc, 224, np.random.default_rng(seed)).permute(1, 2, 0).numpy()
        box = random_resized_crop_box(hwc.shape[1], hwc.shape[0], np.random.default_rng(seed))
        pil = Image.fromarray(hwc).resize((224, 224), Image.Resampling.BICUBIC, box=box)
        diffs.append(np.abs(ours.astype(int) - np.asarray(pil).astype(int)))
    assert np.mean([d.mean() for d in diffs]) < 0.1
    assert np.mean([(d > 2).mean() for d in diffs]) < 1e-3
