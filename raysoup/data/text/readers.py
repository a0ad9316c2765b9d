"""Text split readers: Parquet, JSON lines, CSV/TSV or a `datasets` save_to_disk directory
(local or s3:// / gs://) → LabeledTexts.

Columns: the text column(s) (`text_columns`, default "sentence", or "sentence1" + "sentence2",
the GLUE names), a label column (integers — a `datasets` ClassLabel's name their classes —, or
strings named by the class names) and an optional `key` column (else keys come from the content: `texts.content_keys`).
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysoup.config import SplitSource
from raysoup.data import fs
from raysoup.data.errors import DataError
from raysoup.data.text import hf_disk
from raysoup.data.text.texts import LabeledTexts, content_keys

DEFAULT_COLUMNS = (["sentence"], ["sentence1", "sentence2"])


def _read_table(source: SplitSource) -> pa.Table:
    path = source.path
    try:
        if source.format == "parquet":
            import pyarrow.dataset as ds

            filesystem, key = fs.resolve(path)
            return ds.dataset(key, filesystem=filesystem, format="parquet").to_table()
        data = fs.read_bytes(path)
        if source.format == "jsonl":
            import pyarrow.json as pj

            return pj.read_json(io.BytesIO(data))
        import pyarrow.csv as pcsv

        tab = path.endswith((".tsv", ".tsv.gz"))
        parse = pcsv.ParseOptions(delimiter="\t" if tab else ",", quote_char=False if tab else '"')
        return pcsv.read_csv(io.BytesIO(data), parse_options=parse)
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{path}: cannot read as {source.format} ({e})") from None


def _read_hf_disk(source: SplitSource) -> tuple[pa.Table, list[str] | None, str]:
    """(the columns the split needs, the label column's ClassLabel names, where it lies)."""
    directory = hf_disk.dataset_dir(source)
    files = hf_disk.data_files(directory)
    available = hf_disk.column_names(files)
    where = files[0] if len(files) == 1 else directory
    keep = _text_columns(available, source, where)
    _check_label_column(available, source, where)
    keep += [source.label_column] + (["key"] if "key" in available else [])
    table = hf_disk.read_columns(files, keep)
    return table, hf_disk.class_names(directory, source.label_column), directory


def _text_columns(available: list[str], source: SplitSource, where: str) -> list[str]:
    if source.text_columns is not None:
        missing = [c for c in source.text_columns if c not in available]
        if missing:
            raise DataError(f"{where}: no text column(s) {missing}; columns: {available}")
        return list(source.text_columns)
    for names in DEFAULT_COLUMNS[::-1]:  # a pair first: "sentence1" files have no "sentence"
        if all(c in available for c in names):
            return list(names)
    raise DataError(f"{where}: set text_columns (no 'sentence' or 'sentence1'/"
                    f"'sentence2' column; columns: {available})")


def _check_label_column(available: list[str], source: SplitSource, where: str) -> None:
    if source.label_column not in available:
        raise DataError(f"{where}: no label column {source.label_column!r}; "
                        f"columns: {available}")


def _labels(column: pa.ChunkedArray, classnames: list[str] | None, where: str,
            label_names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Label indices into the class names (given, a ClassLabel's `label_names`, the integers
    0..max, or the sorted strings). A ClassLabel with class names given is matched by name."""
    if column.null_count:
        raise DataError(f"{where}: {column.null_count} example(s) without a label")
    if pa.types.is_integer(column.type):
        labels = column.to_numpy().astype(np.int64)
        own = label_names if label_names is not None else classnames
        if own is None:
            own = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
        bad = labels[(labels < 0) | (labels >= len(own))]
        if len(bad):
            raise DataError(f"{where}: label {int(bad[0])} outside 0..{len(own) - 1} "
                            "(an unlabelled test split? use a labelled one, e.g. GLUE's dev)")
        if label_names is None or classnames is None or list(classnames) == label_names:
            return labels, list(own)
        column = pa.chunked_array([pa.array(label_names).take(pa.array(labels))])
    names = [str(v) for v in column.to_pylist()]
    if classnames is None:
        classnames = sorted(set(names))
    index = {c: i for i, c in enumerate(classnames)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(f"{where}: labels {unknown[:5]} are not in the class names")
    return np.asarray([index[n] for n in names], np.int64), list(classnames)


def read_text_split(source: SplitSource, classnames: list[str] | None = None) -> LabeledTexts:
    if source.format == "hf_disk":
        table, label_names, origin = _read_hf_disk(source)
    else:
        table, label_names, origin = _read_table(source), None, source.path
    columns = _text_columns(table.column_names, source, origin)
    _check_label_column(table.column_names, source, origin)
    labels, names = _labels(table[source.label_column], classnames, origin, label_names)
    texts = [pc.cast(table[c], pa.string()).combine_chunks() for c in columns]
    for name, col in zip(columns, texts, strict=True):
        if col.null_count:
            raise DataError(f"{origin}: column {name!r} has {col.null_count} empty value(s)")
    pairs = texts[1] if len(texts) > 1 else None
    if "key" in table.column_names:
        keys = [str(k) for k in table["key"].to_pylist()]
        if len(set(keys)) != len(keys):
            raise DataError(f"{origin}: the key column has duplicates")
    else:
        keys = content_keys(texts[0].to_pylist(), None if pairs is None else pairs.to_pylist(),
                            labels)
    return LabeledTexts(keys, texts[0], pairs, labels, names, origin)
