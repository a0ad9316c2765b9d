"""`format: hf_disk`: text splits from directories written by the real `datasets` package
(`save_to_disk`), read by raysoup with pyarrow alone, locally and from a real S3 endpoint
(moto's server); the rows must be what `datasets.load_from_disk` gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raysoup.config import SplitSource
from raysoup.data.errors import DataError
from raysoup.data.text.hf_disk import count_rows
from raysoup.data.text.readers import read_text_split

TINY = "raysoup:tiny-text"
TOPICS = ["sports", "food", "weather", "music"]


def _single(n: int = 40):
    """One sentence per example, a ClassLabel label, an extra column raysoup drops."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=TOPICS),
                         "idx": Value("int32")})
    return Dataset.from_dict({"sentence": [f"the loud {TOPICS[i % 4]} {i}" for i in range(n)],
                              "label": [i % 4 for i in range(n)], "idx": list(range(n))},
                             features=features)


def _pairs(n: int = 30):
    """Sentence pairs with plain integer labels (no class names)."""
    from datasets import Dataset

    return Dataset.from_dict({"sentence1": [f"a b {i}" for i in range(n)],
                              "sentence2": [f"c {i % 7}" for i in range(n)],
                              "label": [i % 2 for i in range(n)]})


def _same_rows(split, loaded, columns):
    assert len(split) == len(loaded)
    assert split.texts.to_pylist() == loaded[columns[0]]
    assert (None if split.pairs is None else split.pairs.to_pylist()) == (
        loaded[columns[1]] if len(columns) > 1 else None)
    np.testing.assert_array_equal(split.labels, loaded["label"])


def test_save_to_disk_directories_read_as_load_from_disk_gives(tmp_path):
    from datasets import DatasetDict, load_from_disk

    _single().save_to_disk(str(tmp_path / "single"), num_shards=3)  # three Arrow files
    assert len(list((tmp_path / "single").glob("data-*.arrow"))) == 3
    single = read_text_split(SplitSource(format="hf_disk", path=str(tmp_path / "single")))
    _same_rows(single, load_from_disk(str(tmp_path / "single")), ["sentence"])
    assert single.classnames == TOPICS  # the ClassLabel's names, in its order

    DatasetDict(train=_pairs(), validation=_pairs(8)).save_to_disk(str(tmp_path / "dict"))
    for name in ("train", "validation"):
        src = SplitSource(format="hf_disk", path=str(tmp_path / "dict"), split=name)
        pairs = read_text_split(src)
        _same_rows(pairs, load_from_disk(str(tmp_path / "dict"))[name],
                   ["sentence1", "sentence2"])
        assert pairs.classnames == ["0", "1"] and count_rows(src) == len(pairs)

    # Class names given in another order: the ClassLabel's names are matched by name.
    given = ["music", "weather", "food", "sports"]
    again = read_text_split(SplitSource(format="hf_disk", path=str(tmp_path / "single")),
                            given)
    assert again.classnames == given
    assert [given[i] for i in again.labels] == [TOPICS[i] for i in single.labels]


def test_jsonl_and_hf_disk_of_the_same_data_share_one_token_cache(tmp_path):
    """Keys, labels and so the token cache's digest come from the content, not the format:
    the same sentences as JSON lines and as a save_to_disk directory tokenise once."""
    from raysoup.data.text.tokens import build_token_cache, token_digest
    from raysoup.models.hf_text.tokenizer import encoder, tokenizer_id

    data = _single(10)
    data.save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "d.jsonl").write_text("".join(
        json.dumps({"sentence": r["sentence"], "label": TOPICS[r["label"]]}) + "\n"
        for r in data))
    hf = read_text_split(SplitSource(format="hf_disk", path=str(tmp_path / "hf")), TOPICS)
    js = read_text_split(SplitSource(format="jsonl", path=str(tmp_path / "d.jsonl")), TOPICS)
    assert hf.keys == js.keys and hf.fingerprint() == js.fingerprint()
    tok = tokenizer_id(TINY)
    assert token_digest(hf, tok, 16, 4) == token_digest(js, tok, 16, 4)
    encode = encoder({"tokenizer": TINY, "max_length": 16})
    a = build_token_cache(hf, encode, tmp_path / "a", 4)
    b = build_token_cache(js, encode, tmp_path / "b", 4)
    np.testing.assert_array_equal(a.take(np.arange(10)), b.take(np.arange(10)))
    assert a.take(np.arange(10))[:, 2].sum() > 10  # real tokens, not an all-padding cache


def test_bad_hf_disk_sources_are_errors_naming_the_problem(tmp_path):
    from datasets import DatasetDict

    def read(path, **kw):
        return read_text_split(SplitSource(format="hf_disk", path=str(path), **kw))

    with pytest.raises(DataError, match=r"missing: not found \(format hf_disk"):
        read(tmp_path / "missing")
    (tmp_path / "file.arrow").write_bytes(b"x")
    with pytest.raises(DataError, match="a file, not a directory written by"):
        read(tmp_path / "file.arrow")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no state.json or dataset_dict.json"):
        read(tmp_path / "empty")
    DatasetDict(train=_pairs(4)).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match=r"is a DatasetDict \(splits: train\): set `split`"):
        read(tmp_path / "dict")
    with pytest.raises(DataError, match=r"no split 'test' \(splits: train\)"):
        read(tmp_path / "dict", split="test")
    with pytest.raises(DataError, match="holds one Dataset, not a DatasetDict"):
        read(tmp_path / "dict" / "train", split="train")
    with pytest.raises(DataError, match=r"no text column\(s\) \['text'\]"):
        read(tmp_path / "dict", split="train", text_columns=["text"])
    with pytest.raises(ValueError, match="split .* needs format hf_disk"):
        SplitSource(format="jsonl", path="x.jsonl", split="train")

    _single(4).map(lambda r: {"label": -1}).save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(DataError, match="unlabelled test split"):
        read(tmp_path / "unlabelled")
    broken = tmp_path / "dict" / "train"
    [arrow] = broken.glob("data-*.arrow")
    arrow.write_bytes(arrow.read_bytes()[:200])  # cut short: a partial copy
    with pytest.raises(DataError, match=r"data-00000-of-00001.arrow: cannot read as an Arrow"):
        read(broken)
    arrow.unlink()
    with pytest.raises(DataError, match="not found: .*data-00000-of-00001.arrow"):
        read(broken)


def test_hf_disk_split_on_s3_reads_as_local(tmp_path, s3):
    from datasets import DatasetDict

    local = tmp_path / "glue"
    DatasetDict(train=_pairs(), validation=_single(12)).save_to_disk(str(local))
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.put(f"glue/{f.relative_to(local)}", f.read_bytes())
    for split in ("train", "validation"):
        remote = read_text_split(SplitSource(format="hf_disk", path=s3.uri("glue"), split=split))
        here = read_text_split(SplitSource(format="hf_disk", path=str(local), split=split))
        assert remote.keys == here.keys and remote.fingerprint() == here.fingerprint()
        assert remote.classnames == here.classnames and len(remote) == len(here) > 0
    assert Path(remote.origin).name == "validation" and remote.origin.startswith("s3://")


def test_columns_the_split_does_not_need_are_not_kept_in_memory(tmp_path):
    """Arrow batches read from a stream are slices of one buffer: the reader copies the kept
    columns out as it streams, so a wide dataset's other columns (2 MB here) are freed batch
    by batch instead of staying alive until the split is built."""
    import pyarrow as pa
    from datasets import Dataset

    from raysoup.data.text import hf_disk

    n = 4000
    Dataset.from_dict({"sentence": [f"s {i}" for i in range(n)], "label": [i % 2 for i in range(n)],
                       "wide": ["x" * 500] * n}).save_to_disk(str(tmp_path / "wide"))
    files = hf_disk.data_files(str(tmp_path / "wide"))
    before = pa.total_allocated_bytes()
    table = hf_disk.read_columns(files, ["sentence", "label"])
    held = pa.total_allocated_bytes() - before
    assert table.num_rows == n and table.column_names == ["sentence", "label"]
    assert 0 < held < 200_000, held  # the sentences and labels, not the 2 MB


def test_dry_run_counts_and_lineage_names_hf_disk_splits(tmp_path):
    import yaml
    from datasets import DatasetDict

    from raysoup.config import load_experiment
    from raysoup.data.lineage import split_sources
    from raysoup.dryrun.summary import describe

    DatasetDict(train=_pairs(30), validation=_pairs(8)).save_to_disk(str(tmp_path / "rte"))
    glue = str(tmp_path / "rte")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({
        "name": "t", "model": {"family": "hf_text", "name": TINY, "pretrained": TINY},
        "data": {"train": {"format": "hf_disk", "path": glue, "split": "train"},
                 "test": {"format": "hf_disk", "path": glue, "split": "validation"}}}))
    cfg = load_experiment(tmp_path / "cfg.yaml")
    text = describe(cfg, tmp_path / "w", ("sweep",), cluster=None)
    assert "examples   train 30, test 8 " in text, text
    # Not on this machine: a GLUE task's directory is sized by its split's published size.
    missing = load_experiment(tmp_path / "cfg.yaml", [f"data.train.path={tmp_path}/RTE",
                                                      f"data.test.path={tmp_path}/RTE"])
    text = describe(missing, tmp_path / "w", ("sweep",), cluster=None)
    assert "sized as GLUE RTE's published split (2,490 examples)" in text, text
    assert "examples   train 2,490, test 277 " in text, text
    # MLflow's dataset inputs: each split where it lies, the DatasetDict's split directory
    assert split_sources(cfg.data, tmp_path / "w")["test"] == str(tmp_path / "rte" / "validation")
