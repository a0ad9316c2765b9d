"""Ingredients and soups in a remote workdir (S3 via moto on 127.0.0.1): written through the
local mirror, read back from the bucket, with the same results and errors as locally. The
reduction reads only the byte ranges of the tensors its shard needs."""

import shutil

import pytest
import torch

from raysoup import storage
from raysoup.checkpoints import list_ingredients, load_state_dict, read_manifest, write_ingredient
from raysoup.checkpoints.audit import audit_ingredient
from raysoup.checkpoints.ingredient import IngredientError, verify_ingredient
from raysoup.reduce import read_sharded, reduce_shard, write_sharded


def state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"big.weight": torch.randn(256, 256, generator=g),  # 256 KiB: most of the file
            "small.bias": torch.randn(8, generator=g),
            "pos.ids": torch.arange(4)}


def make(root, names):
    for i, name in enumerate(names):
        write_ingredient(root / name, state(i), {"kind": "ingredient"})
    return [root / n for n in names]


@pytest.fixture
def remote_root(s3):
    return storage.mirror_of(s3.uri("exp")) / "ingredients"


def forget_mirror(root):
    """What another node sees: nothing local, only the bucket."""
    shutil.rmtree(root)


def test_written_ingredients_are_read_from_the_bucket(s3, remote_root, tmp_path):
    paths = make(remote_root, ["a", "b"])
    local = make(tmp_path / "local", ["a", "b"])
    forget_mirror(remote_root)
    assert s3.files("exp/ingredients") == ["exp/ingredients/a/manifest.json",
                                           "exp/ingredients/a/model.safetensors",
                                           "exp/ingredients/b/manifest.json",
                                           "exp/ingredients/b/model.safetensors"]
    assert list_ingredients(remote_root) == paths
    assert read_manifest(paths[0])["sha256"] == read_manifest(local[0])["sha256"]
    for p in paths:
        verify_ingredient(p)
    got = load_state_dict(paths[1])
    assert all(torch.equal(got[k], v) for k, v in state(1).items())
    assert audit_ingredient(paths[0]).finite
    assert not remote_root.exists()  # nothing was downloaded to read them


def test_an_ingredient_without_its_manifest_is_not_listed(s3, remote_root):
    make(remote_root, ["a"])
    s3.put("exp/ingredients/half/model.safetensors", b"tensors uploaded, manifest not yet")
    assert [p.name for p in list_ingredients(remote_root)] == ["a"]


def test_corrupt_remote_tensor_file_is_named(s3, remote_root):
    (path,) = make(remote_root, ["a"])
    data = bytearray(s3.get("exp/ingredients/a/model.safetensors"))
    data[-1] ^= 0xFF
    s3.put("exp/ingredients/a/model.safetensors", bytes(data))
    with pytest.raises(IngredientError, match=r"s3://raysoup-test/exp/ingredients/a/model\."
                                              r"safetensors: sha256 .* does not match"):
        verify_ingredient(path)


def test_reduction_is_bitwise_the_local_one_and_reads_only_its_tensors(
        s3, remote_root, tmp_path, monkeypatch):
    remote = make(remote_root, ["a", "b", "c"])
    local = make(tmp_path / "local", ["a", "b", "c"])
    forget_mirror(remote_root)
    weights = [0.5, 0.25, 0.25]
    for names in (["big.weight", "small.bias", "pos.ids"], ["small.bias"]):
        want = reduce_shard(local, weights, names)
        got = reduce_shard(remote, weights, names)
        assert got.keys() == want.keys()
        assert all((got[k] == want[k]).all() for k in want)

    # Bytes fetched from the bucket for a shard holding only the small tensor.
    fetched = []
    real_open = storage.open_input

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

        def read_at(self, n, offset):
            data = self.f.read_at(n, offset)
            fetched.append(len(data))
            return data

        def readinto(self, view):
            got = self.f.readinto(view)
            fetched.append(got)
            return got

    monkeypatch.setattr(storage, "open_input", lambda p: Counting(real_open(p)))
    reduce_shard(remote, weights, ["small.bias"])
    file_size = len(s3.get("exp/ingredients/a/model.safetensors"))
    assert len(fetched) >= 6  # a header and a tensor range per ingredient, from the bucket
    assert sum(fetched) < 3 * file_size / 20  # headers + 32 bytes each, not 3 whole files


def test_sharded_soup_round_trip(s3, tmp_path):
    soup = storage.mirror_of(s3.uri("exp")) / "soups" / "uniform"
    shards = [{"big.weight": state(0)["big.weight"].numpy()},
              {"small.bias": state(0)["small.bias"].numpy()}]
    write_sharded(soup, shards)
    storage.publish(soup)
    forget_mirror(soup)
    got = read_sharded(soup)
    assert torch.equal(got["big.weight"], state(0)["big.weight"])
    # A corrupt remote shard is refused with its URI.
    key = "exp/soups/uniform/model-00002-of-00002.safetensors"
    data = bytearray(s3.get(key))
    data[-1] ^= 0xFF
    s3.put(key, bytes(data))
    with pytest.raises(ValueError, match=rf"s3://raysoup-test/{key}: sha256"):
        read_sharded(soup)


def test_ties_on_remote_ingredients_is_the_local_merge_in_few_requests(
        s3, remote_root, tmp_path, monkeypatch):
    """TIES reads every ingredient slice by slice; from a bucket those slices come out of
    read-ahead windows (a ranged request per few MiB, not per slice), with the local bits."""
    from raysoup.checkpoints import tensorfile
    from raysoup.reduce import merge_shard, ties_kernel
    from raysoup.soup.ties import TiesMerge

    names = ["big.weight", "small.bias", "pos.ids"]
    remote = make(remote_root, ["base", "a", "b"])
    local = make(tmp_path / "local", ["base", "a", "b"])
    forget_mirror(remote_root)
    monkeypatch.setattr(ties_kernel, "ROWS_BYTES", 2 * 4 * 4096)  # 16 slices of big.weight
    want = merge_shard(local[1:], local[0], names, TiesMerge(0.2), 1.0)

    requests = []
    real_open = storage.open_input

    class Counting:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def read_at(self, n, offset):
            requests.append(n)
            return self.f.read_at(n, offset)

        def readinto(self, view):
            requests.append(len(view))
            return self.f.readinto(view)

    monkeypatch.setattr(storage, "open_input", lambda p: Counting(real_open(p)))
    got = merge_shard(remote[1:], remote[0], names, TiesMerge(0.2), 1.0)
    assert got.keys() == want.keys()
    assert all((got[k] == want[k]).all() for k in want)
    # Per ingredient: the header (2 reads), the threshold's read of the whole tensor, then
    # the first slice exactly and one window for the other 15 — not 16 slice requests.
    slice_bytes = 4 * 4096
    assert sum(n == slice_bytes for n in requests) == 2, requests
    assert sum(n > slice_bytes for n in requests) >= 2  # the windows (and threshold reads)
    assert tensorfile.READAHEAD > 256 * 256 * 4  # the test's tensor fits one window
