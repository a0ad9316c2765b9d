"""The text data plane (data/text): readers, stable keys, the token cache and its key; the
GLUE task metrics; the hf_text family's registry entry and config checks. Real files, real
pyarrow, the shipped tiny tokenizer (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysoup.config import ConfigError, ModelCfg, SplitSource, TrainHParams, load_experiment
from raysoup.data.errors import DataError
from raysoup.data.split import split_heldout
from raysoup.data.text.readers import read_text_split
from raysoup.data.text.tokens import build_token_cache, token_digest
from raysoup.evaluate import task_metrics as tm
from raysoup.models.families import FAMILIES, family_of, get_family

TINY = "raysoup:tiny-text"
ROOT = Path(__file__).parents[1]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_readers_give_the_same_split_from_jsonl_tsv_and_parquet(tmp_path):
    rows = [{"sentence1": f"a b {i}", "sentence2": f"c {i}", "label": i % 2} for i in range(20)]
    jsonl = _jsonl(tmp_path / "t.jsonl", rows)
    tsv = tmp_path / "t.tsv"
    tsv.write_text("sentence1\tsentence2\tlabel\n" + "".join(
        f"{r['sentence1']}\t{r['sentence2']}\t{r['label']}\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    splits = [read_text_split(SplitSource(format="jsonl", path=jsonl)),
              read_text_split(SplitSource(format="csv", path=str(tsv))),
              read_text_split(SplitSource(format="parquet", path=str(tmp_path / "t.parquet"),
                                          text_columns=["sentence1", "sentence2"]))]
    for s in splits:  # the pair found by the GLUE names; integer labels name their classes
        assert s.classnames == ["0", "1"] and s.pairs is not None
        assert s.keys == splits[0].keys and s.fingerprint() == splits[0].fingerprint()
        assert s.texts[3].as_py() == "a b 3" and s.labels.tolist() == [i % 2 for i in range(20)]


def test_keys_come_from_content_so_held_out_does_not_depend_on_row_order(tmp_path):
    rows = [{"sentence": f"words {i % 30}", "label": "pos" if i % 3 else "neg"}
            for i in range(200)]  # duplicates included: each gets its own key
    a = read_text_split(SplitSource(format="jsonl", path=_jsonl(tmp_path / "a.jsonl", rows)))
    b = read_text_split(SplitSource(format="jsonl",
                                    path=_jsonl(tmp_path / "b.jsonl", rows[::-1])))
    assert len(set(a.keys)) == 200 and a.classnames == ["neg", "pos"]
    held_a, held_b = split_heldout(a, 0.2)[1], split_heldout(b, 0.2)[1]
    assert 0 < len(held_a) < 200
    assert sorted(held_a.keys) == sorted(held_b.keys)


def test_bad_text_sources_are_errors_naming_the_problem(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", [{"text": "a", "label": 0}])
    with pytest.raises(DataError, match="set text_columns"):
        read_text_split(SplitSource(format="jsonl", path=path))
    with pytest.raises(DataError, match=r"no label column 'y'"):
        read_text_split(SplitSource(format="jsonl", path=path, text_columns=["text"],
                                    label_column="y"))
    unlabelled = _jsonl(tmp_path / "u.jsonl", [{"sentence": "a", "label": -1}])
    with pytest.raises(DataError, match="unlabelled test split"):
        read_text_split(SplitSource(format="jsonl", path=unlabelled), ["0", "1"])


def test_token_cache_is_keyed_on_content_tokenizer_and_max_length(tmp_path):
    from raysoup.models.hf_text.tokenizer import encoder, tokenizer_id

    rows = [{"sentence": f"the loud song {i}", "label": i % 4} for i in range(10)]
    data = read_text_split(SplitSource(format="jsonl", path=_jsonl(tmp_path / "d.jsonl", rows)))
    other = read_text_split(SplitSource(format="jsonl", path=_jsonl(
        tmp_path / "e.jsonl", rows[:-1] + [{"sentence": "the loud tune 9", "label": 1}])))
    tok = tokenizer_id(TINY)
    base = token_digest(data, tok, 16, 4)
    assert token_digest(data, tok, 16, 4) == base
    assert token_digest(other, tok, 16, 4) != base  # one sentence changed
    assert token_digest(data, tok, 24, 4) != base
    assert token_digest(data, "another-tokenizer", 16, 4) != base
    record = {"tokenizer": TINY, "max_length": 16}
    cache = build_token_cache(data, encoder(record), tmp_path / "c", 4)
    assert cache.counts == [4, 4, 2] and len(cache) == 10
    rows3 = cache.take(np.array([9, 0, 5]))
    assert rows3.shape == (3, 3, 16) and rows3.dtype == np.int64
    np.testing.assert_array_equal(rows3[1], encoder(record)(["the loud song 0"], None)[0])
    # built once: a second build reads the manifest and writes nothing
    stamp = (tmp_path / "c" / "part-00000.npy").stat().st_mtime_ns
    again = build_token_cache(data, encoder(record), tmp_path / "c", 4)
    assert again.counts == cache.counts
    assert (tmp_path / "c" / "part-00000.npy").stat().st_mtime_ns == stamp
    batches = [b.shape[0] for b in cache.batches(3, 10, 4)]
    assert batches == [1, 4, 2]  # the grid of multiples of the batch size


def test_glue_f1_and_mcc_on_a_known_case():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    preds = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    # tp 3, fp 1, fn 1, tn 5: F1 = 6 / 8; MCC = (3*5 - 1*1) / sqrt(4*4*6*6) = 14 / 24
    assert tm.f1(labels, preds) == pytest.approx(0.75)
    assert tm.mcc(labels, preds) == pytest.approx(14 / 24)
    assert tm.mcc(labels, np.zeros(10, int)) == 0.0  # a constant prediction
    bits = np.packbits(labels == preds).tobytes()
    np.testing.assert_array_equal(tm.binary_predictions(labels, bits), preds)
    got = tm.task_metrics(labels, bits, 2)
    assert got == pytest.approx({"accuracy": 0.8, "f1": 0.75, "mcc": 14 / 24})
    assert set(tm.task_metrics(labels, bits, 3)) == {"accuracy"}


def test_hf_text_family_is_registered_and_named_by_the_config():
    assert set(FAMILIES) == {"open_clip", "hf_text"}
    text = ModelCfg(family="hf_text", name=TINY, pretrained=TINY)
    assert family_of(text) is get_family("hf_text") and family_of({"family": "hf_text"}).name \
        == "hf_text"
    with pytest.raises(ValueError, match=r"unknown model family 'bert'; valid: \['hf_text', "
                                         r"'open_clip'\]"):
        get_family("bert")
    # An image config's dump has no family field: its snapshot and fingerprints are unchanged.
    assert "family" not in ModelCfg(name="x", pretrained="y").model_dump()
    assert text.model_dump()["family"] == "hf_text"
    with pytest.raises(ValueError, match="image augmentations"):
        get_family("hf_text").train_objective(TrainHParams(mixup=0.2), 2)


def test_config_refuses_a_family_that_does_not_match_the_data(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "name: a\nmodel: {family: hf_text, name: x, pretrained: x}\n"
        "data: {world: {num_classes: 2}}\ntracking: {log_models: false, register: false}\n")
    with pytest.raises(ConfigError, match="model.family hf_text needs text data"):
        load_experiment(tmp_path / "a.yaml")
    # MLflow Models of text soups are logged and registered (tests/test_text_pipeline.py).
    load_experiment(ROOT / "experiments" / "tiny_text.yaml",
                    ["tracking.log_models=true", "tracking.register=true"])
    (tmp_path / "b.yaml").write_text(
        "name: b\nmodel: {name: x, pretrained: x}\ndata: {text_world: {}}\n")
    with pytest.raises(ConfigError, match="model.family open_clip needs image data"):
        load_experiment(tmp_path / "b.yaml")


def test_text_model_source_errors_list_what_was_tried(tmp_path):
    from raysoup.models.hf_text.source import TextModelError, resolve

    with pytest.raises(TextModelError, match=r"no text base shipped .*tiny-text"):
        resolve("raysoup:nope")
    with pytest.raises(TextModelError, match="without config.json"):
        resolve(str(tmp_path))
    with pytest.raises(TextModelError, match="no such directory"):
        resolve(str(tmp_path / "missing"))
    assert resolve("bert-base-uncased") == "bert-base-uncased"  # a Hub id, fetched later


def test_report_has_f1_and_mcc_for_a_two_class_task(tmp_path):
    """The report's GLUE section from results rows (per-example correctness) and labels."""
    from raysoup.evaluate import results as res
    from raysoup.report import write_report

    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    preds = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])  # F1 75 %, MCC 58.33 % (test above)
    bits = np.packbits(labels == preds).tobytes()
    table = pa.concat_tables([
        res.rows("trial-000", "ingredient", {"heldout": (8, 10, bits), "test": (8, 10, bits)}),
        res.rows("zeroshot", "zeroshot", {"heldout": (4, 10, np.packbits(
            labels == 0).tobytes()), "test": (4, 10, np.packbits(labels == 0).tobytes())})])
    write_report(table, tmp_path, "t", task_labels={"heldout": labels, "test": labels})
    text = (tmp_path / "README.md").read_text()
    assert "## F1 and Matthews correlation" in text
    assert "| trial-000 | 75.00 / 58.33 | 75.00 / 58.33 |" in text
    assert "| zeroshot | 0.00 / 0.00 | 0.00 / 0.00 |" in text  # always class 0


def test_bert_glue_dry_run_sizes_the_paper_recipe(tmp_path):
    from raysoup.dryrun.summary import describe

    text = describe(load_experiment(ROOT / "experiments" / "bert_glue.yaml"), tmp_path / "w",
                    ("sweep", "evaluate", "soup", "report"), cluster=None)
    assert "109.5 M parameters" in text and "GPU-hours" in text
    assert f"workdir      {tmp_path / 'w'}  (new)" in text
    # CoLA's criterion on a task that is not two-class: said before anything runs.
    cfg = load_experiment(ROOT / "experiments" / "bert_glue.yaml",
                          ["soup.greedy.metric=mcc", "data.classnames=[a,b,c]"])
    text = describe(cfg, tmp_path / "w", ("sweep",), cluster=None)
    assert "greedy     by held-out mcc" in text
    assert "'mcc' needs a two-class task" in text and "this task has 3 classes" in text
