"""The world's completion marker records rows per shard, and a split whose shards do not hold
them (a copy of the workdir cut short: missing or stale shards under a present `_COMPLETE`)
is rebuilt instead of being read as if whole."""

import json

import pyarrow.parquet as pq

from raysoup.config import WorldCfg
from raysoup.data import generate_world, read_parquet_split

CFG = WorldCfg(num_classes=4, image_size=32, train_per_class=10, test_per_class=5,
               shift_per_class=5, seed=5)


def test_split_with_missing_or_short_shards_is_rebuilt(tmp_path):
    paths = generate_world(CFG, tmp_path, progress=False)
    marker = json.loads((paths["test"] / "_COMPLETE").read_text())
    assert marker["rows"] == 20 and marker["files"] == {"part-00000.parquet": 20}
    whole = read_parquet_split(paths["test"])

    # A shard cut to half its rows (still a valid Parquet file) under the old marker.
    shard = paths["test"] / "part-00000.parquet"
    pq.write_table(pq.read_table(shard).slice(0, 10), shard)
    generate_world(CFG, tmp_path, progress=False)
    again = read_parquet_split(paths["test"])
    assert len(again) == 20 and again.keys == whole.keys
    assert again.labels.tolist() == whole.labels.tolist()

    # A shard that never arrived.
    (paths["sketch"] / "part-00000.parquet").unlink()
    generate_world(CFG, tmp_path, progress=False)
    assert len(read_parquet_split(paths["sketch"])) == 2 * 5
