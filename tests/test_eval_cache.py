"""The eval cache: decoded once (Ray tasks), streamed by evaluators, reused, resumable; corrupt
images named or skipped. Real JPEG/PNG files, a real local Ray cluster."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from raysoup.data.images import DataError, LabeledImages
from raysoup.data.transforms import preprocess_eval
from raysoup.evaluate import cache
from raysoup.evaluate.evaluator import EvalSplit, Evaluator

PRE = {"image_size": 32, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}


def _split(n: int, seed: int = 0, corrupt: tuple[int, ...] = ()) -> LabeledImages:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        w, h = int(rng.integers(10, 40)), int(rng.integers(10, 40))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(buf, "PNG")
        images.append(buf.getvalue()[:20] if i in corrupt else buf.getvalue())
    return LabeledImages([f"t/{i:03d}" for i in range(n)], images, np.arange(n) % 4,
                         ["a", "b", "c", "d"])


def _build(tmp_path, data, shard=7, skip=False) -> cache.CachedImages:
    d = tmp_path / "c"
    infos = [cache.build_shard(data.select(np.arange(lo, hi)), 32, d / cache.shard_name(i), skip)
             for i, (lo, hi) in enumerate(cache.shard_ranges(len(data), shard))]
    return cache.CachedImages(str(d), [i["n"] for i in infos], tuple(PRE["mean"]),
                              tuple(PRE["std"]))


def test_cached_images_stream_what_preprocess_eval_computes(tmp_path):
    data = _split(30)
    images = _build(tmp_path, data)
    want = preprocess_eval(data, 32, PRE["mean"], PRE["std"])
    assert len(images) == 30 and len(images.counts) == 5
    got = np.concatenate(list(images.batches(0, 30, 4)))
    assert np.array_equal(got, want)
    # A slice that starts and ends inside shards reads only those shards' rows.
    assert np.array_equal(np.concatenate(list(images.batches(9, 23, 5))), want[9:23])
    idx = np.array([29, 0, 13, 13, 6])
    assert np.array_equal(images.take(idx), want[idx])


def test_evaluator_scores_from_the_cache_as_from_memory(tmp_path):
    from raysoup.models.classifier import classifier_skeleton

    data = _split(30)
    model = classifier_skeleton("raysoup-tiny-vit", 4)
    torch.manual_seed(0)
    cached = EvalSplit(_build(tmp_path, data), data.labels)
    memory = EvalSplit(preprocess_eval(data, 32, PRE["mean"], PRE["std"]), data.labels)
    ev = Evaluator(model, {"a": cached, "b": memory}, batch_size=8)
    assert torch.equal(ev.logits("a"), ev.logits("b"))
    assert ev.score(None, ["a"])["a"] == ev.score(None, ["b"])["b"]
    parts = [ev.score(None, ["a"], part=(i, 3))["a"] for i in range(3)]
    assert sum(c for c, _ in parts) == ev.score(None, ["a"])["a"][0]
    # The per-image correctness comes from the same logits, in the split's order.
    correct, n, bits = ev.score(None, ["a"], bits=True)["a"]
    right = np.unpackbits(np.frombuffer(bits, np.uint8), count=n).astype(bool)
    labels = torch.tensor(data.labels)
    assert np.array_equal(right, (ev.logits("a").argmax(1) == labels).numpy())
    assert (correct, n) == ev.score(None, ["a"])["a"] and len(bits) == -(-n // 8)


def test_corrupt_image_is_named_or_skipped(tmp_path):
    data = _split(10, corrupt=(3,))
    with pytest.raises(DataError, match="cannot decode image t/003"):
        cache.build_shard(data, 32, tmp_path / "x" / "part-00000.npy")
    assert not (tmp_path / "x" / "part-00000.npy").exists()
    info = cache.build_shard(data, 32, tmp_path / "y" / "part-00000.npy", skip_corrupt=True)
    assert info == {"n": 9, "skipped": [3]}
    assert cache.built_shard(tmp_path / "y" / "part-00000.npy") == info


def _mtimes(d) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted(d.glob("part-*.npy"))}


def test_build_eval_cache_is_built_once_reused_and_resumed(tmp_path, ray_session):
    from raysoup.orchestration.evaluation import build_eval_cache

    named = {"heldout": _split(20, 1), "test": _split(9, 2, corrupt=(4,))}
    with pytest.raises(DataError, match="t/004"):
        build_eval_cache(named, tmp_path, PRE, shard_images=8)
    splits = build_eval_cache(named, tmp_path, PRE, shard_images=8, skip_corrupt=True)
    assert len(splits["heldout"]) == 20 and len(splits["heldout"].images) == 20
    assert len(splits["test"]) == 8 and list(splits["test"].labels) == [0, 1, 2, 3, 1, 2, 3, 0]
    d = cache.cache_dir(tmp_path, "heldout", named["heldout"], PRE, 8, True)
    assert cache.read_manifest(d)["images"] == 20 and len(_mtimes(d)) == 3
    built = _mtimes(d)
    # Reused: a second build (a later stage, run or resume) writes nothing.
    again = build_eval_cache(named, tmp_path, PRE, shard_images=8, skip_corrupt=True)
    assert _mtimes(d) == built
    assert np.array_equal(np.concatenate(list(again["heldout"].images.batches(0, 20, 6))),
                          np.concatenate(list(splits["heldout"].images.batches(0, 20, 6))))
    # Interrupted build: no manifest, one shard without its sidecar; only that one is rebuilt.
    (d / cache.MANIFEST).unlink()
    cache.sidecar(d / cache.shard_name(1)).unlink()
    build_eval_cache(named, tmp_path, PRE, shard_images=8, skip_corrupt=True)
    rebuilt = _mtimes(d)
    assert [k for k in built if rebuilt[k] != built[k]] == [cache.shard_name(1)]
    assert cache.read_manifest(d)["images"] == 20
    # Another model size is another cache.
    other = {**PRE, "image_size": 24}
    assert cache.cache_dir(tmp_path, "heldout", named["heldout"], other, 8, True) != d


def _pixels(split: EvalSplit) -> np.ndarray:
    return np.concatenate(list(split.images.batches(0, len(split.images), 8)))


def test_changed_image_files_are_not_served_from_the_old_cache(tmp_path, ray_session):
    # Issue 30 item 5: same keys and labels, other pixels -> the old cache was served.
    from raysoup.data.images import FileImages
    from raysoup.orchestration.evaluation import build_eval_cache

    source = _split(6, seed=3)
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [folder / f"{i}.png" for i in range(6)]
    for path, encoded in zip(paths, source.images.read(range(6)), strict=True):
        path.write_bytes(encoded)
    data = LabeledImages(source.keys, FileImages(paths), source.labels, source.classnames)
    first = build_eval_cache({"test": data}, tmp_path, PRE, shard_images=4)
    paths[2].write_bytes(_split(6, seed=4).images.read([2])[0])  # repaired / repacked
    again = build_eval_cache({"test": data}, tmp_path, PRE, shard_images=4)
    want = preprocess_eval(data, 32, PRE["mean"], PRE["std"])
    assert np.array_equal(_pixels(again["test"]), want)
    assert not np.array_equal(_pixels(first["test"]), want)


def test_a_changed_shard_size_or_skip_corrupt_builds_another_cache(tmp_path, ray_session):
    # Issue 30 item 5: a changed eval_cache_shard over an existing manifest raised (zip of
    # unequal lengths) or, 7 -> 8 with one corrupt image, skipped the wrong image and
    # misaligned the labels after it.
    from raysoup.orchestration.evaluation import build_eval_cache

    data = _split(15, 5, corrupt=(9,))
    keep = [i for i in range(15) if i != 9]
    want = preprocess_eval(data.select(np.array(keep)), 32, PRE["mean"], PRE["std"])
    for shard in (7, 8, 4):
        split = build_eval_cache({"test": data}, tmp_path, PRE, shard_images=shard,
                                 skip_corrupt=True)["test"]
        assert list(split.labels) == list(data.labels[keep])
        assert np.array_equal(_pixels(split), want)
    # skip_corrupt is part of the key: without it the corrupt image stops the build.
    with pytest.raises(DataError, match="t/009"):
        build_eval_cache({"test": data}, tmp_path, PRE, shard_images=8)
    digests = {cache.split_digest(data, PRE, shard, skip)
               for shard in (7, 8) for skip in (False, True)}
    assert len(digests) == 4


def test_loss_sums_over_slices_exactly(tmp_path):
    """The held-out loss greedy's `loss_must_not_rise` compares: summed in fixed point, so k
    data-parallel slices (one of them empty) give exactly the whole split's number, which is
    the mean cross-entropy to within the unit."""
    from raysoup.evaluate.evaluator import LOSS_UNIT
    from raysoup.models.classifier import classifier_skeleton

    data = _split(30)
    torch.manual_seed(0)
    ev = Evaluator(classifier_skeleton("raysoup-tiny-vit", 4),
                   {"a": EvalSplit(_build(tmp_path, data), data.labels),
                    "sub": EvalSplit(_build(tmp_path, data), data.labels, class_subset=(0, 1))},
                   batch_size=8)
    correct, n, units = ev.score(None, ["a"], loss=True)["a"]
    assert (correct, n) == ev.score(None, ["a"])["a"]
    want = torch.nn.functional.cross_entropy(ev.logits("a"), torch.tensor(data.labels))
    assert units * LOSS_UNIT / n == pytest.approx(float(want), abs=1e-6)
    parts = [ev.score(None, ["a"], part=(i, 5), loss=True)["a"] for i in range(5)]
    assert (0, 0, 0) in parts  # 4 batches over 5 slices
    assert tuple(map(sum, zip(*parts, strict=True))) == (correct, n, units)
    with pytest.raises(ValueError, match="'sub' covers a subset of the classes"):
        ev.score(None, ["sub"], loss=True)


def test_the_cache_key_follows_parquet_and_remote_image_content(tmp_path, s3):
    from raysoup.data.images import FileImages
    from raysoup.data.parquet import read_parquet_split, write_parquet_split

    data, other = _split(6, seed=6), _split(6, seed=7)
    write_parquet_split(tmp_path / "p", data)
    digest = cache.split_digest(read_parquet_split(tmp_path / "p"), PRE, 8, False)
    assert cache.split_digest(read_parquet_split(tmp_path / "p"), PRE, 8, False) == digest
    write_parquet_split(tmp_path / "p", LabeledImages(data.keys, other.images, data.labels,
                                                      data.classnames))  # replaces it
    assert cache.split_digest(read_parquet_split(tmp_path / "p"), PRE, 8, False) != digest
    # Image files on object storage: one listing per folder, no image read.
    for i, encoded in enumerate(data.images.read(range(6))):
        s3.put(f"img/{i}.png", encoded)
    remote = LabeledImages(data.keys, FileImages([s3.uri(f"img/{i}.png") for i in range(6)]),
                           data.labels, data.classnames)
    digest = cache.split_digest(remote, PRE, 8, False)
    assert cache.split_digest(remote, PRE, 8, False) == digest
    s3.put("img/2.png", other.images.read([2])[0])
    assert cache.split_digest(remote, PRE, 8, False) != digest
