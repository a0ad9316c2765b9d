"""Data sources on object storage: Parquet shards and an ImageFolder in a real S3-compatible
server (moto's, on 127.0.0.1), read, streamed to training workers and cached for evaluation
exactly as from local disk."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from raysoup.data import fs as data_fs
from raysoup.data.imagefolder import read_imagefolder
from raysoup.data.images import DataError, LabeledImages
from raysoup.data.parquet import read_parquet_split, write_parquet_split
from raysoup.evaluate import cache
from raysoup.train.batches import Augment, LoaderCfg, TrainInput


def _images(n: int) -> list[bytes]:
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (int(rng.integers(20, 40)), 30, 3), np.uint8)
                        ).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


@pytest.fixture
def remote_split(s3, tmp_path):
    """The same split as local Parquet shards and as the bucket's copy of them."""
    n = 40
    data = LabeledImages([f"r/{i:02d}" for i in range(n)], _images(n), np.arange(n) % 2,
                         ["x", "y"])
    local = tmp_path / "split"
    write_parquet_split(local, data, rows_per_shard=16, rows_per_group=8)
    for f in sorted(local.iterdir()):
        s3.put(f"data/split/{f.name}", f.read_bytes())
    return local, s3.uri("data/split")


def test_parquet_split_on_s3_reads_and_streams_as_local(remote_split):
    local_dir, uri = remote_split
    local, remote = read_parquet_split(local_dir), read_parquet_split(uri)
    assert remote.keys == local.keys and remote.images.is_remote()
    assert np.array_equal(remote.labels, local.labels)
    assert remote.images.read([0, 39, 17]) == local.images.read([0, 39, 17])
    # Streamed to DataLoader workers (fork-server workers open their own S3 client).
    aug = Augment(24, "random_resized_crop")
    cfg = LoaderCfg(lanes=2, window=8, memory_budget_mb=0)
    a = [x for x, _ in TrainInput(local, aug, cfg, 1, 8).epoch(1)]
    b = [x for x, _ in TrainInput(remote, aug, cfg, 1, 8).epoch(1)]
    assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # The eval cache of the remote split equals the local one's.
    sa = cache.build_shard(local, 24, local_dir.parent / "ca" / cache.shard_name(0))
    sb = cache.build_shard(remote, 24, local_dir.parent / "cb" / cache.shard_name(0))
    assert sa == sb
    assert np.array_equal(np.load(local_dir.parent / "ca" / cache.shard_name(0)),
                          np.load(local_dir.parent / "cb" / cache.shard_name(0)))


def test_imagefolder_on_s3_and_errors_name_the_uri(s3):
    for d, names in {"n01": ["a.jpg", "b.jpg"], "n02": ["c.jpg"]}.items():
        for name, img in zip(names, _images(len(names)), strict=True):
            s3.put(f"folder/{d}/{name}", img)
    s3.put("folder/n02/notes.txt", "not an image")
    data = read_imagefolder(s3.uri("folder"))
    assert data.keys == ["n01/a.jpg", "n01/b.jpg", "n02/c.jpg"]
    assert data.classnames == ["n01", "n02"] and list(data.labels) == [0, 0, 1]
    assert data.decode(2).size[0] == 30
    with pytest.raises(DataError, match=r"image folder not found: s3://.*/nothing"):
        read_imagefolder(s3.uri("nothing"))
    with pytest.raises(DataError, match=r"parquet split not found: s3://.*/nothing"):
        read_parquet_split(s3.uri("nothing"))
    assert data_fs.join(s3.uri("folder"), "n01", "a.jpg").endswith("folder/n01/a.jpg")
