"""Text split readers: Parquet, JSON lines or CSV/TSV (local or s3:// / gs://) → LabeledTexts.

Columns: the text column(s) (`text_columns`, default "sentence", or "sentence1" + "sentence2",
the GLUE names), a label column (integers, or strings named by the class names) and an
optional `key` column (else keys come from the content: `texts.content_keys`).
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysoup.config import SplitSource
from raysoup.data import fs
from raysoup.data.errors import DataError
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


def _text_columns(table: pa.Table, source: SplitSource) -> list[str]:
    if source.text_columns is not None:
        missing = [c for c in source.text_columns if c not in table.column_names]
        if missing:
            raise DataError(f"{source.path}: no text column(s) {missing}; "
                            f"columns: {table.column_names}")
        return list(source.text_columns)
    for names in DEFAULT_COLUMNS[::-1]:  # a pair first: "sentence1" files have no "sentence"
        if all(c in table.column_names for c in names):
            return list(names)
    raise DataError(f"{source.path}: set text_columns (no 'sentence' or 'sentence1'/"
                    f"'sentence2' column; columns: {table.column_names})")


def _labels(column: pa.ChunkedArray, classnames: list[str] | None, where: str
            ) -> tuple[np.ndarray, list[str]]:
    if column.null_count:
        raise DataError(f"{where}: {column.null_count} example(s) without a label")
    if pa.types.is_integer(column.type):
        labels = column.to_numpy().astype(np.int64)
        if classnames is None:
            classnames = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
        bad = labels[(labels < 0) | (labels >= len(classnames))]
        if len(bad):
            raise DataError(f"{where}: label {int(bad[0])} outside 0..{len(classnames) - 1} "
                            "(an unlabelled test split? use a labelled one, e.g. GLUE's dev)")
        return labels, list(classnames)
    names = [str(v) for v in column.to_pylist()]
    if classnames is None:
        classnames = sorted(set(names))
    index = {c: i for i, c in enumerate(classnames)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(f"{where}: labels {unknown[:5]} are not in the class names")
    return np.asarray([index[n] for n in names], np.int64), list(classnames)


def read_text_split(source: SplitSource, classnames: list[str] | None = None) -> LabeledTexts:
    table = _read_table(source)
    columns = _text_columns(table, source)
    if source.label_column not in table.column_names:
        raise DataError(f"{source.path}: no label column {source.label_column!r}; "
                        f"columns: {table.column_names}")
    labels, names = _labels(table[source.label_column], classnames, source.path)
    texts = [pc.cast(table[c], pa.string()).combine_chunks() for c in columns]
    for name, col in zip(columns, texts, strict=True):
        if col.null_count:
            raise DataError(f"{source.path}: column {name!r} has {col.null_count} empty value(s)")
    pairs = texts[1] if len(texts) > 1 else None
    if "key" in table.column_names:
        keys = [str(k) for k in table["key"].to_pylist()]
        if len(set(keys)) != len(keys):
            raise DataError(f"{source.path}: the key column has duplicates")
    else:
        keys = content_keys(texts[0].to_pylist(), None if pairs is None else pairs.to_pylist(),
                            labels)
    return LabeledTexts(keys, texts[0], pairs, labels, names, source.path)
